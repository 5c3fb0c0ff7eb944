"""The data behind an experiment report: per-second metrics of each variant, and captured
invocations joined to their feedback. Read on a worker thread, never on the event loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from mve._fastroute import LatencyHistogram
from mve.control.capture_records import positive_scores, predicted_labels, unpack_outputs
from mve.control.experiments_db import ExperimentsDb
from mve.control.metric_catalog import SAGEMAKER, variant_dimensions
from mve.control.metric_store import MetricStore, decode_histogram

_EMPTY = np.zeros(0)


@dataclass
class VariantMetrics:
    """One variant's metrics in the window: per stored point (a second, or a minute past 3 hours)."""

    times: np.ndarray = field(default_factory=lambda: _EMPTY)  # point start, seconds since the epoch
    invocations: np.ndarray = field(default_factory=lambda: _EMPTY)
    errors_4xx: np.ndarray = field(default_factory=lambda: _EMPTY)
    errors_5xx: np.ndarray = field(default_factory=lambda: _EMPTY)
    model_errors: np.ndarray = field(default_factory=lambda: _EMPTY)
    latency_times: np.ndarray = field(default_factory=lambda: _EMPTY)
    latency_means: np.ndarray = field(default_factory=lambda: _EMPTY)  # mean ModelLatency of each point, us
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def failures(self) -> np.ndarray:
        """Failed invocations per point (a 4xx or a 5xx; model errors are among them)."""
        return self.errors_4xx + self.errors_5xx


def _points(metrics: MetricStore, name: str, endpoint: str, variant: str, start: float, end: float):
    series = metrics.find_series(SAGEMAKER, name, variant_dimensions(endpoint, variant))
    return metrics.points(series.id, start, end) if series is not None else []


def load_variant_metrics(metrics: MetricStore, endpoint: str, variant: str, start: float, end: float) -> VariantMetrics:
    """The variant's invocations, errors and ModelLatency with start <= point time < end."""
    invocations = _points(metrics, "Invocations", endpoint, variant, start, end)
    out = VariantMetrics()
    if invocations:
        out.times = np.array([p.ts for p in invocations], dtype=np.float64)
        out.invocations = np.array([p.sum for p in invocations], dtype=np.float64)
        for attribute, name in (
            ("errors_4xx", "Invocation4XXErrors"),
            ("errors_5xx", "Invocation5XXErrors"),
            ("model_errors", "InvocationModelErrors"),
        ):
            by_time = {p.ts: p.sum for p in _points(metrics, name, endpoint, variant, start, end)}
            setattr(out, attribute, np.array([by_time.get(p.ts, 0.0) for p in invocations], dtype=np.float64))
    latency = [p for p in _points(metrics, "ModelLatency", endpoint, variant, start, end) if p.count > 0]
    if latency:
        out.latency_times = np.array([p.ts for p in latency], dtype=np.float64)
        out.latency_means = np.array([p.sum / p.count for p in latency], dtype=np.float64)
        for p in latency:
            if p.hist:
                index, counts = decode_histogram(p.hist)
                out.latency.add_sparse(index, counts, p.sum, p.min, p.max)
    return out


@dataclass
class VariantOutcomes:
    """One variant's captured invocations in the window and what their feedback says."""

    captured: int = 0
    with_feedback: int = 0
    label_times: list[float] = field(default_factory=list)  # one per labeled row
    y_true: list[str] = field(default_factory=list)
    y_pred: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # NaN where the record has no score
    reward_times: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    labels_without_prediction: int = 0  # labeled records whose output holds no label
    row_count_mismatches: int = 0  # labeled records with a different number of labels than rows
    scores_missing: int = 0  # labeled records without a score output


def load_outcomes(
    db: ExperimentsDb, endpoint: str, start: float, end: float,
    label_output: str = "", score_output: str = "", positive_label: str = "1",
) -> dict[str, VariantOutcomes]:
    """variant -> its captured records with start <= inference time < end, joined to feedback.

    The default outputs (no label_output or score_output, positive label "1") are read from the
    index's label and score columns; any other choice decodes each labeled record's stored outputs.
    """
    defaults = not label_output and not score_output and positive_label == "1"
    rows = db.connection().execute(
        "SELECT c.variant, c.time, c.labels, c.scores, c.outputs, f.labels, f.reward, f.endpoint IS NOT NULL "
        "FROM captured c LEFT JOIN feedback f ON f.endpoint = c.endpoint AND f.inference_id = c.inference_id "
        "WHERE c.endpoint = ? AND c.time >= ? AND c.time < ? ORDER BY c.time, c.id",
        (endpoint, start, end),
    ).fetchall()
    # One JSON parse per column instead of one per cell: a report may read a million records.
    labels_column = _json_column([r[2] for r in rows]) if defaults else None
    scores_column = _json_column([r[3] for r in rows]) if defaults else None
    truth_column = _json_column([r[5] for r in rows])
    out: dict[str, VariantOutcomes] = {}
    for i, (variant, when, _, _, outputs, _, reward, has_feedback) in enumerate(rows):
        v = out.get(variant)
        if v is None:
            v = out[variant] = VariantOutcomes()
        v.captured += 1
        if not has_feedback:
            continue
        v.with_feedback += 1
        if reward is not None:
            v.reward_times.append(when)
            v.rewards.append(reward)
        true_labels = truth_column[i]
        if true_labels is None:
            continue
        if defaults:
            predicted, row_scores = labels_column[i], scores_column[i]
        else:
            decoded = unpack_outputs(outputs) if outputs else None
            predicted = predicted_labels(decoded, label_output)
            row_scores = positive_scores(decoded, score_output, positive_label)
        if predicted is None:
            v.labels_without_prediction += 1
            continue
        if len(predicted) != len(true_labels):
            v.row_count_mismatches += 1
            continue
        v.label_times.extend([when] * len(true_labels))
        v.y_true.extend(true_labels)
        v.y_pred.extend(predicted)
        if row_scores is not None and len(row_scores) == len(true_labels):
            v.scores.extend(row_scores)
        else:
            v.scores_missing += 1
            v.scores.extend([float("nan")] * len(true_labels))
    return out


def _json_column(texts: list[str | None]) -> list:
    """Each JSON text decoded (None stays None), in one parse."""
    return json.loads("[" + ",".join(t if t is not None else "null" for t in texts) + "]")


def unmatched_feedback(db: ExperimentsDb, endpoint: str, start: float, end: float) -> int:
    """Feedback observed in the window whose inference id has no captured record (yet)."""
    return db.connection().execute(
        "SELECT count(*) FROM feedback f WHERE f.endpoint = ? AND f.observation_time >= ? AND f.observation_time < ? "
        "AND NOT EXISTS (SELECT 1 FROM captured c WHERE c.endpoint = f.endpoint AND c.inference_id = f.inference_id)",
        (endpoint, start, end),
    ).fetchone()[0]
