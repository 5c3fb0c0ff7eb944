"""The proxy's data plane over fake model servers: request building, retries, error mapping, stats."""

from __future__ import annotations

import asyncio
import io
import json

import time

import grpc
import numpy as np
import pytest

from mve._proto import control_pb2
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import ModelError, ModelNotReady, ValidationError
from mve.proxy.dataplane import DataPlane, InvokeRequest
from mve.proxy.routing.router import Router
from mve.proxy.stats import StatsBook, stats_request


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def doubling_model(request):
    """A model server that answers y = 2x for input `input` FP32."""
    x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(request.inputs[0].shape))
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    response.outputs.add(name="y", datatype="FP32", shape=list(x.shape))
    response.raw_output_contents.append((2 * x).tobytes())
    if "custom_attributes" in request.parameters:
        response.parameters["custom_attributes"].string_param = "echo:" + request.parameters["custom_attributes"].string_param
    return response


class FakeStub:
    def __init__(self, pool, address):
        self.pool, self.address = pool, address

    async def ModelInfer(self, request, timeout=None, metadata=None):
        self.pool.calls.append((self.address, request, timeout))
        behaviour = self.pool.behaviours[self.address]
        if isinstance(behaviour, grpc.aio.AioRpcError):
            raise behaviour
        return behaviour(request)


class FakePool:
    """Stands in for UpstreamPool: per-address behaviour, every call recorded."""

    max_in_flight = max_in_flight_per_instance = 0  # UpstreamPool's bounds: none here
    in_flight = 0

    def __init__(self, behaviours):
        self.behaviours = behaviours
        self.calls = []
        self.tracing = False  # UpstreamPool.tracing: no trace metadata on calls

    def stub(self, address):
        return FakeStub(self, address)


def setup(behaviours, *, instances=2, inputs=(("input", "FP32", (-1, 3)),)):
    table = control_pb2.RoutingTable(
        version=1,
        endpoints=[
            control_pb2.EndpointRoute(
                endpoint_name="ep",
                variants=[
                    control_pb2.VariantRoute(
                        variant_name="v1",
                        model_name="m1",
                        weight=1,
                        instances=[
                            control_pb2.InstanceRoute(instance_id=f"i{i}", address=f"a{i}") for i in range(instances)
                        ],
                        inputs=[control_pb2.TensorSpec(name=n, datatype=d, shape=s) for n, d, s in inputs],
                    )
                ],
            )
        ],
    )
    router = Router(seed=3)
    assert router.apply(table)
    pool = FakePool(behaviours)
    stats = StatsBook()
    return DataPlane(router, pool, stats, model_timeout_s=60.0), pool, stats


def invoke(dataplane, body=b"[[1, 2, 3]]", content_type="application/json", time_remaining=None, **fields):
    request = InvokeRequest(endpoint_name="ep", body=body, content_type=content_type, **fields)
    return asyncio.run(dataplane.invoke_endpoint(request, time_remaining))


def test_invoke_sends_raw_fp32_to_the_variant_model_and_names_the_variant():
    dataplane, pool, stats = setup({"a0": doubling_model, "a1": doubling_model})
    result = invoke(dataplane, inference_id="req-1", custom_attributes="k=v")
    assert result.invoked_production_variant == "v1"
    assert json.loads(result.body) == {"predictions": {"y": [[2.0, 4.0, 6.0]]}}
    assert result.custom_attributes == "echo:k=v"
    (_, request, timeout), = pool.calls
    assert request.model_name == "m1" and request.id == "req-1"
    assert request.inputs[0].datatype == "FP32" and list(request.inputs[0].shape) == [1, 3]
    assert not request.inputs[0].HasField("contents")
    assert timeout == 60.0
    counters = stats.drain()[("ep", "v1")]
    assert counters.invocations == 1 and counters.invocation_4xx_errors == 0


def test_the_callers_shorter_deadline_is_passed_through():
    dataplane, pool, _ = setup({"a0": doubling_model, "a1": doubling_model})
    invoke(dataplane, time_remaining=2.5)
    assert pool.calls[0][2] == 2.5


