"""GetExperimentReport: per-variant traffic, errors, latency and quality, each against a baseline.

`validate_request` checks the request on the event loop (it needs the endpoint); `build_report`
reads the metric store and ``experiments.db`` and computes every statistic on a worker thread.

What is compared, and how (`mve.control.experiment_stats` has the tests):

| metric | observations | test |
| --- | --- | --- |
| accuracy | each labeled row (correct or not), at its invocation's time | two-proportion z-test, mSPRT |
| error_rate | invocations that failed (4xx or 5xx) per second of the metric store | two-proportion z-test, mSPRT |
| mean_reward | each reward, at its invocation's time (production variants only) | Welch's t-test, mSPRT |
| model_latency_us | the mean ModelLatency of each second (the store keeps no single request) | Welch's t-test, mSPRT |

The sample-ratio check compares each production variant's invocations with those expected from
the weights in force second by second (the weight-change history; before the window's first
change, the last change before the window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mve.control import experiment_stats as st
from mve.control.experiment_sources import EndpointView, WeightChangeView
from mve.control.experiments_db import ExperimentsDb
from mve.control.metric_store import MetricStore
from mve.control.report_data import VariantMetrics, VariantOutcomes, load_outcomes, load_variant_metrics, unmatched_feedback
from mve.errors import ValidationError

DEFAULT_WINDOW_S = 3600.0
MAX_WINDOW_S = 15 * 86400.0
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SERIES_POINTS = 60
MAX_SERIES_POINTS = 500
MAX_NAME_CHARS = 256


@dataclass(frozen=True)
class ReportRequest:
    """A validated GetExperimentReport request, defaults filled in."""

    endpoint_name: str
    start: float
    end: float
    baseline: str
    confidence_level: float
    label_output: str
    score_output: str
    positive_label: str
    series_points: int


@dataclass(frozen=True)
class Comparison:
    """One metric of a variant against the baseline's."""

    metric: str
    result: st.TestResult
    significant: bool


@dataclass
class VariantReport:
    """Everything the report says of one variant."""

    variant_name: str
    shadow: bool
    current_weight: float
    invocations: int = 0
    traffic_share: float = 0.0
    errors_4xx: int = 0
    errors_5xx: int = 0
    model_errors: int = 0
    error_rate: st.Estimate | None = None
    latency_mean_us: float = math.nan
    latency_p50_us: float = math.nan
    latency_p90_us: float = math.nan
    latency_p99_us: float = math.nan
    captured: int = 0
    with_feedback: int = 0
    quality: st.Classification | None = None
    mean_reward: st.Estimate | None = None
    comparisons: list[Comparison] = field(default_factory=list)


@dataclass(frozen=True)
class SeriesPoint:
    """A variant in one bucket: its traffic there, and its estimates from the window's start to the bucket's end."""

    time: float
    invocations: int
    traffic_share: float
    accuracy: st.Estimate | None
    mean_reward: st.Estimate | None
    error_rate: st.Estimate | None


@dataclass
class ExperimentReport:
    """GetExperimentReport's answer as domain values."""

    request: ReportRequest
    variants: list[VariantReport]
    sample_ratio: st.SampleRatio
    series: dict[str, list[SeriesPoint]]
    weight_changes: list[WeightChangeView]
    unmatched_feedback: int
    notes: list[str]


def validate_request(
    endpoint: EndpointView, *, start: float | None, end: float | None, baseline: str, confidence_level: float,
    label_output: str, score_output: str, positive_label: str, series_points: int, now: float,
) -> ReportRequest:
    """The request with its defaults, or ValidationError naming the field out of range."""
    end = now if end is None else end
    start = end - DEFAULT_WINDOW_S if start is None else start
    if not start < end:
        raise ValidationError("StartTime must be before EndTime.")
    if end - start > MAX_WINDOW_S:
        raise ValidationError(f"The window from StartTime to EndTime may be at most 15 days, got {(end - start) / 86400:.2f} days.")
    confidence_level = confidence_level or DEFAULT_CONFIDENCE
    if not 0.5 <= confidence_level <= 0.999:
        raise ValidationError(f"ConfidenceLevel must be 0.5-0.999, got {confidence_level}.")
    series_points = series_points or DEFAULT_SERIES_POINTS
    if not 1 <= series_points <= MAX_SERIES_POINTS:
        raise ValidationError(f"SeriesPoints must be 1-{MAX_SERIES_POINTS}, got {series_points}.")
    for value, field_name in ((label_output, "LabelOutput"), (score_output, "ScoreOutput"), (positive_label, "PositiveLabel")):
        if len(value) > MAX_NAME_CHARS:
            raise ValidationError(f"{field_name} may be at most {MAX_NAME_CHARS} characters, got {len(value)}.")
    variants = (*endpoint.production_variants, *endpoint.shadow_variants)
    if not endpoint.production_variants:
        raise ValidationError(f"Endpoint {endpoint.name} has no production variant to report on.")
    baseline = baseline or endpoint.production_variants[0]
    if baseline not in variants:
        raise ValidationError(
            f"BaselineVariant {baseline!r} is not a variant of endpoint {endpoint.name}; its variants are {', '.join(variants)}."
        )
    return ReportRequest(
        endpoint.name, float(start), float(end), baseline, float(confidence_level),
        label_output, score_output, positive_label or "1", int(series_points),
    )


