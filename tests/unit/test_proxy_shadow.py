"""Shadow variants, inference ids and capture sampling in the proxy's data plane, over a fake upstream."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from scipy.stats import binom

from mve._proto import control_pb2
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import ModelError, ValidationError
from mve.proxy.capture import MODEL_INFER_REQUEST_TYPE, MODEL_INFER_RESPONSE_TYPE, record_line
from mve.proxy.dataplane import DataPlane, InvokeRequest
from mve.proxy.routing.router import Instance, Router
from mve.proxy.shadow import ShadowSender
from mve.proxy.stats import StatsBook
from mve.proxy.transport.upstream import InferResult

FACTORS = {"m-prod": 2.0, "m-shadow": 3.0}


class FakeUpstream:
    """`send` for the data plane: y = factor * x by model name; a model's calls can be held or failed."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []  # (variant name, request as sent)
        self.held: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()
        self.finished: list[str] = []

    async def send(self, variant, request, timeout):
        self.calls.append((variant.name, request))
        message = pb.ModelInferRequest.FromString(request) if isinstance(request, bytes) else request
        if variant.name in self.held:
            await self.held[variant.name].wait()
        if variant.name in self.failing:
            raise ModelError("the shadow's model broke", original_status_code=500, original_message="")
        x = np.frombuffer(message.raw_input_contents[0], dtype=np.float32).reshape(tuple(message.inputs[0].shape))
        response = pb.ModelInferResponse(model_name=message.model_name, id=message.id)
        response.outputs.add(name="y", datatype="FP32", shape=list(x.shape))
        response.raw_output_contents.append((FACTORS[message.model_name] * x).tobytes())
        self.finished.append(variant.name)
        answer = response.SerializeToString() if isinstance(request, bytes) else response
        return InferResult(answer, Instance("i0", "a0"), 100.0)


class FakeWriter:
    """Stands in for CaptureWriter: keeps the records."""

    def __init__(self):
        self.records = []

    def submit(self, record):
        self.records.append(record)
        return True


def route(*, shadow_fraction=None, shadow_input="input", capture_percentage=None):
    def variant(name, model, weight, input_name="input"):
        return control_pb2.VariantRoute(
            variant_name=name, model_name=model, weight=weight,
            instances=[control_pb2.InstanceRoute(instance_id=f"{name}-0", address=f"{name}:1")],
            inputs=[control_pb2.TensorSpec(name=input_name, datatype="FP32", shape=[-1, 3])],
            outputs=[control_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1, 3])],
        )

    endpoint = control_pb2.EndpointRoute(endpoint_name="ep", variants=[variant("prod", "m-prod", 1.0)])
    if shadow_fraction is not None:
        endpoint.shadow_variants.append(variant("shadow", "m-shadow", shadow_fraction, shadow_input))
    if capture_percentage is not None:
        endpoint.data_capture.CopyFrom(control_pb2.DataCaptureConfig(
            enable_capture=True, initial_sampling_percentage=capture_percentage, destination_s3_uri="/tmp/unused",
            csv_content_types=["text/csv"], json_content_types=["application/json"],
        ))
    return endpoint


def dataplane_for(endpoint, *, max_in_flight=256, seed=1):
    router = Router(seed=seed)
    assert router.apply(control_pb2.RoutingTable(version=1, endpoints=[endpoint]))
    upstream, writer, stats = FakeUpstream(), FakeWriter(), StatsBook()
    dataplane = DataPlane(router, None, stats, send=upstream.send, capture=writer, shadow_max_in_flight=max_in_flight,
                          seed=seed)
    return dataplane, upstream, writer, stats


def invoke_request(**fields):
    fields = {"endpoint_name": "ep", "body": b"[[1, 2, 3]]", "content_type": "application/json"} | fields
    return InvokeRequest(**fields)


def model_infer_bytes(request_id=""):
    request = pb.ModelInferRequest(model_name="ep", id=request_id)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.array([[1, 2, 3]], np.float32).tobytes())
    return request.SerializeToString()


async def settle(dataplane):
    await dataplane.shadows.close(5.0)


def test_invoke_answers_with_the_callers_inference_id_or_one_it_made():
    dataplane, upstream, _, _ = dataplane_for(route())

    async def main():
        given = await dataplane.invoke_endpoint(invoke_request(inference_id="caller-id"))
        made = [await dataplane.invoke_endpoint(invoke_request()) for _ in range(3)]
        return given, made

    given, made = asyncio.run(main())
    assert given.inference_id == "caller-id" and upstream.calls[0][1].id == "caller-id"
    ids = [m.inference_id for m in made]
    assert len(set(ids)) == 3 and all(len(i) == 36 for i in ids)
    assert [request.id for _, request in upstream.calls[1:]] == ids  # the made id goes upstream too


