"""``mve proxy --workers 2`` with real processes: a control plane, one endpoint on a tiny model, and a
proxy of two workers on one port (SO_REUSEPORT) under a parent.

The kernel hands each new connection to one worker, so the test opens many gRPC channels, each on
its own connection (``grpc.use_local_subchannel_pool``: without it the channels of one process
share one connection), and tells which worker answered a channel by the invocations counter of
each worker's own Prometheus port. The tests run in order on one proxy: the ready line, both
workers serving, a worker killed and restarted, and last SIGTERM to the parent."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import urllib.request

import grpc
import numpy as np
import pytest
from procs import run_mve, wait_until
from tiny_models import build_model, npy

import mve
from mve._proto import runtime_pb2, runtime_pb2_grpc

pytestmark = pytest.mark.integration

EP = "spread"
CHANNELS = 16
REQUEST = runtime_pb2.InvokeEndpointRequest(
    endpoint_name=EP, body=npy(np.ones((1, 2), np.float32)), content_type="application/x-npy"
)


@pytest.fixture(scope="module")
def world(module_services, tmp_path_factory):
    directory = tmp_path_factory.mktemp("proxy-workers")
    build_model(directory / "plus.onnx", "plus")
    cp = module_services(["control-plane", "--data-dir", str(directory / "cp"), "--port", "0"])
    sm = mve.client("sagemaker", address=cp.address)
    sm.create_model(
        ModelName="plus", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(directory / "plus.onnx")}
    )
    sm.create_endpoint_config(EndpointConfigName=EP, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "plus", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
        "InitialVariantWeight": 1.0}])
    sm.create_endpoint(EndpointName=EP, EndpointConfigName=EP)
    # The proxy starts while the model server does.
    proxy = module_services(["proxy", "--control-plane", cp.address, "--port", "0", "--workers", "2"])
    sm.get_waiter("endpoint_in_service").wait(EndpointName=EP, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    for worker in proxy.ready["workers"]:
        wait_until(lambda: routes(worker["metrics_address"]), timeout=15, what=f"worker {worker['worker']}'s table")
    return {"cp": cp, "proxy": proxy, "metrics": [w["metrics_address"] for w in proxy.ready["workers"]]}


def metric(address: str, name: str) -> float:
    """The value of `name` for the endpoint in a worker's Prometheus text (0 when absent)."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    match = re.search(rf'^{name}{{endpoint="{EP}",variant="AllTraffic"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def routes(address: str) -> bool:
    """Whether the worker's routing table has the endpoint with an instance."""
    return metric(address, "mve_proxy_variant_instances") >= 1


def served(address: str) -> float:
    return metric(address, "mve_invocations_total")


def channels(address: str, n: int = CHANNELS) -> list[grpc.Channel]:
    """`n` channels, each on a connection of its own."""
    return [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(n)]


def call(channel: grpc.Channel) -> None:
    reply = runtime_pb2_grpc.EndpointRuntimeStub(channel).InvokeEndpoint(REQUEST, timeout=5)
    np.testing.assert_array_equal(np.load(io.BytesIO(reply.body)), np.full((1, 2), 2.0, np.float32))


def which_worker(channel: grpc.Channel, metrics: list[str]) -> int:
    """Call once on `channel` and say which worker's counter moved."""
    before = [served(address) for address in metrics]
    call(channel)
    moved = [i for i, address in enumerate(metrics) if served(address) > before[i]]
    assert len(moved) == 1, moved
    return moved[0]


def test_the_ready_line_lists_every_worker(world):
    ready = world["proxy"].ready
    workers = ready["workers"]
    assert ready["service"] == "proxy" and ready["pid"] == world["proxy"].process.pid
    assert [w["worker"] for w in workers] == [0, 1]
    assert len({w["pid"] for w in workers} | {ready["pid"]}) == 3
    assert [w["proxy_id"] for w in workers] == [f"proxy-{socket.gethostname()}-{ready['pid']}-w{i}" for i in (0, 1)]
    assert len(set(world["metrics"])) == 2 and ready["metrics_address"] == world["metrics"][0]
    assert ready["http_address"] and ready["address"] != ready["http_address"]
    assert sum("event=proxy_started" in line for line in world["proxy"].output) == 2


def test_separate_connections_are_spread_over_both_workers_and_all_answered(world):
    opened = channels(world["proxy"].address)
    try:
        before = sum(served(address) for address in world["metrics"])
        owners = [which_worker(channel, world["metrics"]) for channel in opened]
        for channel in opened:
            for _ in range(3):
                call(channel)
        assert sum(served(address) for address in world["metrics"]) - before == 4 * CHANNELS
        # Each connection stays on its worker: the chance that 16 all land on one is 2 in 65,536.
        assert set(owners) == {0, 1}, owners
        for channel, owner in zip(opened, owners):
            assert which_worker(channel, world["metrics"]) == owner
    finally:
        for channel in opened:
            channel.close()


def test_a_killed_worker_is_restarted_and_only_its_connections_fail(world):
    proxy, metrics = world["proxy"], world["metrics"]
    opened = channels(proxy.address)
    try:
        owners = [which_worker(channel, metrics) for channel in opened]
        assert set(owners) == {0, 1}, owners
        victim = proxy.ready["workers"][1]
        os.kill(victim["pid"], signal.SIGKILL)
        failed = {0: 0, 1: 0}
        for channel, owner in zip(opened, owners):
            for _ in range(3):
                try:
                    call(channel)
                except grpc.RpcError:
                    failed[owner] += 1
        print(f"\nworker 1 killed: calls failed on worker 0's connections {failed[0]}, on worker 1's {failed[1]} "
              f"(of {3 * owners.count(1)})")
        assert failed[0] == 0, failed  # the other worker's connections never noticed

        restarted = wait_until(lambda: _ready_again(proxy.output, victim["pid"]), timeout=15, what="worker 1 restarted")
        assert restarted["metrics_address"] == victim["metrics_address"]  # the same port as before
        assert any(f"event=worker_exited worker=1 pid={victim['pid']} code=-9" in line for line in proxy.output)
        wait_until(lambda: routes(victim["metrics_address"]), timeout=15, what="the restarted worker's table")
    finally:
        for channel in opened:
            channel.close()

    fresh = channels(proxy.address)
    try:
        before = served(victim["metrics_address"])  # a new process: counted from 0
        for channel in fresh:
            for _ in range(2):
                call(channel)  # no failure on new connections
        assert served(victim["metrics_address"]) > before  # the restarted worker takes connections again
    finally:
        for channel in fresh:
            channel.close()


def _ready_again(output: list[str], old_pid: int) -> dict | None:
    for line in list(output):
        found = re.search(r"event=worker_ready worker=1 pid=(\d+) \S+ metrics_address=(\S+) restarts=1", line)
        if found and int(found.group(1)) != old_pid:
            return {"pid": int(found.group(1)), "metrics_address": found.group(2)}
    return None


def test_a_plain_proxy_cannot_take_the_workers_port(world):
    """Only the workers bind with SO_REUSEPORT: another proxy on their port is refused, not let in."""
    port = world["proxy"].address.rsplit(":", 1)[1]
    alone = run_mve(["proxy", "--control-plane", world["cp"].address, "--port", port], timeout=30)
    assert alone.returncode == 1 and f"cannot bind 127.0.0.1:{port}" in alone.stderr
    group = run_mve(["proxy", "--control-plane", world["cp"].address, "--port", port, "--workers", "2"], timeout=30)
    assert group.returncode == 1 and f"cannot bind --port 127.0.0.1:{port}: Address already in use" in group.stderr


def test_sigterm_to_the_parent_stops_every_worker_and_exits_0(world):
    proxy = world["proxy"]
    pids = [int(p) for p in re.findall(r"event=worker_ready worker=\d+ pid=(\d+)", "".join(proxy.output))]
    assert proxy.stop(timeout=20) == 0
    assert sum("event=proxy_stopped" in line for line in proxy.output) >= 2
    assert any("event=workers_stopped clean=True" in line for line in proxy.output)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), pid
