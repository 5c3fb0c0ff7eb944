"""The proxy's gRPC door on the native HTTP/2 transport, as a real process in front of a real mesh.

What this door does its own way: the two hot methods reach the data plane from the C loop, every
other method is passed on to the proxy's grpc.aio server behind it, the loop itself ends a call at
its deadline, a client's cancel and a SIGTERM drain reach the call. The rest of the proxy's
behaviour is tested by the other modules, on this door by default (`make test` runs the door's
modules again with MVE_PROXY_TRANSPORT=grpc-aio).
"""

from __future__ import annotations

import os
import signal
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from procs import wait_until
from tiny_models import build_model

import mve
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve.errors import reason_of
from mve.proxy.settings import native_transport_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not native_transport_available(), reason="mve._h2transport not built: libnghttp2-dev is missing"),
    pytest.mark.skipif(os.environ.get("MVE_PROXY_TRANSPORT", "auto") != "auto",
                       reason="the native door's own tests, for the default transport only"),
]


@pytest.fixture(scope="module")
def control_plane(module_services, tmp_path_factory):
    """A control plane with endpoints "plus" (x + 1) and "slow" (seconds for a few hundred rows)."""
    root = tmp_path_factory.mktemp("native-door")
    cp = module_services(["control-plane", "--data-dir", str(root / "cp"), "--port", "0", "--metrics-port", "-1"])
    with mve.client("sagemaker", address=cp.address) as sm:
        for kind in ("plus", "slow"):
            build_model(root / f"{kind}.onnx", kind)
            sm.create_model(ModelName=kind, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(root / f"{kind}.onnx")})
            sm.create_endpoint_config(EndpointConfigName=kind, ProductionVariants=[{
                "VariantName": "AllTraffic", "ModelName": kind, "InitialInstanceCount": 1,
                "InstanceType": "ml.cpu.small", "InitialVariantWeight": 1.0}])
            sm.create_endpoint(EndpointName=kind, EndpointConfigName=kind)
        for kind in ("plus", "slow"):
            sm.get_waiter("endpoint_in_service").wait(EndpointName=kind, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    return cp


def _proxy(services, cp, *flags):
    proxy = services(["proxy", "--control-plane", cp.address, "--port", "0", "--http-port", "-1",
                      "--metrics-port", "-1", *flags])
    channel = grpc.insecure_channel(proxy.address, options=[("grpc.max_receive_message_length", 64 << 20)])
    oip = pb_grpc.GRPCInferenceServiceStub(channel)
    wait_until(lambda: all(oip.ModelReady(pb.ModelReadyRequest(name=n), timeout=5).ready for n in ("plus", "slow")),
               timeout=20, what="the proxy routes both endpoints")
    return proxy, channel, oip


def _infer(endpoint: str, rows: int) -> pb.ModelInferRequest:
    x = np.ones((rows, 2), np.float32)
    request = pb.ModelInferRequest(model_name=endpoint)
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 2])
    request.raw_input_contents.append(x.tobytes())
    return request


@pytest.fixture(scope="module")
def native(control_plane, module_services):
    return _proxy(module_services, control_plane)


def test_the_door_is_native_by_default_and_grpc_aio_on_request(control_plane, services, native):
    proxy, _, oip = native
    assert proxy.ready["transport"] == "native"
    assert "transport=native" in "".join(proxy.output)
    other, _, other_oip = _proxy(services, control_plane, "--transport", "grpc-aio")
    assert other.ready["transport"] == "grpc-aio"
    answers = [stub.ModelInfer(_infer("plus", 3), timeout=10) for stub in (oip, other_oip)]
    for answer in answers:
        assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == [2.0] * 6
        assert answer.parameters["invoked_production_variant"].string_param == "AllTraffic"
    assert answers[0] == answers[1] or answers[0].id != answers[1].id     # the same answer but for the made id


def test_every_other_method_is_answered_on_the_same_address(native):
    proxy, channel, oip = native
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING    # a server stream, passed on
    watch.cancel()
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    (listing,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for s in listing.list_services_response.service}
    assert {"inference.GRPCInferenceService", "mve.v1.EndpointRuntime", "grpc.health.v1.Health"} <= names
    assert oip.ServerMetadata(pb.ServerMetadataRequest(), timeout=5).name == "mve-proxy"
    metadata = oip.ModelMetadata(pb.ModelMetadataRequest(name="plus"), timeout=5)
    assert [t.name for t in metadata.inputs] == ["x"]
    with pytest.raises(grpc.RpcError) as caught:
        oip.ModelMetadata(pb.ModelMetadataRequest(name="nowhere"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "nowhere" in caught.value.details()
    assert reason_of(caught.value) == "ValidationError"                 # its ErrorInfo came through


def test_errors_of_the_hot_methods_carry_sagemakers_names(native):
    _, channel, oip = native
    with pytest.raises(grpc.RpcError) as caught:
        oip.ModelInfer(_infer("nowhere", 1), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "Endpoint nowhere of account 000000000000 not found."  # SageMaker's words
    assert reason_of(caught.value) == "ValidationError"
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff\xff", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(caught.value) == "ValidationError"
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/mve.v1.EndpointRuntime/InvokeEndpoint")(b"\xff\xff\xff", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid mve.v1.InvokeEndpointRequest" in caught.value.details()


def test_a_call_past_its_deadline_ends_there_and_the_door_goes_on(native):
    _, _, oip = native
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        oip.ModelInfer(_infer("slow", 2000), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    answer = oip.ModelInfer(_infer("plus", 1), timeout=10)
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == [2.0, 2.0]


def test_a_cancelled_call_leaves_the_door_serving(native):
    _, _, oip = native
    # 2,000 rows: ~0.3 s or more each at one instance, so none is done at 0.1 s (500 rows could be, on a quiet machine).
    calls = [oip.ModelInfer.future(_infer("slow", 2000), timeout=30) for _ in range(4)]
    time.sleep(0.1)
    assert all(call.cancel() for call in calls)
    answers = [oip.ModelInfer(_infer("plus", 2), timeout=10) for _ in range(20)]
    assert all(len(a.raw_output_contents[0]) == 16 for a in answers)


def test_sigterm_lets_the_call_in_flight_finish(control_plane, services):
    proxy, _, oip = _proxy(services, control_plane, "--drain-seconds", "0")
    call = oip.ModelInfer.future(_infer("slow", 2000), timeout=60)
    time.sleep(0.1)                 # the call is at the model server
    assert not call.done()
    proxy.process.send_signal(signal.SIGTERM)
    answer = call.result(timeout=60)
    assert answer.outputs[0].shape == [2000, 1536]     # 12 MB, written out before the door closed
    assert proxy.process.wait(30) == 0
    assert "event=native_door_stopped calls_in_flight=1 cancelled_after_grace=0" in "".join(proxy.output)