def test_accept_picks_the_response_encoding():
    dataplane, _, _ = setup({"a0": doubling_model, "a1": doubling_model})
    result = invoke(dataplane, b"1,2,3\n4,5,6\n", "text/csv", accept="application/x-npy")
    assert result.content_type == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(result.body)), [[2, 4, 6], [8, 10, 12]])


def test_an_unavailable_instance_is_retried_once_on_the_other():
    dead = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
    dataplane, pool, _ = setup({"a0": dead, "a1": doubling_model})
    for _ in range(10):
        assert invoke(dataplane).invoked_production_variant == "v1"
    variant = dataplane.router.pick("ep")
    assert list(variant.balancer.outstanding_all()) == [0, 0]


def test_the_retry_on_another_instance_gets_only_what_is_left_of_the_deadline():
    def slow_refusal(request):
        time.sleep(0.3)  # the first instance takes 0.3 s to fail
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection reset")

    dataplane, pool, _ = setup({"a0": slow_refusal, "a1": doubling_model})
    for _ in range(50):  # until the balancer tries a0 first (a random tie-break)
        pool.calls.clear()
        invoke(dataplane, time_remaining=2.0)
        if pool.calls[0][0] == "a0":
            break
    (_, _, first), (_, _, retry) = pool.calls
    assert first == pytest.approx(2.0) and retry <= 2.0 - 0.3


def test_an_unavailable_only_instance_is_model_not_ready():
    dataplane, _, stats = setup({"a0": rpc_error(grpc.StatusCode.UNAVAILABLE, "gone")}, instances=1)
    with pytest.raises(ModelNotReady, match="no reachable instance: gone"):
        invoke(dataplane)
    assert stats.drain()[("ep", "v1")].invocation_4xx_errors == 1


def test_a_model_failure_is_a_model_error_with_the_original_status():
    boom = rpc_error(grpc.StatusCode.INTERNAL, "onnxruntime exploded")
    dataplane, pool, stats = setup({"a0": boom, "a1": boom})
    with pytest.raises(ModelError) as info:
        invoke(dataplane)
    # The model server's INTERNAL is the HTTP 500 a container would have answered (google.rpc.Code's mapping).
    assert info.value.metadata == {"OriginalStatusCode": "500", "OriginalMessage": "onnxruntime exploded"}
    assert info.value.original_status_code == 500
    assert info.value.message == 'Received server error (500) from model m1 of variant v1 with message "onnxruntime exploded".'
    assert len(pool.calls) == 1  # only UNAVAILABLE is retried
    counters = stats.drain()[("ep", "v1")]
    assert counters.invocation_model_errors == 1


def test_invalid_argument_from_the_model_is_a_validation_error_with_its_message():
    bad = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "input 'input' has shape [1, 3], the model expects [-1, 4]")
    dataplane, _, _ = setup({"a0": bad, "a1": bad})
    with pytest.raises(ValidationError, match="the model expects"):
        invoke(dataplane)


def test_a_body_that_does_not_fit_the_model_input_is_refused_before_the_model():
    dataplane, pool, _ = setup({"a0": doubling_model, "a1": doubling_model})
    with pytest.raises(ValidationError, match=r"shape \[-1, 3\] but the body decoded to shape \[1, 4\]"):
        invoke(dataplane, b"[[1, 2, 3, 4]]")
    assert pool.calls == []


def test_a_model_with_several_inputs_cannot_be_invoked_with_a_body():
    dataplane, _, _ = setup({"a0": doubling_model}, instances=1, inputs=(("a", "FP32", (-1, 3)), ("b", "FP32", (-1, 3))))
    with pytest.raises(ValidationError, match="has 2 \\(a, b\\); send it with ModelInfer"):
        invoke(dataplane)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"inference_id": "x" * 65}, "InferenceId is 65 characters; at most 64"),
        ({"custom_attributes": "x" * 1025}, "CustomAttributes is 1025 characters; at most 1024"),
        ({"custom_attributes": "café"}, "ASCII"),
        ({"target_variant": "bad_name"}, "TargetVariant 'bad_name'"),
        ({"accept": "text/html"}, "Accept 'text/html' is not supported"),
    ],
)
def test_invoke_fields_are_validated(fields, message):
    dataplane, _, _ = setup({"a0": doubling_model, "a1": doubling_model})
    with pytest.raises(ValidationError, match=message):
        invoke(dataplane, **fields)


