"""OpenTelemetry tracing for the three services, configured by the standard ``OTEL_*`` variables only.

Each service calls `setup_tracing` once at start with its default service name (``mve-proxy``,
``mve-model-server``, ``mve-control-plane``). With ``OTEL_TRACES_EXPORTER`` unset or ``none`` (or
``OTEL_SDK_DISABLED=true``) it returns None, imports nothing of the SDK, and the services' hot
paths check one ``is None`` and do nothing else. Otherwise it builds a `TracerProvider` with the
SDK's own sampler (``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``), resource
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and OTLP exporter (``OTEL_EXPORTER_OTLP_*``),
behind a `BatchSpanProcessor`, so export runs on its own thread, off the request path.

The SDK quietly falls back to defaults on a sampler or protocol it does not know; here such a value
is refused at start with a `TracingConfigError` that names the variable (`tracing_config`).

Trace context travels in gRPC metadata as W3C ``traceparent`` / ``tracestate`` (`extract`,
`outgoing_metadata`).
"""

from __future__ import annotations

import math
import os
import re
from contextvars import ContextVar
from random import getrandbits
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
EXPORTERS = ("otlp", "console")
PROTOCOLS = ("grpc", "http/protobuf")


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable this build cannot honour; the message names it and the accepted values."""


@dataclass(frozen=True)
class TracingConfig:
    """What the ``OTEL_*`` variables ask for, checked (`tracing_config`)."""

    exporters: tuple[str, ...]
    protocol: str
    sampler: str
    sampler_arg: float | None


def _get(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def tracing_config(env: Mapping[str, str] | None = None) -> TracingConfig | None:
    """The checked tracing configuration in `env` (default ``os.environ``), or None when tracing is off.

    Off: ``OTEL_TRACES_EXPORTER`` unset, empty or ``none``, or ``OTEL_SDK_DISABLED=true``.
    Raises `TracingConfigError` for an exporter other than otlp/console, an OTLP protocol other
    than grpc/http/protobuf, an unknown sampler, or a ratio that is not a number in [0, 1].
    """
    env = os.environ if env is None else env
    if _get(env, "OTEL_SDK_DISABLED").lower() == "true":
        return None
    raw = _get(env, "OTEL_TRACES_EXPORTER").lower()
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if not names or names == ("none",):
        return None
    for name in names:
        if name not in EXPORTERS:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={raw!r}: mve exports traces with "
                f"{' or '.join(EXPORTERS)} (or 'none' for no tracing); {name!r} is not available"
            )
    protocol = (_get(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _get(env, "OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
    protocol = protocol.lower()
    if "otlp" in names and protocol not in PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the OTLP trace exporter speaks {' or '.join(PROTOCOLS)}"
        )
    sampler = (_get(env, "OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    if sampler not in SAMPLERS:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={sampler!r} is not a sampler; use one of {', '.join(SAMPLERS)}")
    arg = _get(env, "OTEL_TRACES_SAMPLER_ARG")
    ratio = None
    if sampler in RATIO_SAMPLERS and arg:
        try:
            ratio = float(arg)
        except ValueError:
            ratio = math.nan
        if not 0.0 <= ratio <= 1.0:  # nan fails too
            raise TracingConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={arg!r}: {sampler} takes the fraction of traces to keep, a number from 0 to 1"
            )
    return TracingConfig(names, protocol, sampler, ratio)


class Tracer:
    """The SDK's tracer, and what `ServerSpan` needs to settle an unsampled call without it.

    `head_sampling` is None where every root is sampled (always_on samplers): there the SDK decides.
    """

    def __init__(self, sdk_tracer, head_sampling: "_HeadSampling | None"):
        self._sdk = sdk_tracer
        self.head_sampling = head_sampling

    def start_span(self, *args, **kwargs):
        return self._sdk.start_span(*args, **kwargs)

    def start_as_current_span(self, *args, **kwargs):
        return self._sdk.start_as_current_span(*args, **kwargs)


class _HeadSampling:
    """The configured sampler's decision, made before the SDK is asked (the per-request fast path).

    Most calls are not sampled (``OTEL_TRACES_SAMPLER_ARG=0.01``: 99 in 100), and for those the
    SDK's `start_span`, a span object and a context attach cost more than the rest of the
    tracing together. This makes the same decision as the SDK's sampler (``traceidratio``: the
    trace id's low 64 bits under the rate's bound; ``parentbased_*``: the caller's sampled flag)
    from the call's ``traceparent`` alone. A dropped call gets only the ``traceparent`` (flags 00,
    the caller's trace id or a random one, a fresh span id) that the next hop must see, so it does
    not sample the call as a root of its own. A sampled call goes to the SDK, with the trace id
    already drawn for a root (`_IdGenerator`), so the SDK's sampler says yes to it too.
    """

    LIMIT = (1 << 64) - 1

    def __init__(self, bound: int, parent_based: bool, ids):
        from opentelemetry import trace

        self.bound = bound
        self.parent_based = parent_based
        self.ids = ids
        self.invalid_span = trace.INVALID_SPAN  # what a dropped call's ServerSpan gives its block

    def unsampled_metadata(self, metadata) -> tuple | None:
        """The outgoing trace metadata of a call the sampler drops, or None when the SDK must make a span."""
        header = state = None
        for key, value in metadata or ():
            if key == "traceparent":
                header = value
            elif key == "tracestate":
                state = value
        parent = _parse_traceparent(header) if header else None
        if parent is not None:
            trace_id, sampled = parent
            if self.parent_based:
                if sampled:
                    return None
            elif (trace_id & self.LIMIT) < self.bound:
                return None
            ids = getrandbits(64) | 1  # a fresh span id (never the all-zero invalid one)
            outgoing = (("traceparent", f"00-{trace_id:032x}-{ids:016x}-00"),)
            return outgoing + (("tracestate", state),) if state else outgoing
        # A root: one draw for the trace id (high 128 bits) and the span id (low 64), hex at once.
        ids = getrandbits(192) | (1 << 64) | 1  # neither id all-zero (invalid)
        trace_id = ids >> 64
        if (trace_id & self.LIMIT) < self.bound:
            self.ids.next_trace_id = trace_id
            return None
        digits = ids.to_bytes(24, "big").hex()
        return (("traceparent", f"00-{digits[:32]}-{digits[32:]}-00"),)


_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def _parse_traceparent(header: str) -> tuple[int, bool] | None:
    """(trace id, sampled) of a valid W3C traceparent, None otherwise (as OpenTelemetry's propagator)."""
    match = _TRACEPARENT.match(header.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return int(trace_id, 16), bool(int(flags, 16) & 1)


# The outgoing trace metadata of the current call when its sampler dropped it (no span exists).
_UNSAMPLED: ContextVar[tuple | None] = ContextVar("mve_unsampled_trace", default=None)


def _id_generator():
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class _IdGenerator(RandomIdGenerator):
        """The SDK's random ids, but first the trace id `_HeadSampling` drew for a sampled root."""

        next_trace_id = 0

        def generate_trace_id(self) -> int:
            trace_id = self.next_trace_id
            if trace_id:
                self.next_trace_id = 0
                return trace_id
            return super().generate_trace_id()

    return _IdGenerator()


class Tracing:
    """A service's tracer and the provider behind it; `shutdown` flushes what is left and stops export."""

    def __init__(self, tracer, provider):
        self.tracer = tracer
        self.provider = provider

    def shutdown(self) -> None:
        """Export the spans still queued (bounded by the processor's timeout) and stop."""
        self.provider.shutdown()


def setup_tracing(default_service_name: str) -> Tracing | None:
    """Tracing for a service as the ``OTEL_*`` variables say, or None when they leave it off.

    Raises `TracingConfigError` (see `tracing_config`). ``OTEL_SERVICE_NAME`` (or ``service.name``
    in ``OTEL_RESOURCE_ATTRIBUTES``) wins over `default_service_name`.
    """
    config = tracing_config()
    if config is None:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace import sampling

    from mve import __version__

    resource = Resource.create()  # the SDK reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    resource = resource.merge(Resource({"service.version": __version__}))
    # The SDK's samplers, by the names OTEL_TRACES_SAMPLER takes (checked above: no silent fallback).
    sampler = sampling._KNOWN_SAMPLERS[config.sampler]
    parent_based = config.sampler.startswith("parentbased_")
    if config.sampler in RATIO_SAMPLERS:
        rate = 1.0 if config.sampler_arg is None else config.sampler_arg
        sampler = sampler(rate)
        bound = sampling.TraceIdRatioBased.get_bound_for_rate(rate)
    else:
        bound = None if config.sampler.endswith("always_on") else 0
    ids = _id_generator()
    provider = TracerProvider(resource=resource, sampler=sampler, id_generator=ids)
    for name in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, config.protocol)))
    head = _HeadSampling(bound, parent_based, ids) if bound is not None else None
    return Tracing(Tracer(provider.get_tracer("mve", __version__), head), provider)