def build_report(
    request: ReportRequest,
    endpoint: EndpointView,
    weights_before: WeightChangeView | None,
    weight_changes: list[WeightChangeView],
    automatic_changes: list[WeightChangeView],
    db: ExperimentsDb,
    metrics_path: Path,
) -> ExperimentReport:
    """Compute the report (blocking: run it on a worker thread)."""
    notes: list[str] = []
    metrics = MetricStore(metrics_path)
    try:
        measured = {
            v: load_variant_metrics(metrics, request.endpoint_name, v, request.start, request.end)
            for v in (*endpoint.production_variants, *endpoint.shadow_variants)
        }
    finally:
        metrics.close()
    outcomes = load_outcomes(
        db, request.endpoint_name, request.start, request.end, request.label_output, request.score_output, request.positive_label
    )
    production_total = sum(float(measured[v].invocations.sum()) for v in endpoint.production_variants)
    level = request.confidence_level
    reports = []
    for name in (*endpoint.production_variants, *endpoint.shadow_variants):
        reports.append(
            _variant_report(name, name in endpoint.shadow_variants, endpoint.current_weights.get(name, 0.0),
                            measured[name], outcomes.get(name, VariantOutcomes()), production_total, request, notes)
        )
    baseline = request.baseline
    for report in reports:
        if report.variant_name != baseline:
            report.comparisons = _comparisons(
                report.variant_name, baseline, measured, outcomes, level, rewards=not report.shadow and baseline in endpoint.production_variants
            )
    for variant, outcome in sorted(outcomes.items()):
        if variant not in measured:
            notes.append(f"{outcome.captured} captured records of variant {variant}, no longer on the endpoint, are left out.")
    if not endpoint.capture_enabled:
        notes.append("Data capture is off on this endpoint: quality and reward figures need captured records to join feedback to.")
    sample_ratio = _sample_ratio(endpoint, measured, weights_before, weight_changes, notes)
    series = _series(request, endpoint, measured, outcomes)
    return ExperimentReport(
        request=request,
        variants=reports,
        sample_ratio=sample_ratio,
        series=series,
        weight_changes=automatic_changes,
        unmatched_feedback=unmatched_feedback(db, request.endpoint_name, request.start, request.end),
        notes=notes,
    )


