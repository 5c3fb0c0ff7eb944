"""Tracing configuration from OTEL_* (off when unset, bad values refused) and the proxy's spans, in process."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mve._proto import control_pb2
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.proxy.dataplane import DataPlane
from mve.proxy.routing.router import Router
from mve.proxy.stats import StatsBook
from mve.proxy.transport.upstream import infer_on_variant
from mve.tracing import TracingConfigError, extract, outgoing_metadata, tracing_config

# ------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "env",
    [{}, {"OTEL_TRACES_EXPORTER": ""}, {"OTEL_TRACES_EXPORTER": "none"},
     {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
     {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}],  # sampler alone: no exporter
)
def test_tracing_is_off_unless_an_exporter_is_named(env):
    assert tracing_config(env) is None


def test_otlp_defaults_to_grpc_and_parent_based_always_on():
    config = tracing_config({"OTEL_TRACES_EXPORTER": "otlp"})
    assert config.exporters == ("otlp",) and config.protocol == "grpc"
    assert config.sampler == "parentbased_always_on" and config.sampler_arg is None


def test_the_traces_protocol_and_ratio_are_read():
    config = tracing_config({
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "ParentBased_TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.01",
    })
    assert config.protocol == "http/protobuf" and config.sampler == "parentbased_traceidratio"
    assert config.sampler_arg == 0.01


@pytest.mark.parametrize(
    "env, named",
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1%"}, "OTEL_TRACES_SAMPLER_ARG='1%'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "from 0 to 1"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nan"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "'zipkin' is not available"),
    ],
)
def test_a_bad_value_is_refused_with_the_variable_named(env, named):
    with pytest.raises(TracingConfigError) as caught:
        tracing_config({"OTEL_TRACES_EXPORTER": "otlp", **env})
    assert named in str(caught.value)


def test_a_bad_sampler_stops_the_proxy_at_start_with_a_clear_message():
    done = subprocess.run(
        [sys.executable, "-m", "mve", "proxy", "--port", "0"],
        env={"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes", "PATH": ""},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "mve proxy: error: OTEL_TRACES_SAMPLER='sometimes' is not a sampler" in done.stderr


def test_off_imports_no_opentelemetry():
    code = (
        "import sys, mve.tracing as t, mve.proxy.server, mve.modelserver.server, mve.control.server\n"
        "assert t.setup_tracing('x') is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={"PATH": ""})
    assert done.returncode == 0, done.stderr


def test_trace_context_round_trips_through_grpc_metadata():
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("caller") as span:
        metadata = outgoing_metadata()
    (key, value), = metadata
    assert key == "traceparent" and value.split("-")[1] == format(span.get_span_context().trace_id, "032x")
    parent = trace.get_current_span(extract(metadata)).get_span_context()
    assert parent.span_id == span.get_span_context().span_id and parent.is_remote
    assert not trace.get_current_span(extract(())).get_span_context().is_valid


# ------------------------------------------------------------ the proxy's spans, over a fake model server


class RecordingPool:
    """UpstreamPool with tracing on: records each call's request and metadata, answers y = x."""

    max_in_flight = max_in_flight_per_instance = 0  # UpstreamPool's bounds: none here
    in_flight = 0

    def __init__(self, delay: float = 0.0):
        self.tracing = True
        self.calls = []
        self.delay = delay

    def stub(self, address):
        pool = self

        class Stub:
            async def ModelInfer(self, request, timeout=None, metadata=None):
                pool.calls.append((address, request, dict(metadata or ())))
                await asyncio.sleep(pool.delay)
                response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                response.outputs.add(name="y", datatype="FP32", shape=list(request.inputs[0].shape))
                response.raw_output_contents.append(request.raw_input_contents[0])
                return response

        return Stub()