def test_model_infer_on_bytes_answers_with_the_request_id_or_one_it_made():
    dataplane, upstream, _, _ = dataplane_for(route())

    async def main():
        return await dataplane.model_infer_bytes(model_infer_bytes("mine")), await dataplane.model_infer_bytes(
            model_infer_bytes()
        )

    given, made = (pb.ModelInferResponse.FromString(b) for b in asyncio.run(main()))
    assert given.id == "mine"
    assert len(made.id) == 36 and made.id != "mine"
    assert made.parameters["invoked_production_variant"].string_param == "prod"
    assert pb.ModelInferRequest.FromString(upstream.calls[1][1]).id == made.id


def test_model_infer_on_a_message_answers_with_an_id():
    dataplane, _, _, _ = dataplane_for(route())
    request = pb.ModelInferRequest.FromString(model_infer_bytes())
    response = asyncio.run(dataplane.model_infer(request))
    assert len(response.id) == 36


def test_the_caller_returns_before_its_shadow_call_ends_and_the_shadow_is_counted_under_its_name():
    dataplane, upstream, _, stats = dataplane_for(route(shadow_fraction=1.0))

    async def main():
        upstream.held["shadow"] = asyncio.Event()
        result = await dataplane.invoke_endpoint(invoke_request())
        await asyncio.sleep(0.01)  # the shadow's task has started and waits on its model
        in_flight = dataplane.shadows.in_flight
        shadow_counted = ("ep", "shadow") in stats.snapshot()
        upstream.held["shadow"].set()
        await settle(dataplane)
        return result, in_flight, shadow_counted

    result, in_flight, shadow_counted_early = asyncio.run(main())
    assert result.invoked_production_variant == "prod"
    assert json.loads(result.body)["predictions"]["y"] == [[2.0, 4.0, 6.0]]  # the production model's answer
    assert in_flight == 1 and not shadow_counted_early
    totals = stats.snapshot()
    assert totals[("ep", "prod")].invocations == 1
    assert totals[("ep", "shadow")].invocations == 1 and totals[("ep", "shadow")].model_latency.count == 1
    shadow_request = pb.ModelInferRequest.FromString(upstream.calls[1][1])
    assert upstream.calls[1][0] == "shadow" and shadow_request.model_name == "m-shadow"
    assert shadow_request.id == result.inference_id


def test_a_failing_shadow_never_fails_the_caller_and_its_errors_are_counted():
    dataplane, upstream, _, stats = dataplane_for(route(shadow_fraction=1.0))
    upstream.failing.add("shadow")

    async def main():
        results = [await dataplane.invoke_endpoint(invoke_request()) for _ in range(5)]
        answers = [await dataplane.model_infer_bytes(model_infer_bytes()) for _ in range(5)]
        await settle(dataplane)
        return results, answers

    results, answers = asyncio.run(main())
    assert len(results) == 5 and len(answers) == 5
    shadow = stats.snapshot()[("ep", "shadow")]
    assert shadow.invocations == 10 and shadow.invocation_5xx_errors == 10 and shadow.invocation_model_errors == 10


def test_shadow_copies_past_the_in_flight_bound_are_dropped_and_counted():
    dataplane, upstream, _, stats = dataplane_for(route(shadow_fraction=1.0), max_in_flight=2)

    async def main():
        upstream.held["shadow"] = asyncio.Event()
        for _ in range(5):
            await dataplane.invoke_endpoint(invoke_request())
        await asyncio.sleep(0.01)
        in_flight = dataplane.shadows.in_flight
        upstream.held["shadow"].set()
        await settle(dataplane)
        return in_flight

    assert asyncio.run(main()) == 2
    assert dataplane.shadows.dropped() == {("ep", "shadow"): 3}
    assert stats.snapshot()[("ep", "shadow")].invocations == 2
    assert stats.snapshot()[("ep", "prod")].invocations == 5


def test_shadow_sender_close_cancels_calls_past_its_timeout():
    async def main():
        sender = ShadowSender(None, StatsBook(), max_in_flight=4)
        forever = asyncio.Event()

        async def stuck():
            await forever.wait()

        variant = Router(seed=1)
        variant.apply(control_pb2.RoutingTable(version=1, endpoints=[route(shadow_fraction=1.0)]))
        shadow = variant.state.endpoints["ep"].shadows[0]
        assert sender.submit(shadow, stuck)
        await asyncio.sleep(0)
        await sender.close(0.01)
        return sender.in_flight

    assert asyncio.run(main()) == 0


