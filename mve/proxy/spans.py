"""The proxy's spans: one SERVER span per call, and one CLIENT span per batch of several callers.

Imported only when tracing is on (`mve.tracing.setup_tracing` returned a tracer): with tracing off
the proxy never builds a span, attaches a context or writes trace metadata.

- ``mve.v1.EndpointRuntime/InvokeEndpoint`` and ``inference.GRPCInferenceService/ModelInfer``
  (kind SERVER): the caller's W3C ``traceparent`` is its parent. It names the endpoint, the
  variant, the routing reason (target, sticky or weight), the instance, and for a batched
  variant the batch's size and this request's queue time.
- A batch of one goes upstream with its caller's span as the model server's parent. A batch of
  several is one upstream call: its ``inference.GRPCInferenceService/ModelInfer`` span (kind
  CLIENT) is a child of the first sampled member's span, links to every sampled member's span,
  and each of those links back to it. The model server's span is its child. A batch with no
  sampled member makes no span and goes upstream in its first member's (unsampled) trace.
- A call the sampler drops makes no span object at all (`mve.tracing.ServerSpan`): it only
  passes its unsampled ``traceparent`` on, so the model server does not sample it either.
- A shadow variant's copy of a sampled call is a CLIENT ``inference.GRPCInferenceService/ModelInfer``
  span in the caller's trace (a child of its SERVER span, which has usually ended by then) with
  ``mve.shadow`` true; the shadow's model server span is its child.

Attribute names: OpenTelemetry's RPC semantic conventions (rpc.system, rpc.service, rpc.method,
server.address, server.port) and ``mve.*`` for the rest (docs/observability.md lists them).
"""

from __future__ import annotations

import contextlib

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from mve.tracing import ServerSpan, activate, capture, current_trace_id, dropped

INFERENCE_SERVICE = "inference.GRPCInferenceService"
RUNTIME_SERVICE = "mve.v1.EndpointRuntime"

__all__ = [
    "answered", "batched_alone", "capture", "current_trace_id", "failed", "picked", "send_batch", "server_span",
    "shadow_call",
]


def server_span(tracer, service: str, method: str, grpc_context, address: tuple[str, int] | None):
    """The SERVER span of one call, current while the handler runs, joined to the caller's trace."""
    key = (service, method, address)
    named = _SERVER_SPANS.get(key)
    if named is None:
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        if address is not None:
            attributes["server.address"], attributes["server.port"] = address
        named = _SERVER_SPANS[key] = (f"{service}/{method}", attributes)
    return ServerSpan(tracer, named[0], grpc_context.invocation_metadata(), named[1])


_SERVER_SPANS: dict[tuple, tuple[str, dict]] = {}  # (service, method, address) -> (span name, attributes)


def picked(variant, target_variant: str, routing_key: str, inference_id: str = "") -> None:
    """Name the endpoint, the variant and why it was picked on the current span."""
    if dropped():
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    reason = "target" if target_variant else "sticky" if routing_key else "weight"
    span.set_attributes(
        {"mve.endpoint": variant.endpoint_name, "mve.variant": variant.name, "mve.routing_reason": reason}
    )
    if inference_id:
        span.set_attribute("mve.inference_id", inference_id)


def answered(result) -> None:
    """Name the instance that answered, and its model latency, on the current span."""
    if dropped():
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(_instance_attributes(result))


def _instance_attributes(result) -> dict:
    return {
        "mve.instance": result.instance.instance_id,
        "mve.instance_address": result.instance.address,
        "mve.model_latency_us": int(result.model_latency_us),
    }


def batched_alone(rows: int) -> None:
    """A request sent as a batch of one at once: batch size and no queue time on the current span."""
    if dropped():
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({"mve.batch_size": rows, "mve.batch_requests": 1, "mve.queue_time_us": 0})


async def send_batch(tracer, send, variant, request, timeout: float, members, dispatched_at: float):
    """`send` one batch with the trace context of its members (see the module docstring).

    Each member's `span` is what `mve.tracing.capture` took when it queued: its span, or for a
    request its sampler dropped, the trace metadata decided for it.
    """
    rows = sum(m.rows for m in members)
    recording = [m.span for m in members if not isinstance(m.span, tuple) and m.span.is_recording()]
    for member in members:
        span = member.span
        if not isinstance(span, tuple) and span.is_recording():
            span.set_attributes(
                {
                    "mve.batch_size": rows,
                    "mve.batch_requests": len(members),
                    "mve.queue_time_us": int((dispatched_at - member.enqueued_at) * 1e6),
                }
            )
    if len(members) == 1 or not recording:
        # One caller, or none sampled: the upstream call goes in the (first) caller's own trace.
        with activate(members[0].span):
            return await send(variant, request, timeout)
    with activate(recording[0]), tracer.start_as_current_span(
        f"{INFERENCE_SERVICE}/ModelInfer",
        kind=SpanKind.CLIENT,
        links=[Link(s.get_span_context()) for s in recording],
        attributes={
            "rpc.system": "grpc",
            "rpc.service": INFERENCE_SERVICE,
            "rpc.method": "ModelInfer",
            "mve.endpoint": variant.endpoint_name,
            "mve.variant": variant.name,
            "mve.batch_size": rows,
            "mve.batch_requests": len(members),
        },
    ) as batch_span:
        if batch_span.is_recording():
            for span in recording:
                with contextlib.suppress(Exception):  # a member's span may have ended (caller gone)
                    span.add_link(batch_span.get_span_context(), {"mve.link": "batch"})
        result = await send(variant, request, timeout)
        if batch_span.is_recording():
            host, _, port = result.instance.address.rpartition(":")
            batch_span.set_attributes(_instance_attributes(result))
            if port.isdigit():
                batch_span.set_attributes({"server.address": host.strip("[]"), "server.port": int(port)})
        return result




@contextlib.contextmanager
def shadow_call(tracer, shadow):
    """The CLIENT span of a shadow's copy, current for the block; none when the caller's trace is unsampled.

    Runs in the shadow's task, whose context is the caller's as it was when the copy was made.
    """
    if dropped() or not trace.get_current_span().get_span_context().trace_flags.sampled:
        yield None
        return
    with tracer.start_as_current_span(
        f"{INFERENCE_SERVICE}/ModelInfer",
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": INFERENCE_SERVICE,
            "rpc.method": "ModelInfer",
            "mve.endpoint": shadow.endpoint_name,
            "mve.variant": shadow.name,
            "mve.shadow": True,
        },
    ) as span:
        yield span


def failed(span, message: str) -> None:
    """Mark `span` failed (ERROR status with `message`)."""
    if span.is_recording():
        span.set_status(trace.Status(trace.StatusCode.ERROR, message))
