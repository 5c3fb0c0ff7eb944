"""The autoscaler's rules with a fake clock, a real metric store and alarm book, and a fake endpoint:
how far it scales out, how slowly in, cooldowns, bounds, step scaling from an alarm, suspension,
updates in progress, and refusals with Application Auto Scaling's errors."""

from __future__ import annotations

import pytest

from mve.control.alarms import AlarmBook, AlarmDefinition, validate_definition
from mve.control.autoscaler import SETTLE_S, Autoscaler
from mve.control.autoscaling import AutoscalingStore, step_capacity, tracking_capacity, validate_step_scaling
from mve.control.metric_catalog import BY_KEY, SAGEMAKER, Samples, variant_dimensions
from mve.control.metric_store import MetricStore
from mve.control.service import WeightAndCapacity
from mve.control.records import EndpointRecord, EndpointStatus, VariantState
from mve.control.store import SqliteStore
from mve.control.validation import Limits
from mve.errors import MveError, ValidationError

RESOURCE = "endpoint/ep/variant/A"
KEYS = ("sagemaker", RESOURCE, "sagemaker:variant:DesiredInstanceCount")
PER_INSTANCE = BY_KEY[SAGEMAKER, "InvocationsPerInstance"]


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


class FakeReconciler:
    def __init__(self, store):
        self.store = store

    def current_instance_counts(self, name, config_name=None):
        endpoint = self.store.get_endpoint(name)
        return {v.variant_name: v.desired_instance_count for v in endpoint.variants}


class FakeDeployments:
    def __init__(self):
        self.running = set()

    def active(self, name):
        return name in self.running


class FakeService:
    """Applies instance counts at once (the reconciler's work is tested elsewhere)."""

    def __init__(self, store):
        self.store = store
        self.limits = Limits()
        self.deployments = FakeDeployments()
        self.reconciler = FakeReconciler(store)
        self.calls = []

    def update_weights_and_capacities(self, name, changes):
        endpoint = self.store.get_endpoint(name)
        for change in changes:
            endpoint.variant(change.variant_name).desired_instance_count = change.desired_instance_count
            self.calls.append(change.desired_instance_count)
        self.store.save_endpoint(endpoint)


@pytest.fixture
def world(tmp_path):
    clock = Clock()
    store = SqliteStore(tmp_path / "mve.db")
    store.insert_endpoint(EndpointRecord("ep", "arn", "c", EndpointStatus.IN_SERVICE, "", 0, 0, [VariantState("A", 1.0, 1.0, 1)]))
    metrics = MetricStore(tmp_path / "metrics.db", clock=clock)
    alarms = AlarmBook(metrics, clock=clock, settle_s=0)
    service = FakeService(store)
    scaler = Autoscaler(AutoscalingStore(tmp_path / "mve.db"), service, metrics, alarms, window_s=10, clock=clock)
    yield scaler, service, metrics, alarms, clock, tmp_path
    store.close()
    metrics.close()


def load(metrics, clock, per_second: float, seconds: int = 10) -> None:
    """`per_second` requests per instance for the last `seconds` (InvocationsPerInstance samples)."""
    for i in range(seconds):
        ts = clock.now - SETTLE_S - seconds + i
        metrics.record([(PER_INSTANCE, variant_dimensions("ep", "A"), Samples(per_second, per_second, 1, 1))], ts)


