"""UpdateEndpoint under load: a real control plane, proxy and model servers, and client threads
that keep invoking the endpoint while it moves to another config.

Each test counts every request: none may fail because of the update. The models (built here)
take x: FP32 [N, 2]. "plus" answers x + 1, "minus" answers x - 1 (so an answer tells which
fleet served it) and "broken" fails inside ONNX Runtime for the one-row requests the load sends
(tests/tiny_models.py): its errors are its own, counted apart, and must stay within the
canary's share until the alarm rolls the update back.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter

import numpy as np
import pytest

import mve
from mve.sdk import ClientError
from procs import wait_until
from tiny_models import build_model, npy

pytestmark = pytest.mark.integration

EP = "upd"
ROW = np.array([[1.0, 2.0]], np.float32)
FAST = {"Delay": 0.1, "MaxAttempts": 1200}


class Load:
    """Client threads invoking the endpoint until stopped (bounded by count and time)."""

    def __init__(self, address: str, threads: int = 4, limit: int = 20_000, limit_s: float = 120.0, at_least: int = 0):
        self.address = address
        self.answers: Counter = Counter()  # "plus" / "minus" by the answer's value
        self.broken_errors = 0
        self.failures: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._limit, self._deadline = limit, time.monotonic() + limit_s
        self._at_least = at_least
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.by_time: list[tuple[float, str]] = []

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> None:
        """Stop once at least `at_least` requests were sent (bounded by the time limit)."""
        while self.sent < self._at_least and time.monotonic() < self._deadline and any(t.is_alive() for t in self._threads):
            time.sleep(0.05)
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        runtime = mve.client("sagemaker-runtime", address=self.address)
        body = npy(ROW)
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if self.sent >= self._limit:
                    return
                self.sent += 1
            try:
                response = runtime.invoke_endpoint(EndpointName=EP, Body=body, ContentType="application/x-npy")
            except ClientError as error:
                code, message = error.response["Error"]["Code"], error.response["Error"]["Message"]
                with self._lock:
                    if code == "ModelError" and "model broken" in message:
                        self.broken_errors += 1
                        self.by_time.append((time.monotonic(), "broken"))
                    else:
                        self.failures.append(f"{code}: {message}")
                continue
            value = np.load(io.BytesIO(response["Body"].read()))
            kind = "plus" if value.flat[0] == 2.0 else "minus" if value.flat[0] == 0.0 else f"? {value}"
            with self._lock:
                self.answers[kind] += 1
                self.by_time.append((time.monotonic(), kind))


@pytest.fixture(scope="module")
def processes(module_services, tmp_path_factory):
    """One control plane and one proxy for the module's tests (each test gets its endpoint `EP` afresh)."""
    root = tmp_path_factory.mktemp("updates")
    for kind in ("plus", "minus", "broken"):
        build_model(root / f"{kind}.onnx", kind)
    cp = module_services(["control-plane", "--data-dir", str(root / "cp"), "--port", "0", "--alarm-interval", "0.2",
                          "--drain-seconds", "0.5"])
    proxy = module_services(["proxy", "--control-plane", cp.address, "--port", "0", "--stats-interval", "0.2"])
    with mve.client("sagemaker", address=cp.address) as sm:
        for kind in ("plus", "minus", "broken"):
            sm.create_model(ModelName=kind, PrimaryContainer={"Image": "onnxruntime",
                                                              "ModelDataUrl": str(root / f"{kind}.onnx")})
    return cp, proxy