def test_shadows_are_sampled_by_their_fraction():
    dataplane, upstream, _, _ = dataplane_for(route(shadow_fraction=0.25), seed=5)
    n = 2000

    async def main():
        for _ in range(n):
            await dataplane.invoke_endpoint(invoke_request())
        await settle(dataplane)

    asyncio.run(main())
    copies = sum(1 for name, _ in upstream.calls if name == "shadow")
    sampled = copies + dataplane.shadows.dropped().get(("ep", "shadow"), 0)
    assert binom.ppf(1e-9, n, 0.25) <= sampled <= binom.isf(1e-9, n, 0.25)


def test_shadows_are_never_picked_by_weight_target_or_routing_key():
    router = Router(seed=1)
    assert router.apply(control_pb2.RoutingTable(version=1, endpoints=[route(shadow_fraction=1.0)]))
    endpoint = router.state.endpoints["ep"]
    assert {endpoint.pick().name for _ in range(200)} == {"prod"}
    assert {endpoint.pick(routing_key=str(k)).name for k in range(200)} == {"prod"}
    with pytest.raises(ValidationError, match="Variant shadow not found"):
        endpoint.pick(target_variant="shadow")
    assert [s.name for s in endpoint.shadows] == ["shadow"] and endpoint.shadows[0].weight == 1.0
    assert router.state.addresses() == {"prod:1", "shadow:1"}


def test_a_table_with_a_bad_shadow_is_rejected_whole():
    router = Router(seed=1)
    assert router.apply(control_pb2.RoutingTable(version=1, endpoints=[route()]))
    too_much = route(shadow_fraction=1.5)
    twin = route(shadow_fraction=0.5)
    twin.shadow_variants[0].variant_name = "prod"
    for bad in (too_much, twin):
        assert not router.apply(control_pb2.RoutingTable(version=2, endpoints=[bad]))
    assert router.state.version == 1


def test_a_capture_destination_the_proxy_cannot_write_turns_capture_off_but_keeps_the_table():
    endpoint = route(capture_percentage=100)
    endpoint.data_capture.destination_s3_uri = "s3://bucket/prefix"
    router = Router(seed=1)
    assert router.apply(control_pb2.RoutingTable(version=1, endpoints=[endpoint]))
    assert router.state.endpoints["ep"].capture is None


def test_capture_samples_invocations_at_its_percentage():
    dataplane, _, writer, _ = dataplane_for(route(capture_percentage=30), seed=9)
    n = 2000

    async def main():
        for _ in range(n):
            await dataplane.invoke_endpoint(invoke_request())

    asyncio.run(main())
    assert binom.ppf(1e-9, n, 0.3) <= len(writer.records) <= binom.isf(1e-9, n, 0.3)


def test_a_captured_invocation_and_its_shadow_are_recorded_with_one_inference_id():
    dataplane, _, writer, _ = dataplane_for(route(shadow_fraction=1.0, capture_percentage=100))

    async def main():
        result = await dataplane.invoke_endpoint(invoke_request(body=b"1,2,3", content_type="text/csv", accept="application/json"))
        await settle(dataplane)
        return result

    result = asyncio.run(main())
    production, shadow = writer.records
    assert (production.variant, shadow.variant) == ("prod", "shadow")
    assert production.inference_id == shadow.inference_id == result.inference_id
    lines = [json.loads(record_line(r)) for r in (production, shadow)]
    for line in lines:
        assert line["captureData"]["endpointInput"] == {
            "observedContentType": "text/csv", "mode": "INPUT", "data": "1,2,3", "encoding": "CSV"
        }
    assert json.loads(lines[0]["captureData"]["endpointOutput"]["data"])["predictions"]["y"] == [[2.0, 4.0, 6.0]]
    # The shadow's answer, encoded for the caller's Accept (by the writer, off the event loop).
    assert json.loads(lines[1]["captureData"]["endpointOutput"]["data"])["predictions"]["y"] == [[3.0, 6.0, 9.0]]
    assert lines[1]["captureData"]["endpointOutput"]["encoding"] == "JSON"