def _variant_report(
    name: str, shadow: bool, weight: float, m: VariantMetrics, o: VariantOutcomes, production_total: float,
    request: ReportRequest, notes: list[str],
) -> VariantReport:
    level = request.confidence_level
    invocations = int(m.invocations.sum())
    report = VariantReport(name, shadow, weight, invocations=invocations)
    report.traffic_share = invocations / production_total if not shadow and production_total > 0 else 0.0
    report.errors_4xx, report.errors_5xx = int(m.errors_4xx.sum()), int(m.errors_5xx.sum())
    report.model_errors = int(m.model_errors.sum())
    report.error_rate = st.proportion_estimate(int(m.failures.sum()), invocations, level)
    if m.latency.count:
        report.latency_mean_us = m.latency.mean()
        report.latency_p50_us, report.latency_p90_us, report.latency_p99_us = (float(x) for x in m.latency.percentiles([50, 90, 99]))
    elif m.latency_means.size:
        report.latency_mean_us = float(m.latency_means.mean())
    report.captured, report.with_feedback = o.captured, o.with_feedback
    if o.y_true:
        scores = np.asarray(o.scores, dtype=np.float64)
        report.quality = st.classification(o.y_true, o.y_pred, request.positive_label, scores if np.isfinite(scores).any() else None, level)
        if report.quality is not None and report.quality.roc_auc is None:
            notes.append(
                f"{name}: no ROC AUC ("
                + ("the labels hold one class only" if np.isfinite(scores).any() else "no score output in the captured answers")
                + ")."
            )
    elif o.with_feedback:
        notes.append(f"{name}: none of its {o.with_feedback} records with feedback has ground-truth labels to score.")
    if o.labels_without_prediction:
        notes.append(f"{name}: {o.labels_without_prediction} labeled records have no predicted-label output and are left out of accuracy.")
    if o.row_count_mismatches:
        notes.append(f"{name}: {o.row_count_mismatches} labeled records have a different number of labels than rows and are left out.")
    if shadow:
        if o.rewards:
            notes.append(f"{name}: rewards describe the answers callers received; a shadow's are never returned, so it has no mean reward.")
    else:
        report.mean_reward = st.mean_estimate(np.asarray(o.rewards), level)
        if len(o.rewards) == 1:
            notes.append(f"{name}: one reward only; a mean reward needs 2.")
    if invocations == 0:
        notes.append(f"{name}: no invocations in the window.")
    return report


def _comparisons(
    name: str, baseline: str, measured: dict[str, VariantMetrics], outcomes: dict[str, VariantOutcomes], level: float, *, rewards: bool
) -> list[Comparison]:
    out = []
    o, o0 = outcomes.get(name, VariantOutcomes()), outcomes.get(baseline, VariantOutcomes())
    m, m0 = measured[name], measured[baseline]
    results = [
        (
            "accuracy",
            st.compare_proportions(
                np.asarray(o.label_times), np.equal(o.y_true, o.y_pred) if o.y_true else np.zeros(0),
                np.asarray(o0.label_times), np.equal(o0.y_true, o0.y_pred) if o0.y_true else np.zeros(0), level,
            ),
        ),
        ("error_rate", st.compare_counts(m.times, m.failures, m.invocations, m0.times, m0.failures, m0.invocations, level)),
    ]
    if rewards:
        results.append(("mean_reward", st.compare_means(np.asarray(o.reward_times), o.rewards, np.asarray(o0.reward_times), o0.rewards, level)))
    results.append(("model_latency_us", st.compare_means(m.latency_times, m.latency_means, m0.latency_times, m0.latency_means, level)))
    for metric, result in results:
        if result is not None:
            out.append(Comparison(metric, result, result.significant(level)))
    return out


# Seconds after a weight change whose points may still hold traffic routed by the weights before it:
# a proxy reports every second (its default --stats-interval) and a report takes a moment to land.
CHANGE_GUARD_S = 3.0


def _near_changes(seconds: np.ndarray, change_times: np.ndarray) -> np.ndarray:
    """Which points (stamped `seconds`) fall from the second before a change to CHANGE_GUARD_S after it.

    Minute points (older than the raw retention) are spaced 60 s apart: the guard covers their minute.
    """
    near = np.zeros(seconds.size, dtype=bool)
    if not seconds.size or not change_times.size:
        return near
    step = float(np.min(np.diff(seconds))) if seconds.size > 1 else 1.0
    resolution = 60.0 if step >= 60 else 1.0
    for change in change_times:
        near |= (seconds >= change - resolution) & (seconds < change + max(CHANGE_GUARD_S, resolution))
    return near