@pytest.fixture
def mesh(processes):
    """The shared control plane and proxy with the three models and nothing else: the endpoint, its
    configs and alarms a test made are deleted after it (the endpoint waited out until it is gone)."""
    cp, proxy = processes
    sm = mve.client("sagemaker", address=cp.address)
    cw = mve.client("cloudwatch", address=cp.address)

    def config(name: str, model: str, count: int = 1, variant: str = "AllTraffic", instance_type: str = "ml.cpu.small"):
        sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[{"VariantName": variant, "ModelName": model, "InitialInstanceCount": count,
                                 "InstanceType": instance_type, "InitialVariantWeight": 1.0}],
        )

    def serve(model: str, count: int = 1) -> None:
        with contextlib.suppress(ClientError):  # the config of an earlier serve() in the same test
            config(f"{model}-{count}", model, count)
        sm.create_endpoint(EndpointName=EP, EndpointConfigName=f"{model}-{count}")
        sm.get_waiter("endpoint_in_service").wait(EndpointName=EP, WaiterConfig=FAST)
        runtime = mve.client("sagemaker-runtime", address=proxy.address)
        deadline = time.monotonic() + 20
        while True:  # the proxy has the table a moment after InService
            try:
                runtime.invoke_endpoint(EndpointName=EP, Body=npy(ROW), ContentType="application/x-npy")
                return
            except ClientError:
                assert time.monotonic() < deadline
                time.sleep(0.05)

    yield sm, cw, proxy, config, serve
    with contextlib.suppress(ClientError):  # a test may have deleted it already
        sm.delete_endpoint(EndpointName=EP)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=EP, WaiterConfig=FAST)
    for made in sm.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]:
        sm.delete_endpoint_config(EndpointConfigName=made["EndpointConfigName"])
    alarms = [alarm["AlarmName"] for alarm in cw.describe_alarms()["MetricAlarms"]]
    if alarms:
        cw.delete_alarms(AlarmNames=alarms)
    cw.close()
    sm.close()


def update_and_wait(sm, config_name: str, **kwargs) -> tuple[float, dict, list[str]]:
    """UpdateEndpoint, then poll DescribeEndpoint until it settles; (seconds, last answer, phases seen)."""
    started = time.monotonic()
    sm.update_endpoint(EndpointName=EP, EndpointConfigName=config_name, **kwargs)
    phases = []
    while True:
        described = sm.describe_endpoint(EndpointName=EP)
        pending = described.get("PendingDeploymentSummary")
        if pending:
            statuses = pending["ProductionVariants"][0].get("VariantStatus") or [{}]
            phase = statuses[0].get("Status")
            if phase and (not phases or phases[-1] != phase):
                phases.append(phase)
        if described["EndpointStatus"] in ("InService", "Failed", "UpdateRollbackFailed") and not pending:
            return time.monotonic() - started, described, phases
        assert time.monotonic() - started < 120, described
        time.sleep(0.05)


def report(name: str, seconds: float, load: Load, phases) -> None:
    print(f"\n{name}: {seconds:.2f} s, {load.sent} requests, answers {dict(load.answers)}, "
          f"broken-model errors {load.broken_errors}, other failures {len(load.failures)}, phases {phases}")


def test_an_update_without_deployment_config_moves_all_traffic_once_green_is_healthy(mesh):
    sm, _, proxy, config, serve = mesh
    serve("plus")
    config("minus-1", "minus")
    with Load(proxy.address, at_least=2000) as load:
        time.sleep(0.5)
        seconds, described, phases = update_and_wait(sm, "minus-1")
        time.sleep(0.5)
    report("all at once", seconds, load, phases)
    assert load.failures == []
    assert described["EndpointStatus"] == "InService" and described["EndpointConfigName"] == "minus-1"
    assert "FailureReason" not in described or not described["FailureReason"]
    assert load.answers["plus"] > 0 and load.answers["minus"] > 0 and set(load.answers) == {"plus", "minus"}
    # After the switch only green answers.
    last = [kind for _, kind in load.by_time[-20:]]
    assert set(last) == {"minus"}
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1


def test_a_canary_bakes_on_part_of_the_traffic_then_moves_the_rest(mesh):
    sm, _, proxy, config, serve = mesh
    serve("plus")
    config("minus-1", "minus")
    policy = {"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 3,
                                        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25}},
        "TerminationWaitInSeconds": 1}}
    with Load(proxy.address, at_least=2000) as load:
        seconds, described, phases = update_and_wait(sm, "minus-1", DeploymentConfig=policy)
    report("canary 25%", seconds, load, phases)
    assert load.failures == []
    assert described["EndpointConfigName"] == "minus-1" and described["EndpointStatus"] == "InService"
    assert phases[:2] == ["Creating", "Baking"]
    assert seconds >= 3 + 3 + 1  # two bakes of 3 s, then the termination wait
    # During the canary's bake both fleets answered, green about a quarter.
    shift = next(t for t, kind in load.by_time if kind == "minus")
    window = [kind for t, kind in load.by_time if shift + 0.5 <= t <= shift + 2.5]
    share = window.count("minus") / len(window)
    assert 0.1 < share < 0.45, share
    assert sm.describe_endpoint(EndpointName=EP)["LastDeploymentConfig"] == policy