def test_a_model_infer_capture_holds_the_request_as_received_and_the_answer_as_returned():
    dataplane, _, writer, _ = dataplane_for(route(shadow_fraction=1.0, capture_percentage=100))
    data = model_infer_bytes()

    async def main():
        answer = await dataplane.model_infer_bytes(data)
        await settle(dataplane)
        return answer

    answer = asyncio.run(main())
    production, shadow = writer.records
    assert production.input is data and production.output is answer  # references, no copies
    assert (production.input_type, production.output_type) == (MODEL_INFER_REQUEST_TYPE, MODEL_INFER_RESPONSE_TYPE)
    shadow_answer = pb.ModelInferResponse.FromString(shadow.output())
    assert shadow_answer.id == pb.ModelInferResponse.FromString(answer).id == production.inference_id
    assert shadow_answer.parameters["invoked_production_variant"].string_param == "shadow"
    assert np.frombuffer(shadow_answer.raw_output_contents[0], np.float32).tolist() == [3.0, 6.0, 9.0]


def test_a_shadow_whose_model_names_its_input_differently_gets_the_body_under_its_name():
    dataplane, upstream, _, stats = dataplane_for(route(shadow_fraction=1.0, shadow_input="features"))

    async def main():
        await dataplane.invoke_endpoint(invoke_request())
        await settle(dataplane)

    asyncio.run(main())
    sent = pb.ModelInferRequest.FromString(upstream.calls[1][1])
    assert sent.inputs[0].name == "features" and sent.model_name == "m-shadow"
    assert stats.snapshot()[("ep", "shadow")].invocation_5xx_errors == 0


def test_without_capture_or_shadows_nothing_is_sampled_or_recorded():
    dataplane, upstream, writer, _ = dataplane_for(route())

    async def main():
        await dataplane.invoke_endpoint(invoke_request())
        await dataplane.model_infer_bytes(model_infer_bytes())

    asyncio.run(main())
    assert writer.records == [] and len(upstream.calls) == 2 and dataplane.shadows.in_flight == 0


def test_with_tracing_a_shadows_copy_is_a_client_span_in_the_callers_trace():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    router = Router(seed=1)
    assert router.apply(control_pb2.RoutingTable(version=1, endpoints=[route(shadow_fraction=1.0)]))
    upstream = FakeUpstream()
    dataplane = DataPlane(router, None, StatsBook(), send=upstream.send, capture=FakeWriter(), tracer=tracer)

    async def main():
        with tracer.start_as_current_span("caller", kind=SpanKind.SERVER):
            await dataplane.invoke_endpoint(invoke_request())
        await settle(dataplane)  # the first copy answers; the second one fails
        upstream.failing.add("shadow")
        with tracer.start_as_current_span("caller", kind=SpanKind.SERVER):
            await dataplane.invoke_endpoint(invoke_request())
        await settle(dataplane)

    asyncio.run(main())
    callers = [s for s in exporter.get_finished_spans() if s.name == "caller"]
    copies = [s for s in exporter.get_finished_spans() if s.attributes.get("mve.shadow")]
    assert len(callers) == 2 and len(copies) == 2
    for caller, copy in zip(callers, copies):
        assert copy.kind == SpanKind.CLIENT and copy.parent.span_id == caller.context.span_id
        assert (copy.attributes["mve.endpoint"], copy.attributes["mve.variant"]) == ("ep", "shadow")
    assert copies[0].attributes["mve.instance"] == "i0" and copies[0].status.status_code != StatusCode.ERROR
    assert copies[1].status.status_code == StatusCode.ERROR


def test_prometheus_text_has_the_capture_and_shadow_counters_and_the_shadows_own_series():
    from prometheus_client import CollectorRegistry, generate_latest

    from mve.proxy.prometheus import ProxyCollector

    dataplane, upstream, _, stats = dataplane_for(route(shadow_fraction=1.0), max_in_flight=1)
    capture = type("Counts", (), {"written": lambda self: {("ep", "prod"): 7}, "dropped": lambda self: {("ep", "prod"): 2}})()

    async def main():
        upstream.held["shadow"] = asyncio.Event()
        for _ in range(3):
            await dataplane.invoke_endpoint(invoke_request())
        await asyncio.sleep(0.01)
        upstream.held["shadow"].set()
        await settle(dataplane)

    asyncio.run(main())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(stats, dataplane.router, capture=capture, shadows=dataplane.shadows))
    text = generate_latest(registry).decode()
    assert 'mve_capture_records_total{endpoint="ep",variant="prod"} 7.0' in text
    assert 'mve_capture_dropped_total{endpoint="ep",variant="prod"} 2.0' in text
    assert 'mve_shadow_dropped_total{endpoint="ep",variant="shadow"} 2.0' in text
    assert 'mve_invocations_total{endpoint="ep",variant="shadow"} 1.0' in text
    assert 'mve_proxy_variant_instances{endpoint="ep",variant="shadow"} 1.0' in text
