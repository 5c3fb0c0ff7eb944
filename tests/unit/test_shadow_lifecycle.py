"""Shadow variants through an endpoint's life, data capture in DescribeEndpoint, and the weight history.

The control service and reconciler run on a real store with the fake instance provider of
test_control_service (no processes, instant readiness), and updates with a real deployment runner,
so everything runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from mve.control.deployments import DeploymentRunner
from mve.control.records import VariantSpec
from mve.control.servicer import describe_endpoint_response
from mve.control.service import WeightAndCapacity
from mve.control.store import SqliteStore
from mve.errors import ResourceInUse, ValidationError
from test_control_service import FakeProvider, Plane, write_model

CAPTURE = {"enable_capture": True, "initial_sampling_percentage": 30, "destination_s3_uri": "file:///var/capture"}


def variant(name: str, weight: float = 1.0, count: int = 1) -> VariantSpec:
    return VariantSpec(name, "m", count, "ml.cpu.small", weight, "RANDOM", 600)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds
        await asyncio.sleep(0)


class Alarm:
    """An alarm that goes into ALARM at `fires_at` on the plane's clock (never when None)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.fires_at: float | None = None

    def get(self, name):
        return self  # every alarm name exists

    def state(self, name) -> str:
        return "ALARM" if self.fires_at is not None and self.clock.now >= self.fires_at else "OK"


def plane_with_updates(tmp_path, provider=None, alarm_state=lambda name: None) -> Plane:
    """A Plane whose service can run UpdateEndpoint (a deployment runner on the reconciler, a fake clock)."""
    plane = Plane(tmp_path, provider or FakeProvider())
    plane.service._clock = plane.clock = Clock()
    plane.service.deployments = DeploymentRunner(
        plane.store, plane.routes, plane.reconciler.launch_instances, plane.reconciler.stop_instances,
        alarm_state, clock=plane.clock, sleep=plane.clock.sleep,
    )
    return plane


async def deploy(plane: Plane, tmp_path, capture=CAPTURE, shadows=(variant("S", weight=1.0),)) -> None:
    """Endpoint "e" on config "c": A (weight 1) and B (weight 3), shadow S, capture on."""
    await plane.service.create_model("m", "", str(write_model(tmp_path / "m.onnx")), {}, {})
    plane.service.create_endpoint_config("c", [variant("A", 1.0), variant("B", 3.0)], capture, {}, list(shadows))
    plane.service.create_endpoint("e", "c", {})
    await plane.reconciler.idle()


def shadow_routes(plane: Plane):
    (route,) = plane.routes.current.endpoints
    return route, {s.variant_name: s for s in route.shadow_variants}


def describe(plane: Plane, name: str = "e"):
    endpoint, counts = plane.service.describe_endpoint(name)
    return describe_endpoint_response(
        endpoint, counts, plane.service.endpoint_images(endpoint), plane.service.data_capture_of(endpoint),
        plane.service.automatic_weight_changes(name),
    )


# ---------------------------------------------------------------- lifecycle


