"""A shadow that sleeps 200 ms per request never slows its callers, under load, and is counted.

A real proxy (routes from the fake WatchRoutes server of test_proxy.py) serves two endpoints on the
same production model server (tiny "plus" model): ``plain``, and ``shadowed``, whose shadow variant
gets a copy of every request (sampling fraction 1). The shadow is `SleepyModel`, an Open Inference
Protocol server in this process that sleeps 200 ms per request without using a CPU. Concurrent
callers then run alternating rounds against the two endpoints, so both see the same machine; the
caller's median latency with the shadow must stay within the rounds' own noise of the one without.
With ``--shadow-max-in-flight 16`` the proxy holds at most 16 copies at once (16 / 0.2 s = 80 a
second), far fewer than the callers send: the rest are dropped and counted, and every copy is
either an invocation of the shadow or a drop in the proxy's Prometheus text.
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pytest
from procs import wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_proxy import FakeControlPlane
from tiny_models import build_model, npy

from mve._proto import control_pb2, runtime_pb2, runtime_pb2_grpc
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

SHADOW_SLEEP_S = 0.2
SHADOW_MAX_IN_FLIGHT = 16
CALLERS = 8
REQUESTS_PER_CALLER = 40  # per round
ROUNDS = 6  # alternating: plain, shadowed, plain, ...
BODY = npy(np.ones((1, 2), np.float32))


class SleepyModel(pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer that sleeps 200 ms and answers y = x; counts calls and the most at once."""

    def __init__(self):
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4 * SHADOW_MAX_IN_FLIGHT))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def ModelInfer(self, request, context):
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(SHADOW_SLEEP_S)
            response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            response.outputs.add(name="y", datatype="FP32", shape=list(request.inputs[0].shape))
            response.raw_output_contents.append(request.raw_input_contents[0])
            return response
        finally:
            with self._lock:
                self.in_flight -= 1


def counters(address: str) -> dict[tuple[str, str, str], float]:
    """{(sample name, endpoint, variant): value} from the proxy's Prometheus text."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, s.labels.get("endpoint", ""), s.labels.get("variant", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def round_latencies(runtime, endpoint: str) -> list[float]:
    """CALLERS threads x REQUESTS_PER_CALLER InvokeEndpoint calls each; every call's latency in ms."""
    latencies: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def caller():
        mine = []
        try:
            for _ in range(REQUESTS_PER_CALLER):
                started = time.perf_counter()
                runtime.InvokeEndpoint(runtime_pb2.InvokeEndpointRequest(
                    endpoint_name=endpoint, body=BODY, content_type="application/x-npy"), timeout=10)
                mine.append((time.perf_counter() - started) * 1e3)
        except grpc.RpcError as error:
            failures.append(error)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:3]
    assert len(latencies) == CALLERS * REQUESTS_PER_CALLER
    return latencies


def test_a_200ms_shadow_leaves_the_callers_latency_within_noise_and_is_counted(services, tmp_path):
    build_model(tmp_path / "plus.onnx", "plus")
    plus = services(["model-server", "--model", str(tmp_path / "plus.onnx"), "--model-name", "plus"])
    sleepy = SleepyModel()
    cp = FakeControlPlane()
    proxy = services([
        "proxy", "--control-plane", cp.start(), "--port", "0", "--shadow-max-in-flight", str(SHADOW_MAX_IN_FLIGHT),
    ])

    def variant(name: str, address: str, weight: float) -> control_pb2.VariantRoute:
        tensor = control_pb2.TensorSpec
        return control_pb2.VariantRoute(
            variant_name=name, model_name=name, weight=weight,
            instances=[control_pb2.InstanceRoute(instance_id=f"{name}-0", address=address)],
            inputs=[tensor(name="x", datatype="FP32", shape=[-1, 2])],
            outputs=[tensor(name="y", datatype="FP32", shape=[-1, 2])],
        )

    plain = control_pb2.EndpointRoute(endpoint_name="plain", variants=[variant("plus", plus.address, 1.0)])
    shadowed = control_pb2.EndpointRoute(
        endpoint_name="shadowed", variants=[variant("plus", plus.address, 1.0)],
        shadow_variants=[variant("sleepy", sleepy.address, 1.0)],
    )
    cp.send(control_pb2.RoutingTable(version=1, control_plane_id="fake", endpoints=[plain, shadowed]))
    channel = grpc.insecure_channel(proxy.address)
    runtime = runtime_pb2_grpc.EndpointRuntimeStub(channel)
    oip = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        wait_until(lambda: oip.ModelReady(pb.ModelReadyRequest(name="shadowed"), timeout=5).ready, what="the table")
        for endpoint in ("plain", "shadowed"):  # warm channels and code paths
            round_latencies(runtime, endpoint)

        medians: dict[str, list[float]] = {"plain": [], "shadowed": []}
        pooled: dict[str, list[float]] = {"plain": [], "shadowed": []}
        for index in range(ROUNDS):
            endpoint = ("plain", "shadowed")[index % 2]
            latencies = round_latencies(runtime, endpoint)
            medians[endpoint].append(statistics.median(latencies))
            pooled[endpoint].extend(latencies)
        without, with_shadow = statistics.median(pooled["plain"]), statistics.median(pooled["shadowed"])
        print(f"caller median latency: without shadow {without:.2f} ms (rounds {medians['plain']}), "
              f"with a 200 ms shadow {with_shadow:.2f} ms (rounds {medians['shadowed']})")
        # A caller that waited for its shadow would take 200 ms. Noise: the rounds without a shadow
        # differ among themselves by their spread; the bound allows that, 50% and 2 ms more.
        spread = max(medians["plain"]) - min(medians["plain"])
        assert with_shadow <= 1.5 * without + spread + 2.0
        assert max(medians["shadowed"]) < SHADOW_SLEEP_S * 1e3 / 4

        copies = (1 + ROUNDS // 2) * CALLERS * REQUESTS_PER_CALLER  # the warm-up round too: every request

        def settled():
            metrics = counters(proxy.ready["metrics_address"])
            shadow_calls = metrics.get(("mve_invocations_total", "shadowed", "sleepy"), 0)
            dropped = metrics.get(("mve_shadow_dropped_total", "shadowed", "sleepy"), 0)
            return (shadow_calls + dropped == copies and sleepy.in_flight == 0) and (shadow_calls, dropped, metrics)

        shadow_calls, dropped, metrics = wait_until(settled, timeout=30, what="every copy counted")
        print(f"shadow: {shadow_calls:.0f} invocations, {dropped:.0f} dropped of {copies} copies; "
              f"at most {sleepy.most_in_flight} at once")
        assert shadow_calls == sleepy.calls > 0 and dropped > 0
        assert sleepy.most_in_flight <= SHADOW_MAX_IN_FLIGHT
        assert metrics.get(("mve_invocation_5xx_errors_total", "shadowed", "sleepy"), 0) == 0
        # The shadow's ModelLatency is its 200 ms; the callers' production variant never saw it.
        assert metrics[("mve_model_latency_seconds_count", "shadowed", "sleepy")] == shadow_calls
        assert metrics[("mve_model_latency_seconds_sum", "shadowed", "sleepy")] >= shadow_calls * SHADOW_SLEEP_S
        assert metrics[("mve_invocations_total", "shadowed", "plus")] == copies
    finally:
        channel.close()
        cp.stop()
        sleepy.server.stop(grace=0)
    assert proxy.stop() == 0
    assert "Traceback" not in "".join(proxy.output)