def _exporter(name: str, protocol: str):
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    # The exporters read OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _INSECURE themselves.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


# ------------------------------------------------------------ W3C trace context in gRPC metadata


def _propagator():
    global _PROPAGATOR
    if _PROPAGATOR is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _PROPAGATOR = TraceContextTextMapPropagator()
    return _PROPAGATOR


_PROPAGATOR = None


class _MetadataGetter:
    """An OTel getter over gRPC invocation metadata (a sequence of key/value pairs)."""

    def get(self, carrier, key: str):
        values = [value for k, value in carrier if k == key]
        return values or None

    def keys(self, carrier):
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


def extract(metadata: Iterable | None):
    """The OTel context carried by a call's ``traceparent`` / ``tracestate`` metadata (empty when none)."""
    return _propagator().extract(tuple(metadata or ()), getter=_GETTER)


def outgoing_metadata(context=None) -> tuple[tuple[str, str], ...] | None:
    """``traceparent`` (and ``tracestate``) for the span current in `context` (default: the current one).

    Without `context`, a call its sampler dropped (`ServerSpan`) sends nothing (None): one more
    header on every upstream call cost the proxy about 100 us of CPU per request on a 2-core VM
    (benchmarks/e2e_tracing.py, 0% sampled with and without it), and the model servers mve starts
    never begin a trace of their own (their sampler is ``parentbased_always_off``, see
    `mve.control.instances`), so an unsampled request needs no header to stay untraced.
    """
    if context is None:
        unsampled = _UNSAMPLED.get()
        if unsampled is not None:
            return None
    carrier: dict[str, str] = {}
    _propagator().inject(carrier, context=context)
    return tuple(carrier.items())