def test_a_shadow_runs_its_instances_and_is_routed_apart(tmp_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await deploy(plane, tmp_path, shadows=[variant("S", weight=1.0, count=2)])
        assert plane.status() == "InService"
        assert plane.counts() == {"A": 1, "B": 1, "S": 2}
        route, shadows = shadow_routes(plane)
        assert [v.variant_name for v in route.variants] == ["A", "B"]
        assert shadows["S"].weight == 0.25 and len(shadows["S"].instances) == 2
        assert route.data_capture.destination_s3_uri == "file:///var/capture"
        response = describe(plane)
        assert [v.variant_name for v in response.production_variants] == ["A", "B"]
        (shadow,) = response.shadow_production_variants
        assert (shadow.variant_name, shadow.current_weight, shadow.current_instance_count, shadow.desired_instance_count) == (
            "S", 1.0, 2, 2,
        )
        assert shadow.deployed_images[0].specified_image == "onnxruntime"
        summary = response.data_capture_config
        assert (summary.enable_capture, summary.capture_status, summary.current_sampling_percentage,
                summary.destination_s3_uri) == (True, "Started", 30, "file:///var/capture")

    asyncio.run(scenario())


def test_an_endpoint_whose_shadow_cannot_start_fails(tmp_path):
    async def scenario():
        provider = FakeProvider()
        provider.failing_variants = {"S"}
        plane = Plane(tmp_path, provider)
        await deploy(plane, tmp_path)
        endpoint, _ = plane.service.describe_endpoint("e")
        assert endpoint.status == "Failed" and "variant S" in endpoint.failure_reason
        assert provider.processes() == []

    asyncio.run(scenario())


def test_a_crashed_shadow_instance_is_replaced_and_a_restart_adopts_shadows(tmp_path):
    async def scenario():
        provider = FakeProvider()
        plane = Plane(tmp_path, provider)
        await deploy(plane, tmp_path)
        (lost,) = [p.spec.instance_id for p in provider.processes() if p.spec.variant_name == "S"]
        provider.crash(lost)
        await plane.reconciler.idle()
        (replacement,) = [p.spec.instance_id for p in provider.processes() if p.spec.variant_name == "S"]
        assert replacement != lost and plane.counts()["S"] == 1

        plane.store.close()
        again = Plane(tmp_path, provider)
        await again.reconciler.recover()
        await again.reconciler.idle()
        assert again.status() == "InService" and again.counts() == {"A": 1, "B": 1, "S": 1}
        _, shadows = shadow_routes(again)
        assert [i.instance_id for i in shadows["S"].instances] == [replacement]  # adopted, not restarted
        assert again.store.get_endpoint("e").variant("S").shadow

    asyncio.run(scenario())


def test_a_config_without_capture_has_no_capture_summary_and_a_disabled_one_is_stopped(tmp_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await deploy(plane, tmp_path, capture=None, shadows=())
        assert not describe(plane).HasField("data_capture_config")
        assert not plane.routes.current.endpoints[0].HasField("data_capture")
        plane.service.create_endpoint_config("off", [variant("A")], {"enable_capture": False, "initial_sampling_percentage": 5}, {})
        plane.service.create_endpoint("e2", "off", {})
        await plane.reconciler.idle()
        summary = describe(plane, "e2").data_capture_config
        assert (summary.enable_capture, summary.capture_status, summary.current_sampling_percentage) == (False, "Stopped", 5)

    asyncio.run(scenario())


# ---------------------------------------------------------------- weights


def test_an_operator_can_change_a_shadows_sampling_and_count(tmp_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await deploy(plane, tmp_path)
        before = plane.routes.current.version
        plane.service.update_weights_and_capacities("e", [WeightAndCapacity("S", desired_weight=2.0, desired_instance_count=2)])
        _, shadows = shadow_routes(plane)
        assert shadows["S"].weight == 0.5 and plane.routes.current.version > before
        await plane.reconciler.idle()
        assert plane.status() == "InService" and plane.counts()["S"] == 2
        # the production weights did not change: nothing new in the history
        assert [c.source for c in plane.store.weight_changes("e")] == ["create"]
        plane.service.update_weights_and_capacities("e", [WeightAndCapacity("A", desired_weight=4.0)])
        await plane.reconciler.idle()
        _, shadows = shadow_routes(plane)
        assert shadows["S"].weight == pytest.approx(2.0 / 7.0)
        assert [(c.source, c.weights) for c in plane.store.weight_changes("e")] == [
            ("create", {"A": 1.0, "B": 3.0}), ("operator", {"A": 4.0, "B": 3.0}),
        ]
        with pytest.raises(ValidationError, match="greater than 0"):  # the shadow's weight does not count
            plane.service.update_weights_and_capacities(
                "e", [WeightAndCapacity("A", desired_weight=0.0), WeightAndCapacity("B", desired_weight=0.0)]
            )

    asyncio.run(scenario())


def test_automatic_weights_are_routed_recorded_and_described(tmp_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        plane.service._clock = clock = Clock()
        await deploy(plane, tmp_path)
        before = plane.routes.current.version
        for step in range(25):
            clock.now += 1
            endpoint = plane.service.apply_automatic_weights("e", {"A": 1.0 + step}, "bandit", f"step {step}")
        assert endpoint.status == "InService"  # no Updating step
        assert plane.status() == "InService"
        (route,) = plane.routes.current.endpoints
        assert plane.routes.current.version > before
        assert [(v.variant_name, v.weight) for v in route.variants] == [("A", 25.0), ("B", 3.0)]
        state = plane.store.get_endpoint("e").variant("A")
        assert (state.desired_weight, state.current_weight) == (25.0, 25.0)
        changes = describe(plane).automatic_weight_changes
        assert len(changes) == 20
        assert [c.reason for c in changes[:2]] == ["step 24", "step 23"]  # newest first
        assert changes[0].source == "bandit" and changes[0].time.ToSeconds() == 1025
        assert {w.variant_name: w.weight for w in changes[0].weights} == {"A": 25.0, "B": 3.0}
        assert len(plane.store.weight_changes("e")) == 26  # create + every automatic change

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "weights, source, message",
    [
        ({"S": 1.0}, "bandit", "only name production variants"),
        ({"Z": 1.0}, "bandit", "only name production variants"),
        ({"A": -1.0}, "bandit", "DesiredWeight of variant 'A' must be a finite number >= 0"),
        ({"A": float("nan")}, "bandit", "DesiredWeight of variant 'A'"),
        ({"A": 0.0, "B": 0.0}, "bandit", "greater than 0"),
        ({}, "bandit", "at least 1 variant"),
        ({"A": 1.0}, "operator", "reserved"),
        ({"A": 1.0}, "", "source of an automatic weight change"),
    ],
)
def test_bad_automatic_weights_are_refused(tmp_path, weights, source, message):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await deploy(plane, tmp_path)
        with pytest.raises(ValidationError, match=message):
            plane.service.apply_automatic_weights("e", weights, source, "why")
        assert plane.store.get_endpoint("e").production_weights() == {"A": 1.0, "B": 3.0}

    asyncio.run(scenario())


def test_automatic_weights_wait_for_an_endpoint_in_service_without_an_update(tmp_path):
    async def scenario():
        provider = FakeProvider()
        provider.hanging_variants = {"B"}
        plane = plane_with_updates(tmp_path, provider)
        await plane.service.create_model("m", "", str(write_model(tmp_path / "m.onnx")), {}, {})
        plane.service.create_endpoint_config("c", [variant("A"), variant("B")], None, {})
        plane.service.create_endpoint("e", "c", {})
        await asyncio.sleep(0.01)
        with pytest.raises(ValidationError, match="it is Creating, not InService"):
            plane.service.apply_automatic_weights("e", {"A": 2.0}, "bandit", "too early")
        await plane.reconciler.shutdown(0)

    asyncio.run(scenario())


# ---------------------------------------------------------------- updates


def test_an_update_swaps_shadows_and_capture_at_the_switch_and_records_the_traffic_moves(tmp_path):
    async def scenario():
        plane = plane_with_updates(tmp_path)
        await deploy(plane, tmp_path)
        plane.service.create_endpoint_config(
            "new", [variant("A", 1.0), variant("C", 1.0)], None, {}, [variant("T", weight=0.5)]
        )
        plane.clock.now += 10
        plane.service.update_endpoint("e", "new", deployment_config={"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}}})
        await plane.service.deployments.finished["e"].wait()
        await plane.reconciler.idle()
        endpoint = plane.store.get_endpoint("e")
        assert endpoint.status == "InService" and endpoint.config_name == "new"
        assert [(v.variant_name, v.shadow) for v in endpoint.variants] == [("A", False), ("C", False), ("T", True)]
        route, shadows = shadow_routes(plane)
        assert list(shadows) == ["T"] and shadows["T"].weight == 0.25 and len(shadows["T"].instances) == 1
        assert not route.HasField("data_capture")  # the new config has none, and nothing was retained
        assert {p.spec.variant_name for p in plane.provider.processes()} == {"A", "C", "T"}
        history = [(c.source, c.weights) for c in plane.store.weight_changes("e")]
        assert history[0] == ("create", {"A": 1.0, "B": 3.0})
        assert history[-1][0] == "deployment"
        assert history[-1][1] == pytest.approx({"A": 0.5, "B": 0.0, "C": 0.5})

    asyncio.run(scenario())


def test_each_traffic_move_of_a_canary_and_its_rollback_is_in_the_history(tmp_path):
    async def scenario():
        plane = plane_with_updates(tmp_path, alarm_state=lambda name: alarm.state(name))
        plane.service.alarms = alarm = Alarm(plane.clock)
        await deploy(plane, tmp_path)
        plane.service.create_endpoint_config("new", [variant("A", 1.0), variant("C", 1.0)], None, {})
        alarm.fires_at = plane.clock.now + 30  # during the canary's bake
        plane.service.update_endpoint("e", "new", deployment_config={
            "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
                "Type": "CANARY", "WaitIntervalInSeconds": 600, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50}}},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "errors"}]},
        })
        await plane.service.deployments.finished["e"].wait()
        endpoint = plane.store.get_endpoint("e")
        assert endpoint.config_name == "c" and "alarm errors went into ALARM" in endpoint.failure_reason
        history = plane.store.weight_changes("e")
        assert [c.source for c in history] == ["create", "deployment", "deployment"]
        assert history[1].weights == pytest.approx({"A": 0.125 + 0.25, "B": 0.375, "C": 0.25})
        assert history[2].weights == {"A": 1.0, "B": 3.0}  # all traffic back on blue
        assert "50% of traffic on the new fleet" in history[1].reason

    asyncio.run(scenario())