def test_a_linear_update_moves_traffic_in_steps(mesh):
    sm, _, proxy, config, serve = mesh
    serve("plus", 2)
    config("minus-2", "minus", 2)
    policy = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
        "Type": "LINEAR", "WaitIntervalInSeconds": 2, "LinearStepSize": {"Type": "INSTANCE_COUNT", "Value": 1}}}}
    with Load(proxy.address, at_least=2000) as load:
        seconds, described, phases = update_and_wait(sm, "minus-2", DeploymentConfig=policy)
    report("linear 1 of 2 instances", seconds, load, phases)
    assert load.failures == []
    assert described["EndpointConfigName"] == "minus-2"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert seconds >= 4


def test_a_rolling_update_replaces_capacity_in_batches(mesh):
    sm, _, proxy, config, serve = mesh
    serve("plus", 2)
    config("minus-2", "minus", 2)
    policy = {"RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1},
                                      "WaitIntervalInSeconds": 1}}
    with Load(proxy.address, at_least=2000) as load:
        seconds, described, phases = update_and_wait(sm, "minus-2", DeploymentConfig=policy)
    report("rolling, batches of 1", seconds, load, phases)
    assert load.failures == []
    assert described["EndpointConfigName"] == "minus-2" and described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert load.answers["plus"] > 0 and load.answers["minus"] > 0


def test_a_broken_model_is_rolled_back_by_its_alarm(mesh):
    sm, cw, proxy, config, serve = mesh
    serve("plus")
    config("broken-1", "broken")
    cw.put_metric_alarm(
        AlarmName="upd-5xx", Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors",
        Dimensions=[{"Name": "EndpointName", "Value": EP}, {"Name": "VariantName", "Value": "AllTraffic"}],
        Statistic="Sum", Period=1, EvaluationPeriods=1, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching",
    )
    policy = {
        "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
            "Type": "CANARY", "WaitIntervalInSeconds": 60, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}}},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "upd-5xx"}]},
    }
    with Load(proxy.address, at_least=2000) as load:
        time.sleep(0.5)
        seconds, described, phases = update_and_wait(sm, "broken-1", DeploymentConfig=policy)
        time.sleep(0.5)
    report("broken canary 10%, rolled back by alarm", seconds, load, phases)
    assert load.failures == []
    assert described["EndpointStatus"] == "InService" and described["EndpointConfigName"] == "plus-1"
    assert "alarm upd-5xx" in described["FailureReason"]
    assert seconds < 30  # rolled back long before the 60 s bake would have ended
    assert load.broken_errors > 0
    # The broken model saw about a tenth of the traffic, and only until the alarm fired.
    first = next(t for t, kind in load.by_time if kind == "broken")
    last = max(t for t, kind in load.by_time if kind == "broken")
    during = [kind for t, kind in load.by_time if first <= t <= last]
    assert load.broken_errors / len(during) < 0.3
    assert last - first < 10
    assert set(kind for _, kind in load.by_time[-20:]) == {"plus"}


