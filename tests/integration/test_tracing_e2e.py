"""Traces end to end: a real proxy and real model servers exporting to a real OTLP/gRPC receiver.

The receiver (tests/otlp_receiver.py) runs in this process on a free port; every service is
started with the OTEL_* variables pointing at it. Routes come from the fake control plane of
test_proxy.py, so each test chooses a variant's batching exactly. The control plane's own spans
are checked on a real control plane.
"""

from __future__ import annotations

import io
import secrets

import grpc
import numpy as np
import pytest
from control_plane_helpers import control_stub, create_model, variant, wait_status
from otlp_receiver import OtlpReceiver
from procs import wait_until
from test_proxy import FakeControlPlane

from mve._proto import control_pb2, runtime_pb2, runtime_pb2_grpc
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

EP = "traced"
FEATURES = 16
SERVER, CLIENT = 2, 3  # OTLP Span.SpanKind


def otel_env(endpoint: str) -> dict:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms, so the test does not wait 5 s
        "OTEL_SERVICE_NAME": "",
    }


def traceparent() -> tuple[str, str, tuple]:
    """A caller's (trace id, span id, gRPC metadata) for a sampled W3C traceparent."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id}-{span_id}-01"),)


class TracedMesh:
    """Two mlp model servers and a DEBUG-logging proxy, all exporting to `receiver`."""

    def __init__(self, services, models):
        self.receiver = OtlpReceiver()
        env = otel_env(self.receiver.start())
        self.cp = FakeControlPlane()
        cp_address = self.cp.start()
        path = str(models["mlp"])
        self.servers = [
            services(["model-server", "--model", path, "--model-name", "mlp"], env=env) for _ in range(2)
        ]
        self.proxy = services(["proxy", "--control-plane", cp_address, "--port", "0", "--log-level", "DEBUG"], env=env)
        self.channel = grpc.insecure_channel(self.proxy.address)
        self.oip = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.runtime = runtime_pb2_grpc.EndpointRuntimeStub(self.channel)
        tensor = control_pb2.TensorSpec

        def route(name, server, batch, delay_us, weight):
            return control_pb2.VariantRoute(
                variant_name=name, model_name="mlp", weight=weight, routing_strategy="LEAST_OUTSTANDING_REQUESTS",
                batching=control_pb2.BatchingConfig(max_batch_size=batch, max_delay_us=delay_us),
                instances=[control_pb2.InstanceRoute(instance_id=f"{name}-0", address=server.address)],
                inputs=[tensor(name="input", datatype="FP32", shape=[-1, FEATURES])],
                outputs=[tensor(name="output", datatype="FP32", shape=[-1, 4])],
            )

        # "batched" takes targeted traffic only (weight 0): untargeted requests never wait for a batch.
        variants = [route("plain", self.servers[0], 0, 0, 1.0), route("batched", self.servers[1], 4, 1_000_000, 0.0)]
        self.cp.send(control_pb2.RoutingTable(version=1, endpoints=[control_pb2.EndpointRoute(
            endpoint_name=EP, variants=variants)]))
        wait_until(lambda: self.oip.ModelReady(pb.ModelReadyRequest(name=EP), timeout=5).ready, what="routes")

    def infer(self, variant: str, metadata=(), rows: int = 1, rid: str = ""):
        x = np.ones((rows, FEATURES), np.float32)
        request = pb.ModelInferRequest(model_name=EP, id=rid)
        request.inputs.add(name="input", datatype="FP32", shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
        request.parameters["target_variant"].string_param = variant
        return self.oip.ModelInfer.future(request, metadata=metadata, timeout=30)

    def close(self):
        self.channel.close()
        self.cp.stop()
        self.receiver.stop()


@pytest.fixture(scope="module")
def mesh(module_services, example_models):
    mesh = TracedMesh(module_services, example_models)
    yield mesh
    mesh.close()


def test_a_callers_trace_crosses_proxy_and_model_server_with_the_variant_named(mesh):
    trace_id, caller_span, metadata = traceparent()
    response = mesh.infer("plain", metadata, rid="oip-1").result()
    assert response.parameters["invoked_production_variant"].string_param == "plain"

    (proxy,) = mesh.receiver.find(trace_id=trace_id, service="mve-proxy")
    assert proxy.parent_span_id == caller_span  # joined, not replaced
    assert proxy.name == "inference.GRPCInferenceService/ModelInfer" and proxy.kind == SERVER
    a = proxy.attributes
    assert (a["mve.endpoint"], a["mve.variant"], a["mve.instance"], a["mve.routing_reason"]) == (
        EP, "plain", "plain-0", "target")
    assert a["rpc.system"] == "grpc" and a["rpc.method"] == "ModelInfer" and a["mve.inference_id"] == "oip-1"
    assert "mve.batch_size" not in a

    (model,) = mesh.receiver.find(trace_id=trace_id, service="mve-model-server")
    assert model.parent_span_id == proxy.span_id and model.kind == SERVER
    assert model.attributes["mve.model"] == "mlp"
    assert model.attributes["mve.input_shapes"] == ["input[1,16]"]


def test_invoke_endpoint_joins_the_caller_and_logs_inference_id_and_trace_id_at_debug(mesh):
    trace_id, caller_span, metadata = traceparent()
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, FEATURES), np.float32))
    request = runtime_pb2.InvokeEndpointRequest(
        endpoint_name=EP, body=buffer.getvalue(), content_type="application/x-npy", inference_id="slow-one",
        routing_key="user-7",
    )
    mesh.runtime.InvokeEndpoint(request, metadata=metadata, timeout=30)

    (proxy,) = mesh.receiver.find(trace_id=trace_id, service="mve-proxy")
    assert proxy.name == "mve.v1.EndpointRuntime/InvokeEndpoint" and proxy.parent_span_id == caller_span
    assert proxy.attributes["mve.routing_reason"] == "sticky"
    assert proxy.attributes["mve.inference_id"] == "slow-one"
    (model,) = mesh.receiver.find(trace_id=trace_id, service="mve-model-server")
    assert model.parent_span_id == proxy.span_id
    line = wait_until(
        lambda: next((x for x in list(mesh.proxy.output) if "inference_id=slow-one" in x), None), what="debug line"
    )
    assert f"trace_id={trace_id}" in line and "event=request" in line and f"endpoint={EP}" in line


def test_a_batch_is_one_model_server_span_linked_to_every_members_trace(mesh):
    callers = [traceparent() for _ in range(4)]
    futures = [mesh.infer("batched", metadata) for _, _, metadata in callers]
    for future in futures:
        assert future.result().parameters["invoked_production_variant"].string_param == "batched"

    members = []
    for trace_id, caller_span, _ in callers:
        (span,) = mesh.receiver.find(trace_id=trace_id, service="mve-proxy", kind=SERVER)
        assert span.parent_span_id == caller_span
        assert span.attributes["mve.variant"] == "batched"
        assert span.attributes["mve.batch_size"] == 4 and span.attributes["mve.batch_requests"] == 4
        assert span.attributes["mve.queue_time_us"] >= 0
        members.append(span)
    (batch,) = mesh.receiver.find(service="mve-proxy", kind=CLIENT)
    assert sorted(batch.links) == sorted((m.trace_id, m.span_id) for m in members)
    assert batch.attributes["mve.batch_size"] == 4 and batch.attributes["mve.instance"] == "batched-0"
    # The batch span lives in the first member's trace and links back from every member.
    assert any(batch.trace_id == m.trace_id and batch.parent_span_id == m.span_id for m in members)
    assert all((batch.trace_id, batch.span_id) in m.links for m in members)
    model_spans = mesh.receiver.find(service="mve-model-server", parent_span_id=batch.span_id)
    assert len(model_spans) == 1 and model_spans[0].attributes["mve.batch_size"] == 4


def test_the_control_plane_traces_its_calls_and_the_instance_launches_they_start(services, example_models, tmp_path):
    receiver = OtlpReceiver()
    env = otel_env(receiver.start())
    try:
        control = services(["control-plane", "--data-dir", str(tmp_path / "data"), "--port", "0"], env=env)
        stub = control_stub(control.address)
        create_model(stub, "mlp", example_models["mlp"])
        stub.CreateEndpointConfig(control_pb2.CreateEndpointConfigRequest(
            endpoint_config_name="cfg", production_variants=[variant("V1", "mlp")]))
        trace_id, caller_span, metadata = traceparent()
        stub.CreateEndpoint(
            control_pb2.CreateEndpointRequest(endpoint_name="ep", endpoint_config_name="cfg"), metadata=metadata
        )
        assert wait_status(stub, "ep").endpoint_status == "InService"

        (call,) = receiver.find(trace_id=trace_id, name="mve.v1.EndpointControl/CreateEndpoint")
        assert call.service == "mve-control-plane" and call.parent_span_id == caller_span
        assert call.attributes["mve.endpoint"] == "ep"
        (reconcile,) = receiver.find(trace_id=trace_id, name="mve.reconcile")
        assert reconcile.parent_span_id == call.span_id
        (launch,) = receiver.find(trace_id=trace_id, name="mve.launch_instance")
        assert launch.parent_span_id == reconcile.span_id
        assert launch.attributes["mve.variant"] == "V1" and launch.attributes["mve.instance"].startswith("V1-")
        assert launch.attributes["mve.instance_address"].startswith("127.0.0.1:")
    finally:
        receiver.stop()