def test_retain_all_variant_properties_keeps_the_data_capture_unless_excluded(tmp_path):
    async def scenario():
        plane = plane_with_updates(tmp_path)
        await deploy(plane, tmp_path)
        plane.service.create_endpoint_config("new", [variant("A"), variant("B")], None, {}, [variant("S", weight=3.0)])
        plane.service.update_endpoint("e", "new", retain_all_variant_properties=True)
        await plane.service.deployments.finished["e"].wait()
        endpoint = plane.store.get_endpoint("e")
        assert endpoint.config_name == "new" and endpoint.data_capture["destination_s3_uri"] == "file:///var/capture"
        assert endpoint.variant("S").desired_weight == 1.0  # retained too, as a shadow's weight
        assert describe(plane).data_capture_config.capture_status == "Started"
        assert plane.routes.current.endpoints[0].data_capture.initial_sampling_percentage == 30

        plane.service.create_endpoint_config("newer", [variant("A")], None, {})
        plane.service.update_endpoint("e", "newer", retain_all_variant_properties=True,
                                      exclude_retained=["DataCaptureConfig"])
        await plane.service.deployments.finished["e"].wait()
        endpoint = plane.store.get_endpoint("e")
        assert endpoint.config_name == "newer" and endpoint.data_capture is None
        assert not describe(plane).HasField("data_capture_config")
        assert plane.store.get_endpoint("e").shadow_variants == []

    asyncio.run(scenario())