def traced_dataplane(batching=None, tracer=None):
    exporter = InMemorySpanExporter()
    if tracer is None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
    variant = control_pb2.VariantRoute(
        variant_name="v1", model_name="m1", weight=1,
        instances=[control_pb2.InstanceRoute(instance_id="i0", address="a0")],
        inputs=[control_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
    )
    if batching:
        variant.batching.CopyFrom(control_pb2.BatchingConfig(**batching))
    router = Router(seed=1)
    assert router.apply(control_pb2.RoutingTable(version=1, endpoints=[
        control_pb2.EndpointRoute(endpoint_name="ep", variants=[variant])]))
    pool = RecordingPool(delay=0.01)
    dataplane = DataPlane(router, pool, StatsBook(), send=lambda v, r, t: infer_on_variant(pool, v, r, t), tracer=tracer)
    return dataplane, pool, tracer, exporter


def infer_request(rid: str, target: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="ep", id=rid)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    if target:
        request.parameters["target_variant"].string_param = target
    return request


def test_an_unbatched_request_names_variant_reason_and_instance_and_passes_its_context_on():
    dataplane, pool, tracer, exporter = traced_dataplane()

    async def main():
        with tracer.start_as_current_span("proxy", kind=SpanKind.SERVER) as span:
            await dataplane.model_infer(infer_request("r1", target="v1"))
        return span

    span = asyncio.run(main())
    (_, _, metadata), = pool.calls
    assert metadata["traceparent"].split("-")[2] == format(span.get_span_context().span_id, "016x")
    (finished,) = exporter.get_finished_spans()
    a = finished.attributes
    assert (a["mve.endpoint"], a["mve.variant"], a["mve.routing_reason"], a["mve.instance"]) == ("ep", "v1", "target", "i0")
    assert a["mve.inference_id"] == "r1"


def test_a_batch_of_three_is_one_call_whose_span_links_every_member():
    dataplane, pool, tracer, exporter = traced_dataplane({"max_batch_size": 3, "max_delay_us": 1_000_000})

    async def member(i):
        with tracer.start_as_current_span(f"caller-{i}", kind=SpanKind.SERVER):
            await dataplane.model_infer(infer_request(f"r{i}"))

    async def main():
        await asyncio.wait_for(asyncio.gather(*(member(i) for i in range(3))), 10)

    asyncio.run(main())
    assert len(pool.calls) == 1
    spans = {s.name: s for s in exporter.get_finished_spans()}
    members = [spans[f"caller-{i}"] for i in range(3)]
    batch = spans["inference.GRPCInferenceService/ModelInfer"]
    assert batch.kind == SpanKind.CLIENT
    assert {link.context.span_id for link in batch.links} == {m.context.span_id for m in members}
    assert batch.parent.span_id == members[0].context.span_id
    assert batch.attributes["mve.batch_size"] == 3 and batch.attributes["mve.instance"] == "i0"
    for m in members:
        assert m.attributes["mve.batch_size"] == 3 and m.attributes["mve.queue_time_us"] >= 0
        assert [link.context.span_id for link in m.links] == [batch.context.span_id]
    (_, _, metadata), = pool.calls
    assert metadata["traceparent"].split("-")[2] == format(batch.context.span_id, "016x")



# ------------------------------------------------------------ the per-request sampling fast path


def head_sampled(monkeypatch, sampler: str, arg: str = ""):
    """setup_tracing as the env says, its spans exported to memory (not to a collector)."""
    import mve.tracing
    from mve.tracing import setup_tracing

    exporter = InMemorySpanExporter()
    monkeypatch.setattr(mve.tracing, "_exporter", lambda name, protocol: exporter)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    return setup_tracing("test"), exporter


def calls(tracing, metadatas):
    """(recorded?, trace id, outgoing sampled flag, outgoing span id or None) per call.

    A dropped call sends no header upstream (None), so its trace id is the one it logs.
    """
    from mve.tracing import ServerSpan, current_trace_id

    out = []
    for metadata in metadatas:
        with ServerSpan(tracing.tracer, "s/M", metadata, {"a": 1}) as span:
            outgoing = outgoing_metadata()
            if outgoing is None:
                assert not span.is_recording()
                out.append((False, current_trace_id(), False, None))
                continue
            _, trace_id, span_id, flags = dict(outgoing)["traceparent"].split("-")
            assert current_trace_id() == trace_id
            out.append((span.is_recording(), trace_id, bool(int(flags, 16) & 1), span_id))
    return out


def test_the_fast_path_samples_the_same_traces_as_the_sdks_ratio_sampler(monkeypatch):
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    tracing, exporter = head_sampled(monkeypatch, "parentbased_traceidratio", "0.25")
    results = calls(tracing, [()] * 2000)
    tracing.shutdown()
    bound = TraceIdRatioBased.get_bound_for_rate(0.25)
    for recording, trace_id, sampled, _ in results:
        assert recording == sampled == ((int(trace_id, 16) & (2**64 - 1)) < bound)
    assert 350 < sum(r for r, *_ in results) < 650
    exported = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in exported} == {t for r, t, *_ in results if r}
    assert all(s.attributes["a"] == 1 for s in exported)