def tracking(scaler, target=600.0, out=60, in_=120, **extra):
    scaler.put_scaling_policy("p", *KEYS, "TargetTrackingScaling", {
        "TargetValue": target, "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "ScaleOutCooldown": out, "ScaleInCooldown": in_, **extra}, None)


def desired(service) -> int:
    return service.store.get_endpoint("ep").variant("A").desired_instance_count


def test_capacity_rules():
    assert tracking_capacity(2, 1500, 600) == 5
    assert tracking_capacity(3, 600, 600) == 3
    assert tracking_capacity(3, 0, 600) == 1
    config = validate_step_scaling({"AdjustmentType": "ChangeInCapacity", "StepAdjustments": [
        {"MetricIntervalUpperBound": 0, "ScalingAdjustment": -1},
        {"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": 10, "ScalingAdjustment": 1},
        {"MetricIntervalLowerBound": 10, "ScalingAdjustment": 3}]})
    assert [step_capacity(config, 2, b) for b in (-5, 0, 9.9, 10, 100)] == [1, 3, 3, 5, 5]
    percent = validate_step_scaling({"AdjustmentType": "PercentChangeInCapacity", "MinAdjustmentMagnitude": 2,
                                     "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 10}]})
    assert step_capacity(percent, 4, 1) == 6  # 10% of 4 rounds up to 1, below the magnitude of 2
    with pytest.raises(ValidationError, match="neither overlap nor leave a gap"):
        validate_step_scaling({"AdjustmentType": "ChangeInCapacity", "StepAdjustments": [
            {"MetricIntervalUpperBound": 0, "ScalingAdjustment": -1}, {"MetricIntervalLowerBound": 5, "ScalingAdjustment": 1}]})


def test_out_fast_and_far_in_slowly_one_at_a_time(world):
    scaler, service, metrics, _, clock, _ = world
    scaler.register_scalable_target(*KEYS, 1, 5)
    tracking(scaler, out=60, in_=120)
    load(metrics, clock, per_second=40)  # 2400 per minute per instance, target 600: 4 instances
    assert scaler.evaluate() == 1 and desired(service) == 4
    clock.now += 30
    load(metrics, clock, per_second=40)
    assert scaler.evaluate() == 0  # the scale-out cooldown holds the next scale-out
    clock.now += 31
    load(metrics, clock, per_second=100)  # 6000/min: would be 40, but MaxCapacity is 5
    assert scaler.evaluate() == 1 and desired(service) == 5
    clock.now += 60
    assert scaler.evaluate() == 0  # idle now, but within the scale-in cooldown of the last scaling
    for expected in (4, 3, 2, 1):
        clock.now += 121
        assert scaler.evaluate() == 1 and desired(service) == expected
    clock.now += 121
    assert scaler.evaluate() == 0 and desired(service) == 1  # never below MinCapacity
    activities = scaler.describe_scaling_activities("sagemaker", RESOURCE)
    assert [a.to_capacity for a in reversed(activities)] == [4, 5, 4, 3, 2, 1]
    assert all(a.status_code == "Successful" for a in activities[1:])


def test_no_scale_in_near_the_target_or_when_disabled(world):
    scaler, service, metrics, _, clock, _ = world
    scaler.register_scalable_target(*KEYS, 1, 5)
    service.update_weights_and_capacities("ep", [WeightAndCapacity("A", None, 3)])
    tracking(scaler, in_=0)
    load(metrics, clock, per_second=9.5)  # 570/min: 95% of the target, so not below the 90% margin
    assert scaler.evaluate() == 0 and desired(service) == 3
    tracking(scaler, in_=0, DisableScaleIn=True)
    load(metrics, clock, per_second=0)
    clock.now += 20
    assert scaler.evaluate() == 0 and desired(service) == 3


def test_registering_a_range_moves_the_count_into_it_and_suspension_holds_scaling(world):
    scaler, service, metrics, _, clock, _ = world
    scaler.register_scalable_target(*KEYS, 2, 4)
    assert desired(service) == 2
    scaler.register_scalable_target(*KEYS, None, None, {"DynamicScalingOutSuspended": True})
    tracking(scaler)
    load(metrics, clock, per_second=100)
    assert scaler.evaluate() == 0 and desired(service) == 2


def test_nothing_scales_during_an_update_or_while_not_in_service(world):
    scaler, service, metrics, _, clock, _ = world
    scaler.register_scalable_target(*KEYS, 1, 5)
    tracking(scaler)
    load(metrics, clock, per_second=100)
    service.deployments.running.add("ep")
    assert scaler.evaluate() == 0
    service.deployments.running.clear()
    endpoint = service.store.get_endpoint("ep")
    endpoint.status = EndpointStatus.UPDATING
    service.store.save_endpoint(endpoint)
    assert scaler.evaluate() == 0
    endpoint.status = EndpointStatus.IN_SERVICE
    service.store.save_endpoint(endpoint)
    assert scaler.evaluate() == 1


def test_step_scaling_follows_its_alarm(world):
    scaler, service, metrics, alarms, clock, _ = world
    scaler.register_scalable_target(*KEYS, 1, 5)
    policy = scaler.put_scaling_policy("steps", *KEYS, "StepScaling", None, {
        "AdjustmentType": "ChangeInCapacity", "Cooldown": 30,
        "StepAdjustments": [{"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": 100, "ScalingAdjustment": 1},
                            {"MetricIntervalLowerBound": 100, "ScalingAdjustment": 2}]})
    alarm = validate_definition(AlarmDefinition(
        name="busy", namespace=SAGEMAKER, metric_name="InvocationsPerInstance", dimensions=variant_dimensions("ep", "A"),
        period=1, evaluation_periods=1, threshold=10, comparison_operator="GreaterThanThreshold", statistic="Sum",
        alarm_actions=(policy.arn,)), action_exists=scaler.policy_exists)
    alarms.put(alarm)
    assert scaler.evaluate() == 0  # the alarm is not in ALARM
    metrics.record([(PER_INSTANCE, variant_dimensions("ep", "A"), Samples(150, 150, 1, 1))], clock.now - 1)
    alarms.evaluate_all()
    assert alarms.get("busy").state.value == "ALARM"
    assert scaler.evaluate() == 1 and desired(service) == 3  # breach 140: the +2 step
    clock.now += 10
    assert scaler.evaluate() == 0  # the policy's cooldown
    clock.now += 25
    assert scaler.evaluate() == 1 and desired(service) == 5


def test_refusals_carry_application_auto_scalings_errors(world):
    scaler, *_ = world
    with pytest.raises(ValidationError, match="Unsupported service namespace"):
        scaler.register_scalable_target("ecs", RESOURCE, KEYS[2], 1, 2)
    with pytest.raises(ValidationError, match="Unsupported resource ID"):
        scaler.register_scalable_target("sagemaker", "endpoint/ep", KEYS[2], 1, 2)
    with pytest.raises(ValidationError, match="Could not find variant B"):
        scaler.register_scalable_target("sagemaker", "endpoint/ep/variant/B", KEYS[2], 1, 2)
    with pytest.raises(ValidationError, match="at most MaxCapacity"):
        scaler.register_scalable_target(*KEYS, 3, 2)
    with pytest.raises(ValidationError, match="above the limit"):
        scaler.register_scalable_target(*KEYS, 1, 11)
    with pytest.raises(ValidationError, match="RoleARN"):
        scaler.register_scalable_target(*KEYS, 1, 2, None, "arn:aws:iam::1:role/x")
    with pytest.raises(MveError) as error:
        tracking(scaler)
    assert error.value.reason == "ObjectNotFoundException"
    scaler.register_scalable_target(*KEYS, 1, 2)
    with pytest.raises(ValidationError, match="PredefinedMetricType"):
        scaler.put_scaling_policy("p", *KEYS, "TargetTrackingScaling", {
            "TargetValue": 5, "PredefinedMetricSpecification": {"PredefinedMetricType": "ALBRequestCountPerTarget"}}, None)
    with pytest.raises(MveError) as error:
        scaler.delete_scaling_policy("nope", *KEYS)
    assert error.value.reason == "ObjectNotFoundException"


def test_targets_policies_and_activities_survive_a_restart(world):
    scaler, service, metrics, alarms, clock, tmp_path = world
    scaler.register_scalable_target(*KEYS, 2, 3)
    tracking(scaler)
    again = Autoscaler(AutoscalingStore(tmp_path / "mve.db"), service, metrics, alarms, clock=clock)
    assert [(t.min_capacity, t.max_capacity) for t in again.describe_scalable_targets("sagemaker")] == [(2, 3)]
    assert [p.policy_name for p in again.describe_scaling_policies("sagemaker")] == ["p"]
    assert [a.to_capacity for a in again.describe_scaling_activities("sagemaker")] == [2]


def test_a_customized_metric_tracks_its_statistic(world):
    from mve.control.metric_catalog import ENDPOINTS

    scaler, service, metrics, _, clock, _ = world
    scaler.register_scalable_target(*KEYS, 1, 4)
    scaler.put_scaling_policy("cpu", *KEYS, "TargetTrackingScaling", {
        "TargetValue": 50.0, "ScaleOutCooldown": 0, "ScaleInCooldown": 0,
        "CustomizedMetricSpecification": {
            "Namespace": ENDPOINTS, "MetricName": "CPUUtilization", "Statistic": "Average",
            "Dimensions": [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "A"}]}}, None)
    assert scaler.evaluate() == 0  # no CPU samples yet: nothing to act on
    cpu = BY_KEY[ENDPOINTS, "CPUUtilization"]
    for i in range(5):
        metrics.record([(cpu, variant_dimensions("ep", "A"), Samples(1, 140.0, 140.0, 140.0))], clock.now - SETTLE_S - 5 + i)
    assert scaler.evaluate() == 1 and desired(service) == 3  # 140% on 1 instance: 3 at 50% each


def test_step_scaling_aggregates_the_alarms_datapoints_and_honours_actions_enabled(world):
    from dataclasses import replace

    scaler, service, metrics, alarms, clock, _ = world
    scaler.register_scalable_target(*KEYS, 1, 9)
    policy = scaler.put_scaling_policy("steps", *KEYS, "StepScaling", None, {
        "AdjustmentType": "ExactCapacity", "Cooldown": 0, "MetricAggregationType": "Maximum",
        "StepAdjustments": [{"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": 100, "ScalingAdjustment": 2},
                            {"MetricIntervalLowerBound": 100, "ScalingAdjustment": 5}]})
    alarm = validate_definition(AlarmDefinition(
        name="busy", namespace=SAGEMAKER, metric_name="InvocationsPerInstance", dimensions=variant_dimensions("ep", "A"),
        period=1, evaluation_periods=2, datapoints_to_alarm=1, threshold=10, comparison_operator="GreaterThanThreshold",
        statistic="Sum", alarm_actions=(policy.arn,), actions_enabled=False), action_exists=scaler.policy_exists)
    alarms.put(alarm)
    for ago, value in ((2, 50), (1, 150)):  # the datapoints: 50 then 150
        metrics.record([(PER_INSTANCE, variant_dimensions("ep", "A"), Samples(value, value, 1, 1))], clock.now - ago)
    alarms.evaluate_all()
    assert alarms.get("busy").state.value == "ALARM"
    assert scaler.evaluate() == 0  # ActionsEnabled=False: the alarm drives nothing
    alarms.put(replace(alarm, actions_enabled=True))
    assert scaler.evaluate() == 1 and desired(service) == 5  # Maximum of 50 and 150: breach 140