def test_a_rolling_update_starts_new_shadows_first_and_keeps_old_ones_until_the_last_batch(tmp_path):
    async def scenario():
        plane = plane_with_updates(tmp_path)
        await deploy(plane, tmp_path, shadows=[variant("S", count=2)])
        plane.service.update_weights_and_capacities("e", [WeightAndCapacity("A", desired_instance_count=2)])
        await plane.reconciler.idle()
        plane.service.create_endpoint_config("new", [variant("A", count=2), variant("B")], None, {}, [variant("T")])
        seen = []
        original = plane.service.deployments._stop

        async def stop(name, records):
            seen.append((sorted(r.variant_name for r in records),
                         sorted(r.variant_name for r in plane.store.list_instances(name) if r.config_name == "new")))
            await original(name, records)

        plane.service.deployments._stop = stop
        plane.service.update_endpoint("e", "new", deployment_config={"RollingUpdatePolicy": {
            "MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1}, "WaitIntervalInSeconds": 0}})
        await plane.service.deployments.finished["e"].wait()
        assert plane.store.get_endpoint("e").config_name == "new"
        stops = [(victims, green) for victims, green in seen if victims]
        assert stops[0] == (["A"], ["A", "T"])  # the new shadow started with the first batch
        assert all("S" not in victims for victims, _ in stops[:-1])  # the old shadow stays to the last batch
        assert stops[-1][0].count("S") == 2

    asyncio.run(scenario())


# ---------------------------------------------------------------- the store


def test_the_weight_history_answers_windows_and_the_weights_in_effect(tmp_path):
    store = SqliteStore(tmp_path / "mve.db")
    for time, source, weights in [(10.0, "create", {"A": 1.0, "B": 1.0}), (20.0, "bandit", {"A": 3.0, "B": 1.0}),
                                  (20.0, "operator", {"A": 1.0, "B": 0.0}), (30.0, "bandit", {"A": 1.0, "B": 1.0})]:
        store.record_weight_change("e", time, source, weights, f"at {time}")
    store.record_weight_change("other", 15.0, "create", {"X": 1.0})
    assert [c.time for c in store.weight_changes("e")] == [10.0, 20.0, 20.0, 30.0]
    assert [c.source for c in store.weight_changes("e", since=20.0, until=30.0)] == ["bandit", "operator"]
    assert [c.time for c in store.weight_changes("e", limit=2)] == [10.0, 20.0]
    assert [c.time for c in store.weight_changes("e", automatic_only=True, newest_first=True)] == [30.0, 20.0]
    assert store.weights_in_effect("e", at=25.0).weights == {"A": 1.0, "B": 0.0}  # same time: the later one
    assert store.weights_in_effect("e", at=5.0) is None
    assert store.weights_in_effect("e").time == 30.0
    store.close()


def test_deleting_an_endpoint_deletes_its_weight_history(tmp_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await deploy(plane, tmp_path)
        with pytest.raises(ResourceInUse):
            plane.service.delete_model("m")  # a shadow's model is in use too
        plane.service.delete_endpoint("e")
        await plane.reconciler.idle()
        assert plane.store.get_endpoint("e") is None and plane.store.weight_changes("e") == []

    asyncio.run(scenario())


def test_a_store_written_before_shadow_variants_still_loads(tmp_path):
    path = tmp_path / "mve.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE endpoint_configs (name TEXT PRIMARY KEY, created REAL NOT NULL, body TEXT NOT NULL);
        CREATE TABLE endpoints (
            name TEXT PRIMARY KEY, arn TEXT NOT NULL, config_name TEXT NOT NULL, status TEXT NOT NULL,
            failure_reason TEXT NOT NULL, created REAL NOT NULL, modified REAL NOT NULL, tags TEXT NOT NULL);
        CREATE TABLE variants (
            endpoint_name TEXT NOT NULL, position INTEGER NOT NULL, variant_name TEXT NOT NULL,
            desired_weight REAL NOT NULL, current_weight REAL NOT NULL, desired_instance_count INTEGER NOT NULL,
            status TEXT NOT NULL, status_message TEXT NOT NULL, status_since REAL NOT NULL,
            PRIMARY KEY (endpoint_name, variant_name));
        INSERT INTO endpoints VALUES ('e', 'arn', 'c', 'InService', '', 1.0, 1.0, '{}');
        INSERT INTO variants VALUES ('e', 0, 'A', 1.0, 1.0, 1, '', '', 0.0);
    """)
    body = ('{"name": "c", "arn": "arn", "production_variants": [{"variant_name": "A", "model_name": "m", '
            '"initial_instance_count": 1, "instance_type": "ml.cpu.small", "initial_variant_weight": 1.0, '
            '"routing_strategy": "RANDOM", "startup_health_check_timeout_s": 600, "batching": {"max_batch_size": 0, '
            '"max_delay_us": 0, "max_batches_in_flight_per_instance": 1, "max_queue_rows": 0}}], '
            '"data_capture": {}, "creation_time": 1.0, "tags": {}}')
    db.execute("INSERT INTO endpoint_configs VALUES ('c', 1.0, ?)", (body,))
    db.commit()
    db.close()
    store = SqliteStore(path)
    config = store.get_config("c")
    assert config.shadow_variants == [] and config.variant("A").model_name == "m"
    endpoint = store.get_endpoint("e")
    assert endpoint.variant("A").shadow is False and endpoint.data_capture is None
    endpoint.variants[0].current_weight = 2.0
    store.save_endpoint(endpoint)
    assert store.get_endpoint("e").production_weights() == {"A": 2.0}
    store.close()