class ServerSpan:
    """A SERVER span for one gRPC call, current while the call runs, joined to the caller's ``traceparent``.

    `tracer.start_as_current_span` by hand, at a fraction of its cost (which matters per request):
    with a `Tracer` from `setup_tracing`, a call its sampler drops never reaches the SDK
    (`_HeadSampling`) and costs a random id, a non-recording span and one context attach;
    `attributes` are set only on a span that records. An exception leaving the block is recorded
    and sets the status to ERROR.
    """

    __slots__ = ("_tracer", "_name", "_metadata", "_attributes", "_span", "_token", "_unsampled_token")

    def __init__(self, tracer, name: str, metadata, attributes: dict):
        self._tracer = tracer
        self._name = name
        self._metadata = metadata
        self._attributes = attributes

    def __enter__(self):
        head = getattr(self._tracer, "head_sampling", None)  # None: an SDK tracer, or every root sampled
        if head is not None:
            unsampled = head.unsampled_metadata(self._metadata)
            if unsampled is not None:
                self._span = None
                self._token = _UNSAMPLED.set(unsampled)
                return head.invalid_span
        from opentelemetry import context, trace

        span = self._span = self._tracer.start_span(
            self._name, context=extract(self._metadata), kind=trace.SpanKind.SERVER
        )
        if span.is_recording():
            span.set_attributes(self._attributes)
        self._unsampled_token = _UNSAMPLED.set(None)
        self._token = context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(self, exc_type, exc, tb):
        span = self._span
        if span is None:
            _UNSAMPLED.reset(self._token)
            return False
        from opentelemetry import context, trace

        context.detach(self._token)
        _UNSAMPLED.reset(self._unsampled_token)
        if exc is not None and span.is_recording():
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{exc_type.__name__}: {exc}"))
        span.end()
        return False


def dropped() -> bool:
    """True inside a call its sampler dropped (no span exists: skip any span work)."""
    return _UNSAMPLED.get() is not None


def capture():
    """The current call's trace, to carry it elsewhere (a batch): its span, or its unsampled metadata."""
    unsampled = _UNSAMPLED.get()
    if unsampled is not None:
        return unsampled
    from opentelemetry import trace

    return trace.get_current_span()


class activate:
    """Make a trace from `capture` the current one for the block (a batch's upstream call)."""

    __slots__ = ("_trace", "_token", "_unsampled_token")

    def __init__(self, captured):
        self._trace = captured

    def __enter__(self):
        from opentelemetry import context, trace

        captured = self._trace
        if isinstance(captured, tuple):
            self._unsampled_token = _UNSAMPLED.set(captured)
            self._token = context.attach(context.Context())
        else:
            self._unsampled_token = _UNSAMPLED.set(None)
            self._token = context.attach(trace.set_span_in_context(captured))
        return captured

    def __exit__(self, *exc):
        from opentelemetry import context

        context.detach(self._token)
        _UNSAMPLED.reset(self._unsampled_token)
        return False


def current_trace_id() -> str:
    """The current call's trace id in hex ("" without one): what a DEBUG log line carries."""
    unsampled = _UNSAMPLED.get()
    if unsampled is not None:
        return unsampled[0][1][3:35]
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


__all__ = [
    "ServerSpan",
    "activate",
    "capture",
    "current_trace_id",
    "dropped",
    "Tracer",
    "Tracing",
    "TracingConfig",
    "TracingConfigError",
    "extract",
    "outgoing_metadata",
    "setup_tracing",
    "tracing_config",
]
