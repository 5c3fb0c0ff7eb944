"""GetExperimentReport on a metric store and an experiments database filled by the test: request
validation, per-variant figures, comparisons, the sample-ratio check against the weight history,
series and feedback SendFeedback refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mve._fastroute import LatencyHistogram
from mve.control.experiment_report import build_report, validate_request
from mve.control.experiment_sources import EndpointView, WeightChangeView
from mve.control.experiments_db import ExperimentsDb
from mve.control.feedback import FeedbackEntry, FeedbackStore
from mve.control.metric_catalog import BY_KEY, SAGEMAKER, Samples, variant_dimensions
from mve.control.metric_store import MetricStore
from mve.errors import ValidationError

T0 = 1_800_000_000.0
EP = "ep"


def view(**kw) -> EndpointView:
    values = dict(
        name=EP, status="InService", production_variants=("A", "B"), shadow_variants=("S",),
        current_weights={"A": 1.0, "B": 1.0, "S": 0.5}, capture_enabled=True, capture_destination="/x", updating=False,
    )
    values.update(kw)
    return EndpointView(**values)


def request(endpoint: EndpointView, **kw):
    args = dict(start=T0, end=T0 + 100, baseline="", confidence_level=0.0, label_output="", score_output="",
                positive_label="", series_points=0, now=T0 + 100)
    args.update(kw)
    return validate_request(endpoint, **args)


def record_second(metrics: MetricStore, variant: str, second: float, invocations: int, failures: int = 0, latency_us: float = 1000.0):
    dims = variant_dimensions(EP, variant)
    histogram = LatencyHistogram()
    histogram.record_many(np.full(invocations, latency_us))
    index, counts = histogram.sparse()
    items = [
        (BY_KEY[SAGEMAKER, "Invocations"], dims, Samples(invocations, invocations, 1, 1)),
        (BY_KEY[SAGEMAKER, "Invocation5XXErrors"], dims, Samples(invocations, failures, 0, 1 if failures else 0)),
        (BY_KEY[SAGEMAKER, "Invocation4XXErrors"], dims, Samples(invocations, 0, 0, 0)),
        (BY_KEY[SAGEMAKER, "InvocationModelErrors"], dims, Samples(invocations, failures, 0, 1 if failures else 0)),
        (BY_KEY[SAGEMAKER, "ModelLatency"], dims, Samples(invocations, histogram.sum, latency_us, latency_us, index, counts)),
    ]
    metrics.record(items, second)


@pytest.fixture
def stores(tmp_path):
    metrics = MetricStore(tmp_path / "metrics.db", clock=lambda: T0 + 100)
    db = ExperimentsDb(tmp_path / "experiments.db")
    yield metrics, db, tmp_path / "metrics.db"
    metrics.close()
    db.close()


def captured(db: ExperimentsDb, variant: str, inference_id: str, when: float, labels, scores=None, truth=None, reward=None):
    with db.transaction() as c:
        c.execute(
            "INSERT INTO captured (endpoint, variant, inference_id, time, rows, labels, scores) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (EP, variant, inference_id, when, len(labels), json.dumps(labels), json.dumps(scores) if scores else None),
        )
    if truth is not None or reward is not None:
        FeedbackStore(db, clock=lambda: T0 + 100).put(
            EP, [FeedbackEntry(inference_id, tuple(truth or ()), reward, when + 1)]
        )


def test_request_defaults_and_ranges():
    endpoint = view()
    r = request(endpoint, start=None, end=None)
    assert (r.end - r.start, r.baseline, r.confidence_level, r.series_points, r.positive_label) == (3600, "A", 0.95, 60, "1")
    for kw, message in (
        ({"start": T0 + 100}, "StartTime must be before EndTime"),
        ({"start": T0 - 16 * 86400}, "at most 15 days"),
        ({"confidence_level": 0.9999}, "ConfidenceLevel must be 0.5-0.999"),
        ({"confidence_level": 0.4}, "ConfidenceLevel must be 0.5-0.999"),
        ({"series_points": 501}, "SeriesPoints must be 1-500"),
        ({"baseline": "Z"}, "its variants are A, B, S"),
    ):
        with pytest.raises(ValidationError, match=message):
            request(endpoint, **kw)


def test_per_variant_figures_comparisons_and_series(stores):
    metrics, db, path = stores
    rng = np.random.default_rng(0)
    truths = {"A": [], "B": []}
    for s in range(100):
        record_second(metrics, "A", T0 + s, 10, failures=1 if s % 10 == 0 else 0, latency_us=1000 + rng.normal(0, 20))
        record_second(metrics, "B", T0 + s, 10, latency_us=1500 + rng.normal(0, 20))
        record_second(metrics, "S", T0 + s, 5, latency_us=900)
        for variant, accuracy in (("A", 0.7), ("B", 0.95)):
            truth = str(int(rng.integers(0, 2)))
            right = rng.random() < accuracy
            predicted = truth if right else str(1 - int(truth))
            captured(db, variant, f"{variant}-{s}", T0 + s + 0.5, [predicted], [0.9 if predicted == "1" else 0.1],
                     truth=[truth], reward=1.0 if right else 0.0)
            truths[variant].append(right)
    captured(db, "S", "S-0", T0 + 1, ["1"], truth=["1"])
    FeedbackStore(db, clock=lambda: T0 + 100).put(EP, [FeedbackEntry("nobody", ("1",), None, T0 + 5)])
    endpoint = view()
    report = build_report(request(endpoint), endpoint, None, [], [], db, path)
    a, b, s = report.variants
    assert (a.invocations, b.invocations, s.invocations) == (1000, 1000, 500)
    assert (a.traffic_share, b.traffic_share, s.traffic_share) == (0.5, 0.5, 0.0)
    assert (a.errors_5xx, a.model_errors) == (10, 10) and a.error_rate.value == pytest.approx(0.01)
    assert a.latency_mean_us == pytest.approx(1000, abs=5) and b.latency_p50_us == pytest.approx(1500, rel=0.02)
    assert (a.captured, a.with_feedback) == (100, 100)
    assert a.quality.accuracy.value == pytest.approx(np.mean(truths["A"]))
    assert b.quality.accuracy.value == pytest.approx(np.mean(truths["B"]))
    assert a.mean_reward.value == pytest.approx(np.mean(truths["A"]))
    assert s.mean_reward is None and s.quality.accuracy.count == 1
    by_metric = {c.metric: c for c in b.comparisons}
    assert set(by_metric) == {"accuracy", "error_rate", "mean_reward", "model_latency_us"}
    assert by_metric["accuracy"].result.difference == pytest.approx(np.mean(truths["B"]) - np.mean(truths["A"]))
    assert by_metric["accuracy"].significant
    assert by_metric["model_latency_us"].result.difference == pytest.approx(500, abs=10) and by_metric["model_latency_us"].significant
    assert a.comparisons == []
    assert {c.metric for c in s.comparisons} == {"accuracy", "error_rate", "model_latency_us"}  # no reward for a shadow
    assert report.unmatched_feedback == 1
    assert report.sample_ratio.applicable and not report.sample_ratio.mismatch
    points = report.series["B"]
    assert len(points) == 60 and sum(p.invocations for p in points) == 1000
    assert points[-1].accuracy.value == pytest.approx(b.quality.accuracy.value)
    assert points[-1].accuracy.count == 100


def test_sample_ratio_follows_the_weight_history(stores):
    metrics, db, path = stores
    for s in range(100):
        a, b = (50, 50) if s < 50 else (80, 20)
        record_second(metrics, "A", T0 + s, a)
        record_second(metrics, "B", T0 + s, b)
    endpoint = view(shadow_variants=(), current_weights={"A": 4.0, "B": 1.0})
    before = WeightChangeView(T0 - 1000, "create", {"A": 1.0, "B": 1.0}, "")
    change = WeightChangeView(T0 + 50, "bandit", {"A": 0.8, "B": 0.2}, "why")
    report = build_report(request(endpoint), endpoint, before, [change], [change], db, path)
    srm = report.sample_ratio
    # Seconds 49-52 (from the second before the change to 3 s after it) may hold traffic routed by
    # either weights and are left out: 49 s at 50/50 and 47 s at 80/20 remain.
    assert srm.expected == pytest.approx((6210.0, 3390.0)) and srm.observed == (6210.0, 3390.0)
    assert not srm.mismatch and srm.p_value == pytest.approx(1.0)
    assert any("400 invocations reported within 3 s of a weight change" in n for n in report.notes)
    assert report.weight_changes == [change]
    # The same traffic against 50/50 throughout is a mismatch.
    flat = build_report(request(endpoint), endpoint, before, [], [], db, path).sample_ratio
    assert flat.mismatch and flat.p_value < 1e-10


def test_other_outputs_and_notes(stores):
    metrics, db, path = stores
    endpoint = view(shadow_variants=(), capture_enabled=False)
    report = build_report(request(endpoint), endpoint, None, [], [], db, path)
    assert not report.sample_ratio.applicable
    assert any("Data capture is off" in n for n in report.notes)
    assert any("No weight history" in n for n in report.notes)


# ---------------------------------------------------------------- SendFeedback


def test_feedback_is_all_or_nothing_and_names_the_bad_entry(tmp_path):
    db = ExperimentsDb(tmp_path / "experiments.db")
    store = FeedbackStore(db, clock=lambda: T0)
    good = FeedbackEntry("a", ("1",))
    cases = [
        ([], "1-1000 entries"),
        ([good] * 1001, "1-1000 entries"),
        ([good, FeedbackEntry("")], r"Feedback\[1\].InferenceId must be 1-64"),
        ([good, FeedbackEntry("x" * 65, ("1",))], r"Feedback\[1\].InferenceId must be 1-64"),
        ([FeedbackEntry("b")], r"Feedback\[0\] .* neither"),
        ([FeedbackEntry("b", ("1",) * 10_001)], "at most 10000 labels"),
        ([FeedbackEntry("b", ("x" * 257,))], r"GroundTruthLabels\[0\] must be 1-256"),
        ([good, good, FeedbackEntry("b", reward=float("nan"))], r"Feedback\[2\].Reward must be a finite"),
        ([FeedbackEntry("b", reward=1.0, observation_time=T0 + 3600)], "ObservationTime"),
    ]
    try:
        for entries, message in cases:
            with pytest.raises(ValidationError, match=message):
                store.put(EP, entries)
        assert store.get(EP, "a") is None  # nothing of a refused call was kept
        assert store.put(EP, [FeedbackEntry("a", ("1",)), FeedbackEntry("a", (), 0.5, T0 - 5)]) == 2
        assert store.get(EP, "a") == FeedbackEntry("a", (), 0.5, T0 - 5)  # the later entry replaced the earlier
        assert store.put(EP, [FeedbackEntry("c", ("0", "1"))]) == 1
        assert store.get(EP, "c").observation_time == T0  # default: when it was received
    finally:
        db.close()