def test_model_infer_moves_typed_contents_to_raw_and_names_the_variant():
    dataplane, pool, _ = setup({"a0": doubling_model, "a1": doubling_model})
    request = pb.ModelInferRequest(model_name="ep")
    request.parameters["target_variant"].string_param = "v1"
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    response = asyncio.run(dataplane.model_infer(request))
    assert response.model_name == "ep"
    assert response.parameters["invoked_production_variant"].string_param == "v1"
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], dtype=np.float32), [2, 4, 6])
    sent = pool.calls[0][1]
    assert sent.model_name == "m1" and "target_variant" not in sent.parameters
    assert not sent.inputs[0].HasField("contents") and len(sent.raw_input_contents) == 1


def test_stats_requests_carry_every_counter():
    stats = StatsBook()
    stats.record_success("ep", "v1", 100.0, 20.0, instances=2)
    stats.record_success("ep", "v1", 300.0, 40.0, instances=4)
    stats.record_error("ep", "v1", ModelError("x", original_status_code=500), instances=4)
    stats.record_error("ep", "v1", ModelError("x", original_status_code=400), instances=4)
    request = stats_request("proxy-1", stats.drain(), incarnation="abc", sequence=7)
    assert (request.proxy_id, request.incarnation, request.sequence) == ("proxy-1", "abc", 7)
    (variant,) = request.variants
    assert (variant.invocations, variant.invocation_model_errors) == (4, 2)
    # The model's 500 is a 5xx, its 400 a 4xx (SageMaker counts by the model's status).
    assert (variant.invocation_5xx_errors, variant.invocation_4xx_errors) == (1, 1)
    latency = variant.model_latency_us
    assert (latency.count, latency.sum, latency.min, latency.max) == (2, 400.0, 100.0, 300.0)
    assert sum(latency.histogram.count) == 2
    per_instance = variant.invocations_per_instance
    assert (per_instance.count, per_instance.sum, per_instance.min, per_instance.max) == (4, 0.5 + 0.75, 0.25, 0.5)
    assert stats.drain() == {}
    totals = stats.snapshot()[("ep", "v1")]
    assert totals.invocations == 4 and totals.model_latency.count == 2


def test_requests_past_the_in_flight_bounds_are_refused_at_once():
    from mve.proxy.transport.upstream import infer_on_variant

    release = None

    class HeldStub:
        async def ModelInfer(self, request, timeout=None, metadata=None):
            await release.wait()
            return doubling_model(request)

    class HeldPool(FakePool):
        def stub(self, address):
            return HeldStub()

    async def main(per_instance: int, per_proxy: int):
        nonlocal release
        release = asyncio.Event()
        dataplane, _, _ = setup({"a0": doubling_model, "a1": doubling_model})
        pool = HeldPool({})
        pool.max_in_flight_per_instance, pool.max_in_flight = per_instance, per_proxy
        variant = dataplane.router.pick("ep")
        request = pb.ModelInferRequest(model_name="m1")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 3])
        request.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
        held = [asyncio.ensure_future(infer_on_variant(pool, variant, request, 5.0)) for _ in range(4)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(ModelNotReady, match="limit") as refused:
            await infer_on_variant(pool, variant, request, 5.0)
        assert time.perf_counter() - started < 0.05  # refused at once, not after a wait
        release.set()
        await asyncio.gather(*held)
        assert pool.in_flight == 0 and list(variant.balancer.outstanding_all()) == [0, 0]
        await infer_on_variant(pool, variant, request, 5.0)  # room again
        return str(refused.value)

    assert "--max-in-flight-per-instance" in asyncio.run(main(per_instance=2, per_proxy=0))  # 2 instances x 2
    assert "--max-in-flight)" in asyncio.run(main(per_instance=0, per_proxy=4))