def _sample_ratio(
    endpoint: EndpointView, measured: dict[str, VariantMetrics], before: WeightChangeView | None,
    changes: list[WeightChangeView], notes: list[str],
) -> st.SampleRatio:
    names = endpoint.production_variants
    seconds = np.unique(np.concatenate([measured[v].times for v in names])) if names else np.zeros(0)
    observed_by_second = np.zeros((seconds.size, len(names)))
    for j, v in enumerate(names):
        observed_by_second[np.searchsorted(seconds, measured[v].times), j] = measured[v].invocations

    def shares(weights: dict[str, float]) -> np.ndarray:
        row = np.array([max(0.0, float(weights.get(v, 0.0))) for v in names])
        return row / row.sum() if row.sum() > 0 else row

    if before is None and not changes:
        initial = shares(endpoint.current_weights)
        notes.append("No weight history for this endpoint: the current weights are taken as in force for the whole window.")
    else:
        initial = shares(before.weights) if before is not None else shares(changes[0].weights)
    change_times = np.array([c.time for c in changes], dtype=np.float64)
    change_shares = np.array([shares(c.weights) for c in changes]).reshape(len(changes), len(names))
    in_force = st.weight_shares_at(seconds, change_times, change_shares, initial)
    known = in_force.sum(axis=1) > 0  # seconds before the variants had weights cannot be expected
    totals = observed_by_second.sum(axis=1)
    if (~known).any() and totals[~known].sum() > 0:
        notes.append(f"{int(totals[~known].sum())} invocations in seconds without weights for these variants are left out of the sample-ratio check.")
    # A point is stamped with the end of the proxy's report interval, so the traffic of the seconds
    # around a weight change may have been routed by either weights: leave it out rather than guess.
    # (CreateEndpoint's first weights replace none.)
    ambiguous = known & _near_changes(seconds, np.array([c.time for c in changes if c.source != "create"], dtype=np.float64))
    if ambiguous.any() and totals[ambiguous].sum() > 0:
        notes.append(
            f"{int(totals[ambiguous].sum())} invocations reported within {CHANGE_GUARD_S:g} s of a weight "
            "change (routed by the old or the new weights) are left out of the sample-ratio check."
        )
    known &= ~ambiguous
    expected = (in_force[known] * totals[known, None]).sum(axis=0)
    observed = observed_by_second[known].sum(axis=0)
    return st.sample_ratio_check(names, observed, expected)


def _series(
    request: ReportRequest, endpoint: EndpointView, measured: dict[str, VariantMetrics], outcomes: dict[str, VariantOutcomes]
) -> dict[str, list[SeriesPoint]]:
    level = request.confidence_level
    edges = np.linspace(request.start, request.end, request.series_points + 1)
    production = np.zeros(request.series_points)
    per_bucket = {}
    for name, m in measured.items():
        counts = np.histogram(m.times, bins=edges, weights=m.invocations)[0] if m.times.size else np.zeros(request.series_points)
        per_bucket[name] = counts
        if name in endpoint.production_variants:
            production += counts
    series = {}
    ends = edges[1:]
    for name, m in measured.items():
        o = outcomes.get(name, VariantOutcomes())
        shadow = name in endpoint.shadow_variants
        # Everything from the window's start to each bucket's end, by prefix sums.
        labeled = np.searchsorted(np.asarray(o.label_times, dtype=np.float64), ends, side="left")
        correct = np.concatenate([[0], np.cumsum(np.equal(o.y_true, o.y_pred))]) if o.y_true else np.zeros(1)
        accuracy = st.proportion_estimates(correct[labeled], labeled, level)
        rewarded = np.searchsorted(np.asarray(o.reward_times, dtype=np.float64), ends, side="left")
        rewards = np.asarray(o.rewards, dtype=np.float64)
        centred = rewards - (rewards.mean() if rewards.size else 0.0)
        sums = np.concatenate([[0.0], np.cumsum(centred)])[rewarded]
        squares = np.concatenate([[0.0], np.cumsum(centred**2)])[rewarded]
        if rewards.size and st.is_binary(rewards):  # a proportion: Wilson intervals, within [0, 1]
            mean_reward = st.proportion_estimates(np.concatenate([[0], np.cumsum(rewards)])[rewarded], rewarded, level)
            shift = 0.0
        else:
            mean_reward = st.mean_estimates(rewarded, sums, squares, level)
            shift = float(rewards.mean()) if rewards.size else 0.0
        seen = np.searchsorted(m.times, ends, side="left")
        failures = np.concatenate([[0.0], np.cumsum(m.failures)])[seen]
        invocations = np.concatenate([[0.0], np.cumsum(m.invocations)])[seen]
        error_rate = st.proportion_estimates(failures, invocations, level)
        series[name] = [
            SeriesPoint(
                time=float(ends[i]),
                invocations=int(per_bucket[name][i]),
                traffic_share=float(per_bucket[name][i] / production[i]) if not shadow and production[i] > 0 else 0.0,
                accuracy=accuracy[i],
                mean_reward=None if shadow or mean_reward[i] is None else _shifted(mean_reward[i], shift),
                error_rate=error_rate[i],
            )
            for i in range(request.series_points)
        ]
    return series


def _shifted(estimate: st.Estimate, shift: float) -> st.Estimate:
    return st.Estimate(estimate.value + shift, estimate.ci_low + shift, estimate.ci_high + shift, estimate.count)
