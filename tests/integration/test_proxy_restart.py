"""A proxy restart under load behind two proxies. The client's gRPC channel balances over both
(round_robin) and watches their grpc.health.v1 status, as a load balancer would. One proxy gets
SIGTERM: its health says NOT_SERVING for the drain period while it still serves, the client moves
away, requests in flight finish, it exits 0 and comes back on the same port. No request fails."""

from __future__ import annotations

import json
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from tiny_models import build_model, npy

import mve
from mve._proto import runtime_pb2, runtime_pb2_grpc

pytestmark = pytest.mark.integration

EP = "pair"
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_proxy_restart_behind_two_proxies_fails_no_request(services, tmp_path):
    build_model(tmp_path / "plus.onnx", "plus")
    cp = services(["control-plane", "--data-dir", str(tmp_path / "cp"), "--port", "0"])
    ports = [_free_port(), _free_port()]
    args = [["proxy", "--control-plane", cp.address, "--port", str(port), "--drain-seconds", "1"] for port in ports]
    first = services(args[0])
    services(args[1])
    sm = mve.client("sagemaker", address=cp.address)
    sm.create_model(ModelName="plus", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(tmp_path / "plus.onnx")})
    sm.create_endpoint_config(EndpointConfigName="pair", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "plus", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
        "InitialVariantWeight": 1.0}])
    sm.create_endpoint(EndpointName=EP, EndpointConfigName="pair")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=EP, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})

    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    channel = grpc.insecure_channel(target, options=[("grpc.service_config", SERVICE_CONFIG)])
    stub = runtime_pb2_grpc.EndpointRuntimeStub(channel)
    request = runtime_pb2.InvokeEndpointRequest(
        endpoint_name=EP, body=npy(np.ones((1, 2), np.float32)), content_type="application/x-npy")
    deadline = time.monotonic() + 20
    while True:  # both proxies have the table
        try:
            for _ in range(4):
                stub.InvokeEndpoint(request, timeout=5)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.1)

    ok, failed, stop = [0], [], threading.Event()
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            try:
                stub.InvokeEndpoint(request, timeout=10)
                with lock:
                    ok[0] += 1
            except grpc.RpcError as error:
                with lock:
                    failed.append(f"{error.code().name}: {error.details()}")

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    assert first.stop() == 0  # SIGTERM: NOT_SERVING, 1 s of drain, in-flight calls finish, exit 0
    time.sleep(0.5)
    services(args[0])  # back on the same port
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    channel.close()
    print(f"\nproxy restart behind two proxies: {ok[0]} answered, {len(failed)} failed {failed[:3]}")
    assert ok[0] > 0 and failed == []
    assert any("event=proxy_draining" in line for line in first.output)
