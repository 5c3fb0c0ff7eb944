"""Metric alarms: CloudWatch's evaluation rules (M of N, TreatMissingData), state history,
listeners, persistence, and the refusals, driven by an injected clock."""

from __future__ import annotations

import json

import pytest

from mve.control.alarms import ALARM, INSUFFICIENT_DATA, OK, AlarmBook, AlarmDefinition, evaluate, validate_definition
from mve.control.metric_catalog import BY_KEY, SAGEMAKER, Samples, variant_dimensions
from mve.control.metric_store import MetricStore
from mve.errors import ValidationError

T0 = 1_800_000_000.0
ERRORS = BY_KEY[SAGEMAKER, "Invocation5XXErrors"]
DIMS = variant_dimensions("ep", "A")


def definition(**changes) -> AlarmDefinition:
    base = dict(
        name="errors", namespace=SAGEMAKER, metric_name="Invocation5XXErrors", dimensions=DIMS, period=1,
        evaluation_periods=3, datapoints_to_alarm=2, threshold=1.0,
        comparison_operator="GreaterThanOrEqualToThreshold", statistic="Sum",
    )
    base.update(changes)
    return validate_definition(AlarmDefinition(**base))


def values(*vs):
    return [(int(T0) + i, v) for i, v in enumerate(vs)]


@pytest.mark.parametrize(
    "points, treat, current, expected",
    [
        ((0, 1, 1), "missing", OK, ALARM),  # 2 of 3 breach
        ((1, 0, 0), "missing", ALARM, OK),
        ((None, None, None), "missing", OK, INSUFFICIENT_DATA),
        ((None, None, None), "ignore", ALARM, ALARM),
        ((None, None, None), "ignore", INSUFFICIENT_DATA, INSUFFICIENT_DATA),
        ((None, None, 1), "breaching", OK, ALARM),
        ((None, None, 1), "notBreaching", OK, OK),
        ((None, 1, 1), "missing", OK, ALARM),
    ],
)
def test_m_of_n_with_missing_data(points, treat, current, expected):
    state, reason, data = evaluate(definition(treat_missing_data=treat), values(*points), current, T0 + 10)
    assert state == expected
    if expected == ALARM and current != ALARM:
        assert reason.startswith("Threshold Crossed") and json.loads(data)["threshold"] == 1.0


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def errors_at(store: MetricStore, second: int, errors: int, total: int = 10) -> None:
    store.record([(ERRORS, DIMS, Samples(total, errors, 0.0 if errors < total else 1.0, 1.0 if errors else 0.0))], T0 + second)


def test_an_alarm_goes_ok_alarm_ok_with_history_and_listeners(tmp_path):
    clock = Clock()
    store = MetricStore(tmp_path / "m.db", clock=clock)
    book = AlarmBook(store, clock=clock, settle_s=0)
    changes = []
    book.subscribe(lambda alarm, old, new: changes.append((alarm.name, old, new)))
    book.put(definition())
    assert book.get("errors").state.value == INSUFFICIENT_DATA
    for second in range(12):
        errors_at(store, second, 3 if 4 <= second < 8 else 0)
    timeline = []
    for second in range(3, 13):
        clock.now = T0 + second
        book.evaluate_all()
        timeline.append(book.get("errors").state.value)
    # At s the periods s-3, s-2, s-1 are evaluated; errors fill seconds 4-7, and 2 of 3 must breach.
    assert timeline == [OK, OK, OK, ALARM, ALARM, ALARM, ALARM, OK, OK, OK]
    assert changes == [("errors", INSUFFICIENT_DATA, OK), ("errors", OK, ALARM), ("errors", ALARM, OK)]
    history = book.history("errors")
    assert [h.summary for h in history if h.item_type == "StateUpdate"] == [
        "Alarm updated from ALARM to OK", "Alarm updated from OK to ALARM", "Alarm updated from INSUFFICIENT_DATA to OK",
    ]
    assert history[-1].item_type == "ConfigurationUpdate"
    store.close()
    # Alarms and their state survive a restart of the control plane.
    again = AlarmBook(MetricStore(tmp_path / "m.db", clock=clock), clock=clock)
    assert again.get("errors").state.value == OK and again.get("errors").definition == definition()


def test_percentile_alarm_on_model_latency(tmp_path):
    from mve._fastroute import LatencyHistogram

    clock = Clock()
    store = MetricStore(tmp_path / "m.db", clock=clock)
    book = AlarmBook(store, clock=clock, settle_s=0)
    book.put(definition(name="slow", metric_name="ModelLatency", statistic="", extended_statistic="p99",
                        threshold=5000, evaluation_periods=1, datapoints_to_alarm=1,
                        comparison_operator="GreaterThanThreshold"))
    h = LatencyHistogram()
    h.record_many([1000.0] * 90 + [9000.0] * 10)
    index, counts = h.sparse()
    store.record([(BY_KEY[SAGEMAKER, "ModelLatency"], DIMS, Samples(100, h.sum, h.min, h.max, index, counts))], T0)
    clock.now = T0 + 1
    book.evaluate_all()
    assert book.get("slow").state.value == ALARM


def test_delete_is_all_or_nothing(tmp_path):
    store = MetricStore(tmp_path / "m.db")
    book = AlarmBook(store)
    book.put(definition(name="a"))
    with pytest.raises(Exception) as error:
        book.delete(["a", "nope"])
    assert error.value.reason == "ResourceNotFound" and book.get("a") is not None
    book.delete(["a"])
    assert book.list_alarms() == []


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"statistic": "Sum", "extended_statistic": "p99"}, "InvalidParameterCombination"),
        ({"statistic": "", "extended_statistic": ""}, "InvalidParameterCombination"),
        ({"statistic": "Median"}, "InvalidParameterValue"),
        ({"period": 7}, "InvalidParameterValue"),
        ({"evaluation_periods": 0}, "InvalidParameterValue"),
        ({"datapoints_to_alarm": 4}, "InvalidParameterValue"),
        ({"period": 3600, "evaluation_periods": 25}, "InvalidParameterCombination"),
        ({"comparison_operator": "GreaterThanUpperThreshold"}, "InvalidParameterValue"),
        ({"comparison_operator": "Bigger"}, "InvalidParameterValue"),
        ({"treat_missing_data": "sometimes"}, "InvalidParameterValue"),
        ({"threshold": float("nan")}, "InvalidParameterValue"),
        ({"name": ""}, "MissingParameter"),
        ({"dimensions": (("EndpointName", "a"), ("EndpointName", "b"))}, "InvalidParameterValue"),
    ],
)
def test_bad_alarm_definitions_are_refused(changes, reason):
    with pytest.raises(ValidationError) as error:
        definition(**changes)
    assert error.value.reason == reason


def test_alarm_actions_are_refused_not_ignored_unless_they_name_a_step_scaling_policy():
    from dataclasses import replace

    base = definition()
    with pytest.raises(ValidationError, match="OKActions and InsufficientDataActions are not supported"):
        validate_definition(base, other_actions=True)
    with pytest.raises(ValidationError, match="not a step scaling policy"):
        validate_definition(replace(base, alarm_actions=("arn:aws:sns:us-east-1:1:topic",)))
    policy = "arn:mve:autoscaling:local:000000000000:scalingPolicy:abc:resource/sagemaker/endpoint/e/variant/A:policyName/up"
    kept = validate_definition(replace(base, alarm_actions=(policy,)), action_exists=lambda arn: arn == policy)
    assert kept.alarm_actions == (policy,)