def test_a_remote_parent_decides_under_parent_based_sampling(monkeypatch):
    tracing, exporter = head_sampled(monkeypatch, "parentbased_traceidratio", "0")
    sampled = (("traceparent", f"00-{'ab' * 16}-{'cd' * 8}-01"),)
    dropped = (("traceparent", f"00-{'ef' * 16}-{'cd' * 8}-00"), ("tracestate", "k=v"))
    bad = (("traceparent", "00-xyz"),)
    (rec1, t1, s1, _), (rec2, t2, s2, span2), (rec3, _, s3, _), (rec4, _, s4, _) = calls(
        tracing, [sampled, dropped, (), bad])
    assert rec1 and s1 and t1 == "ab" * 16
    assert not rec2 and not s2 and t2 == "ef" * 16 and span2 is None  # dropped: nothing goes upstream
    assert not (rec3 or s3 or rec4 or s4)
    tracing.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.parent.span_id == int("cd" * 8, 16)


def test_a_dropped_call_forwards_the_callers_tracestate():
    from mve.tracing import _HeadSampling

    head = _HeadSampling(0, True, ids=None)
    out = head.unsampled_metadata((("traceparent", f"00-{'ef' * 16}-{'cd' * 8}-00"), ("tracestate", "k=v")))
    assert out[1] == ("tracestate", "k=v") and out[0][1].startswith(f"00-{'ef' * 16}-")


def test_a_batch_of_dropped_and_sampled_callers_traces_only_the_sampled(monkeypatch):
    from mve.tracing import ServerSpan

    tracing, exporter = head_sampled(monkeypatch, "parentbased_traceidratio", "0")
    dataplane, pool, _, _ = traced_dataplane({"max_batch_size": 3, "max_delay_us": 1_000_000}, tracing.tracer)
    sampled = (("traceparent", f"00-{'ab' * 16}-{'cd' * 8}-01"),)

    async def member(i, metadata):
        with ServerSpan(tracing.tracer, f"caller-{i}", metadata, {}):
            await dataplane.model_infer(infer_request(f"r{i}"))

    async def batch(metadatas):
        await asyncio.wait_for(asyncio.gather(*(member(i, m) for i, m in enumerate(metadatas))), 10)

    asyncio.run(batch([(), (), ()]))  # all three dropped: no span anywhere, no header upstream
    (_, _, metadata), = pool.calls
    assert metadata == {}
    asyncio.run(batch([(), sampled, ()]))  # one sampled: the batch span is its child, linked to it only
    tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"caller-1", "inference.GRPCInferenceService/ModelInfer"}
    batch_span, caller = spans["inference.GRPCInferenceService/ModelInfer"], spans["caller-1"]
    assert batch_span.parent.span_id == caller.context.span_id
    assert [link.context.span_id for link in batch_span.links] == [caller.context.span_id]
    assert pool.calls[1][2]["traceparent"].split("-")[2] == format(batch_span.context.span_id, "016x")


def test_model_servers_trace_only_what_their_caller_samples():
    from mve.control.instances import model_server_env

    traced = model_server_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                               "OTEL_TRACES_SAMPLER_ARG": "0.01"}, {})
    assert traced["OTEL_TRACES_SAMPLER"] == "parentbased_always_off"
    assert model_server_env({"OTEL_TRACES_EXPORTER": "otlp"}, {"OTEL_TRACES_SAMPLER": "always_on"})["OTEL_TRACES_SAMPLER"] == "always_on"
    assert "OTEL_TRACES_SAMPLER" not in model_server_env({"PATH": "/bin"}, {})
