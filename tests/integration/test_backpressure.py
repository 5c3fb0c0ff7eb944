"""Overload: a real proxy in front of one slow model-server instance, driven far past its capacity.

With ``--max-in-flight-per-instance 2`` the requests beyond the bound are refused at once with
ModelNotReadyException instead of queueing: the refusals are fast, the accepted requests keep a
bounded latency, and the proxy's memory stays bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from procs import wait_until
from tiny_models import build_model, npy

import mve
from mve.sdk import ClientError

pytestmark = pytest.mark.integration

BODY = npy(np.ones((1, 2), np.float32))


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture(scope="module")
def control_plane(module_services, tmp_path_factory):
    """One control plane for both tests, with the "slow" model; each test deploys its own endpoint
    and starts its own proxy."""
    root = tmp_path_factory.mktemp("backpressure")
    build_model(root / "slow.onnx", "slow")
    cp = module_services(["control-plane", "--data-dir", str(root / "cp"), "--port", "0"])
    with mve.client("sagemaker", address=cp.address) as sm:
        sm.create_model(ModelName="slow", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(root / "slow.onnx")})
    return cp


def deploy(cp, name: str, instances: int) -> None:
    """Endpoint `name`: the slow model on `instances` instances, InService."""
    with mve.client("sagemaker", address=cp.address) as sm:
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": "slow", "InitialInstanceCount": instances,
            "InstanceType": "ml.cpu.small", "InitialVariantWeight": 1.0}])
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})


def test_requests_past_an_instances_bound_are_refused_fast_and_the_rest_stay_bounded(control_plane, services):
    endpoint = "slow"
    cp = control_plane
    proxy = services(["proxy", "--control-plane", cp.address, "--port", "0", "--max-in-flight-per-instance", "2"])
    deploy(cp, endpoint, 1)
    runtime = mve.client("sagemaker-runtime", address=proxy.address)

    def invoke() -> None:
        runtime.invoke_endpoint(EndpointName=endpoint, Body=BODY, ContentType="application/x-npy")

    wait_until(lambda: _answers(invoke), timeout=20, what="the proxy serves the endpoint")
    alone = []
    for _ in range(20):
        started = time.perf_counter()
        invoke()
        alone.append(time.perf_counter() - started)
    one = float(np.median(alone))  # one request at a time: the instance's service time, and then some

    accepted, refused, other = [], [], []
    lock = threading.Lock()
    stop_at = time.monotonic() + 4.0
    rss = []

    def client() -> None:
        mine = mve.client("sagemaker-runtime", address=proxy.address)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                mine.invoke_endpoint(EndpointName=endpoint, Body=BODY, ContentType="application/x-npy")
                kind = accepted
            except ClientError as error:
                kind = refused if error.response["Error"]["Code"] == "ModelNotReadyException" else other
                if kind is other:
                    print(error)
            with lock:
                kind.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(24)]  # 12x the 2 requests an instance may hold
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        rss.append(rss_mb(proxy.process.pid))
        time.sleep(0.2)
    for thread in threads:
        thread.join()
    p99_accepted, p99_refused = np.percentile(accepted, 99), np.percentile(refused, 99)
    print(f"\noverload: one request alone {one * 1000:.1f} ms; {len(accepted)} accepted (p50 "
          f"{np.median(accepted) * 1000:.1f} ms, p99 {p99_accepted * 1000:.1f} ms), {len(refused)} refused (p50 "
          f"{np.median(refused) * 1000:.1f} ms, p99 {p99_refused * 1000:.1f} ms), {len(other)} other errors; "
          f"proxy RSS max {max(rss):.0f} MB")
    assert other == []
    assert len(refused) > len(accepted)  # far past capacity: most are turned away...
    # ...at once: faster than an accepted request (the 24 client threads share one Python process,
    # so the client side sets the floor of both).
    assert np.median(refused) < np.median(accepted) and p99_refused < 0.5
    assert p99_accepted < 10 * one + 0.2  # the admitted wait behind at most 2 others, not behind everyone
    assert max(rss) < 200


def _answers(invoke) -> bool:
    try:
        invoke()
        return True
    except ClientError:
        return False


def test_calls_in_flight_on_a_killed_instance_are_retried_on_its_sibling(control_plane, services):
    import os
    import signal

    endpoint = "slow-pair"
    cp = control_plane
    proxy = services(["proxy", "--control-plane", cp.address, "--port", "0"])
    deploy(cp, endpoint, 2)
    runtime = mve.client("sagemaker-runtime", address=proxy.address)
    wait_until(lambda: _answers(lambda: runtime.invoke_endpoint(EndpointName=endpoint, Body=BODY, ContentType="application/x-npy")),
               timeout=20, what="the proxy serves the endpoint")
    pids = [int(line.split("pid=")[1].split()[0]) for line in cp.output
            if "event=instance_ready" in line and f"endpoint={endpoint} " in line]
    assert len(pids) == 2

    ok, failed = [0], []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        mine = mve.client("sagemaker-runtime", address=proxy.address)
        while not stop.is_set():
            try:
                mine.invoke_endpoint(EndpointName=endpoint, Body=BODY, ContentType="application/x-npy")
                with lock:
                    ok[0] += 1
            except ClientError as error:
                with lock:
                    failed.append(f"{error.response['Error']['Code']}: {error.response['Error']['Message']}")

    threads = [threading.Thread(target=client) for _ in range(8)]  # both instances always have calls in flight
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    print(f"\nSIGKILL of one of two instances under load: {ok[0]} answered, {len(failed)} failed {failed[:3]}")
    assert ok[0] > 0 and failed == []
