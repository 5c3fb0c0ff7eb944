"""Deployment policies and the deployment runner, driven by a fake clock, fake instances and alarms:
a ten-minute canary runs in milliseconds, and each step of traffic is checked."""

from __future__ import annotations

import asyncio

import pytest

from mve.control.deployments import (
    DeploymentRunner,
    Policy,
    batch_instances,
    green_variants,
    parse_deployment_config,
    traffic_steps,
)
from mve.control.records import (
    Batching,
    DeploymentPhase,
    DeploymentRecord,
    EndpointConfigRecord,
    EndpointRecord,
    EndpointStatus,
    InstanceRecord,
    InstanceStatus,
    VariantSpec,
    VariantState,
)
from mve.control.routes import build_routes_from_store
from mve.control.store import SqliteStore
from mve.errors import ValidationError


def canary(value=10, kind="CAPACITY_PERCENT", wait=600, **extra):
    return {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
        "Type": "CANARY", "WaitIntervalInSeconds": wait, "CanarySize": {"Type": kind, "Value": value}}, **extra}}


@pytest.mark.parametrize(
    "config, message",
    [
        (canary(60), "at most 50%"),
        (canary(wait=3601), "WaitIntervalInSeconds must be 0-3600"),
        ({"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "LINEAR", "WaitIntervalInSeconds": 1,
                                    "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 5}}}}, "10-50%"),
        ({"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "SOMETIMES"}}}, "Type must be one of"),
        ({"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "CANARY"}}}, "needs TrafficRoutingConfiguration.CanarySize"),
        (canary(MaximumExecutionTimeoutInSeconds=60), "MaximumExecutionTimeoutInSeconds must be 600-28800"),
        (canary(TerminationWaitInSeconds=-1), "TerminationWaitInSeconds must be 0-3600"),
        ({**canary(), "RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1}}}, "not both"),
        ({"RollingUpdatePolicy": {"WaitIntervalInSeconds": 1}}, "MaximumBatchSize is required"),
        ({**canary(), "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "nope"}]}}, "does not exist"),
        ({**canary(), "AutoRollbackConfiguration": {"Alarms": []}}, "1-10 alarms"),
        (canary(0, "INSTANCE_COUNT"), "at least 1"),
    ],
)
def test_bad_deployment_configs_are_refused_with_the_field_named(config, message):
    with pytest.raises(ValidationError, match=message):
        policy = parse_deployment_config(config, lambda name: name == "exists")
        traffic_steps(policy, 4)


def test_traffic_steps_and_batches():
    assert traffic_steps(Policy(), 3) == [1.0]
    assert traffic_steps(parse_deployment_config(canary(10), bool), 5) == [0.1, 1.0]
    assert traffic_steps(parse_deployment_config(canary(2, "INSTANCE_COUNT"), bool), 4) == [0.5, 1.0]
    linear = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
        "Type": "LINEAR", "WaitIntervalInSeconds": 0, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 30}}}}
    assert traffic_steps(parse_deployment_config(linear, bool), 10) == pytest.approx([0.3, 0.6, 0.9, 1.0])
    with pytest.raises(ValidationError, match="more than half"):
        traffic_steps(parse_deployment_config(canary(3, "INSTANCE_COUNT"), bool), 4)
    assert batch_instances(("INSTANCE_COUNT", 2), 5) == 2
    assert batch_instances(("CAPACITY_PERCENT", 10), 5) == 1  # at least one
    assert batch_instances(("CAPACITY_PERCENT", 50), 6) == 3
    assert batch_instances(None, 4) == 4


def spec(name, model="m", count=1, weight=1.0):
    return VariantSpec(name, model, count, "ml.cpu.small", weight, "LEAST_OUTSTANDING_REQUESTS", 60, Batching())


def test_retained_variant_properties():
    endpoint = EndpointRecord("e", "arn", "old", EndpointStatus.IN_SERVICE, "", 0, 0,
                              [VariantState("A", 3.0, 3.0, 4), VariantState("B", 1.0, 1.0, 1)])
    config = EndpointConfigRecord("new", "arn", [spec("A", count=1, weight=1.0), spec("C", count=2, weight=5.0)], {}, 0)
    plain = green_variants(endpoint, config, False, ())
    assert [(g.variant_name, g.weight, g.instance_count) for g in plain] == [("A", 1.0, 1), ("C", 5.0, 2)]
    kept = green_variants(endpoint, config, True, ())
    assert [(g.variant_name, g.weight, g.instance_count) for g in kept] == [("A", 3.0, 4), ("C", 5.0, 2)]
    weight_only = green_variants(endpoint, config, True, ("DesiredInstanceCount",))
    assert [(g.weight, g.instance_count) for g in weight_only] == [(3.0, 1), (5.0, 2)]


class FakeFleet:
    """Instances that start at once (or fail), recorded in the store like the reconciler's."""

    def __init__(self, store, fail_configs=()):
        self.store = store
        self.fail_configs = set(fail_configs)
        self.n = 0
        self.stopped = []

    async def launch(self, name, specs, config_name):
        if config_name in self.fail_configs:
            return [RuntimeError(f"{config_name} cannot start")]
        for s in specs:
            self.n += 1
            self.store.put_instance(InstanceRecord(name, s.variant_name, f"{s.variant_name}-{self.n}", 1000 + self.n,
                                                   f"127.0.0.1:{9000 + self.n}", InstanceStatus.IN_SERVICE, 0.0, "", config_name))
        return []

    async def stop(self, name, records):
        for record in records:
            self.stopped.append(record.instance_id)
            self.store.delete_instance(name, record.instance_id)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds
        await asyncio.sleep(0)


class Routes:
    def __init__(self, store):
        self.store = store
        self.tables = []

    def publish(self):
        self.tables.append(build_routes_from_store(self.store))


@pytest.fixture
def world(tmp_path):
    store = SqliteStore(tmp_path / "mve.db")
    from mve.control.records import ModelRecord

    store.insert_model(ModelRecord("m", "arn", "onnxruntime", "x", {}, "/a", "sha", 1, [], [], 0.0))
    store.insert_config(EndpointConfigRecord("old", "arn", [spec("A", count=2)], {}, 0.0))
    store.insert_config(EndpointConfigRecord("new", "arn", [spec("A", count=2)], {}, 0.0))
    store.insert_endpoint(EndpointRecord("e", "arn", "old", EndpointStatus.UPDATING, "", 0, 0, [VariantState("A", 1.0, 1.0, 2)]))
    for i in range(2):
        store.put_instance(InstanceRecord("e", "A", f"blue-{i}", 10 + i, f"127.0.0.1:{8000 + i}", InstanceStatus.IN_SERVICE, 0.0))
    yield store
    store.close()


def run(world, config, *, alarms=None, fail=(), alarm_at=None):
    clock, routes, fleet = Clock(), Routes(world), FakeFleet(world, fail)
    states = dict(alarms or {})

    def alarm_state(name):
        if alarm_at is not None and clock.now >= alarm_at:
            return "ALARM"
        return states.get(name, "OK")

    runner = DeploymentRunner(world, routes, fleet.launch, fleet.stop, alarm_state, clock=clock, sleep=clock.sleep)
    policy = parse_deployment_config(config, lambda name: True)

    async def main():
        runner.start(DeploymentRecord("e", "old", "new", {**policy.as_record(), "given": config},
                                      green_variants(world.get_endpoint("e"), world.get_config("new"), False, ()),
                                      DeploymentPhase.CREATING, 0.0, clock.now, clock.now))
        await runner.finished["e"].wait()

    asyncio.run(main())
    shares = []
    for table in routes.tables:
        fleets = {v.fleet: v.weight for v in table[0].variants} if table else {}
        if "green" in fleets:
            shares.append(round(fleets["green"], 3))
    return world.get_endpoint("e"), shares, fleet, clock


def test_a_ten_minute_canary_runs_its_steps_and_switches(world):
    endpoint, shares, fleet, clock = run(world, canary(10, wait=600, TerminationWaitInSeconds=120))
    assert endpoint.status == EndpointStatus.IN_SERVICE and endpoint.config_name == "new"
    assert shares == [0.1, 1.0]  # the canary's tenth, then everything
    assert clock.now - 1000.0 == pytest.approx(600 + 600 + 120, abs=1)
    assert sorted(fleet.stopped) == ["blue-0", "blue-1"]
    assert all(i.config_name == "new" for i in world.list_instances("e"))
    assert world.get_deployment("e") is None and world.get_last_deployment_config("e") == canary(10, wait=600, TerminationWaitInSeconds=120)


def test_an_alarm_during_the_bake_sends_traffic_back_to_blue_and_stops_green(world):
    config = {**canary(10, wait=600), "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "errors"}]}}
    endpoint, shares, fleet, clock = run(world, config, alarm_at=1000.0 + 30)
    assert endpoint.status == EndpointStatus.IN_SERVICE and endpoint.config_name == "old"
    assert "alarm errors went into ALARM" in endpoint.failure_reason
    assert shares[-1] == 0.0 and 1.0 not in shares
    assert clock.now - 1000.0 < 31
    assert {i.config_name for i in world.list_instances("e")} == {"old"}
    assert len(fleet.stopped) == 2 and all(s.startswith("A-") for s in fleet.stopped)


def test_a_green_fleet_that_cannot_start_leaves_blue_serving(world):
    endpoint, shares, fleet, _ = run(world, canary(10), fail={"new"})
    assert endpoint.status == EndpointStatus.IN_SERVICE and endpoint.config_name == "old"
    assert "failed, the endpoint still serves old" in endpoint.failure_reason
    assert set(shares) <= {0.0}
    assert fleet.stopped == [] and len(world.list_instances("e")) == 2


def test_a_rolling_update_moves_capacity_one_batch_at_a_time(world):
    config = {"RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1}, "WaitIntervalInSeconds": 60}}
    endpoint, shares, fleet, clock = run(world, config)
    assert endpoint.config_name == "new" and endpoint.status == EndpointStatus.IN_SERVICE
    assert [s for s in shares if s] == [0.5, 1.0]
    assert len(fleet.stopped) == 2 and clock.now - 1000.0 == pytest.approx(120, abs=1)


def test_the_execution_timeout_rolls_back(world):
    config = canary(10, wait=3600, MaximumExecutionTimeoutInSeconds=600)
    endpoint, _, _, clock = run(world, config)
    assert endpoint.config_name == "old" and "MaximumExecutionTimeoutInSeconds" in endpoint.failure_reason
    assert clock.now - 1000.0 < 700


def test_a_restart_during_an_update_rolls_it_back(world):
    world.put_deployment(DeploymentRecord("e", "old", "new", Policy().as_record(), [], DeploymentPhase.BAKING, 0.1, 0, 0))
    runner = DeploymentRunner(world, Routes(world), None, None, lambda n: None)
    runner.recover()
    endpoint = world.get_endpoint("e")
    assert endpoint.status == EndpointStatus.IN_SERVICE and endpoint.config_name == "old"
    assert "control plane restarted" in endpoint.failure_reason and world.get_deployment("e") is None



def test_a_rolling_rollback_restores_blue_in_batches_and_a_failed_one_is_update_rollback_failed(world):
    config = {"RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1}, "WaitIntervalInSeconds": 60,
                                      "RollbackMaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1}},
              "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "errors"}]}}
    # The alarm fires in the first batch's bake, after one blue instance was stopped.
    endpoint, shares, fleet, _ = run(world, config, alarm_at=1000.0 + 30)
    assert endpoint.status == EndpointStatus.IN_SERVICE and endpoint.config_name == "old"
    blue = [i for i in world.list_instances("e") if i.config_name == "old"]
    assert len(blue) == 2  # the stopped one was started again
    assert not [i for i in world.list_instances("e") if i.config_name == "new"]
    assert shares[-1] == 0.0


def test_a_rollback_that_cannot_restart_blue_is_update_rollback_failed(world, monkeypatch):
    config = {"RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1}, "WaitIntervalInSeconds": 60},
              "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "errors"}]}}
    original = FakeFleet.launch

    async def launch(self, name, specs, config_name):
        if config_name == "old":
            return [RuntimeError("no capacity for the old model")]
        return await original(self, name, specs, config_name)

    monkeypatch.setattr(FakeFleet, "launch", launch)
    endpoint, _, _, _ = run(world, config, alarm_at=1000.0 + 30)
    assert endpoint.status == EndpointStatus.UPDATE_ROLLBACK_FAILED
    assert "alarm errors went into ALARM" in endpoint.failure_reason and "no capacity for the old model" in endpoint.failure_reason
    assert world.get_deployment("e") is None


def test_each_fleet_keeps_its_variants_proportions(tmp_path):
    from mve.control.records import GreenVariant, ModelRecord
    from mve.control.routes import build_endpoint_routes

    configs = {
        "old": EndpointConfigRecord("old", "arn", [spec("A"), spec("B")], {}, 0.0),
        "new": EndpointConfigRecord("new", "arn", [spec("B"), spec("C")], {}, 0.0),
    }
    endpoint = EndpointRecord("e", "arn", "old", EndpointStatus.UPDATING, "", 0, 0,
                              [VariantState("A", 1.0, 1.0, 1), VariantState("B", 3.0, 3.0, 1)])
    deployment = DeploymentRecord("e", "old", "new", {}, [GreenVariant("B", 1.0, 1), GreenVariant("C", 1.0, 1)],
                                  DeploymentPhase.BAKING, 0.2, 0, 0)
    models = {"m": ModelRecord("m", "arn", "onnxruntime", "x", {}, "/a", "sha", 1, [], [], 0.0)}
    (route,) = build_endpoint_routes([endpoint], configs, models, [], {"e": deployment})
    weights = {(v.variant_name, v.fleet): round(v.weight, 6) for v in route.variants}
    # Blue keeps A:B = 1:3 on its 80%, green B:C = 1:1 on its 20%.
    assert weights == {("A", "blue"): 0.2, ("B", "blue"): 0.6, ("B", "green"): 0.1, ("C", "green"): 0.1}