def test_one_update_at_a_time_and_a_failed_green_start_never_touches_blue(mesh, tmp_path):
    sm, _, proxy, config, serve = mesh
    serve("plus")
    config("minus-1", "minus")
    slow = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
        "Type": "CANARY", "WaitIntervalInSeconds": 30, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50}}}}
    sm.update_endpoint(EndpointName=EP, EndpointConfigName="minus-1", DeploymentConfig=slow)
    for call in (
        lambda: sm.update_endpoint(EndpointName=EP, EndpointConfigName="plus-1"),
        lambda: sm.update_endpoint_weights_and_capacities(
            EndpointName=EP, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredWeight": 2.0}]),
    ):
        with pytest.raises(ClientError) as error:
            call()
        assert error.value.response["Error"]["Code"] == "ValidationException"
        assert "update to endpoint config minus-1 is in progress" in error.value.response["Error"]["Message"]
    sm.delete_endpoint(EndpointName=EP)  # deleting during an update takes both fleets down
    sm.get_waiter("endpoint_deleted").wait(EndpointName=EP, WaiterConfig=FAST)

    # A new config whose instances cannot start (a GPU type on a machine where CUDA does not load):
    # blue keeps serving, untouched.
    serve("plus")
    config("minus-gpu", "minus", instance_type="ml.gpu.small")
    with Load(proxy.address, threads=2) as load:
        seconds, described, _ = update_and_wait(sm, "minus-gpu", DeploymentConfig={
            "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}}})
    assert load.failures == [] and set(load.answers) == {"plus"}
    assert described["EndpointStatus"] == "InService" and described["EndpointConfigName"] == "plus-1"
    assert "Update to endpoint config minus-gpu failed" in described["FailureReason"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_control_plane_crash_during_an_update_rolls_it_back_on_restart(services, tmp_path):
    for kind in ("plus", "minus"):
        build_model(tmp_path / f"{kind}.onnx", kind)
    port = _free_port()
    args = ["control-plane", "--data-dir", str(tmp_path / "cp"), "--port", str(port), "--drain-seconds", "0.5"]
    first = services(args)
    proxy = services(["proxy", "--control-plane", first.address, "--port", "0"])
    sm = mve.client("sagemaker", address=first.address)
    for kind in ("plus", "minus"):
        sm.create_model(ModelName=kind, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(tmp_path / f"{kind}.onnx")})
        sm.create_endpoint_config(EndpointConfigName=kind, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": kind, "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
            "InitialVariantWeight": 1.0}])
    sm.create_endpoint(EndpointName=EP, EndpointConfigName="plus")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=EP, WaiterConfig=FAST)
    with Load(proxy.address) as load:
        deadline = time.monotonic() + 20
        while not load.answers["plus"]:
            assert time.monotonic() < deadline, load.failures[:3]
            time.sleep(0.05)
        load.failures.clear()  # only the proxy's first moments, before it had the table
        sm.update_endpoint(EndpointName=EP, EndpointConfigName="minus", DeploymentConfig={
            "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
                "Type": "CANARY", "WaitIntervalInSeconds": 600, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50}}}})
        deadline = time.monotonic() + 30
        while load.answers["minus"] < 20:  # the canary serves
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.kill()  # SIGKILL in the middle of the bake: both fleets keep running, no owner
        time.sleep(0.5)
        second = services(args)
        sm = mve.client("sagemaker", address=second.address)
        described = sm.describe_endpoint(EndpointName=EP)
        deadline = time.monotonic() + 20
        while load.by_time[-1][1] != "plus" or any(kind == "minus" for _, kind in load.by_time[-50:]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    print(f"\ncontrol plane crash during a canary: {load.sent} requests, answers {dict(load.answers)}, "
          f"failures {len(load.failures)}")
    assert described["EndpointStatus"] == "InService" and described["EndpointConfigName"] == "plus"
    assert "control plane restarted" in described["FailureReason"]
    assert "PendingDeploymentSummary" not in described
    assert load.failures == []
    # The canary's instance was drained, then stopped by the new control plane.
    wait_until(lambda: any("instance_retired" in line and "config=minus" in line for line in second.output),
               timeout=10, what="the green instance retired")


def test_delete_endpoint_drains_requests_in_flight_and_refuses_new_ones_clearly(mesh):
    sm, _, proxy, _, serve = mesh
    serve("plus")
    with Load(proxy.address) as load:
        while load.answers["plus"] < 50:
            time.sleep(0.02)
        sm.delete_endpoint(EndpointName=EP)
        sm.get_waiter("endpoint_deleted").wait(EndpointName=EP, WaiterConfig=FAST)
        time.sleep(0.3)
    kinds = Counter(f.split(":")[0] for f in load.failures)
    print(f"\ndelete under load: {load.sent} requests, answers {dict(load.answers)}, refusals {dict(kinds)}")
    # Every request either got its answer or, once the endpoint was gone, a clear "not found".
    assert set(kinds) == {"ValidationError"}, load.failures[:3]  # SageMaker Runtime's answer for a missing endpoint
    assert all(f"Endpoint {EP} of account 000000000000 not found." in f for f in load.failures)
    assert load.failures  # the load went on past the deletion
