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
    if config.sampler in RATIO_SAMPLERS:
        sampler = sampler(1.0 if config.sampler_arg is None else config.sampler_arg)
    provider = TracerProvider(resource=resource, sampler=sampler)
    for name in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, config.protocol)))
    return Tracing(provider.get_tracer("mve", __version__), provider)


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


def outgoing_metadata(context=None) -> tuple[tuple[str, str], ...]:
    """``traceparent`` (and ``tracestate``) for the span current in `context` (default: the current one)."""
    carrier: dict[str, str] = {}
    _propagator().inject(carrier, context=context)
    return tuple(carrier.items())


def trace_id_hex(span) -> str:
    """The 32-hex-digit trace id of `span`, or "" when it has none."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


__all__ = [
    "Tracing",
    "TracingConfig",
    "TracingConfigError",
    "extract",
    "outgoing_metadata",
    "setup_tracing",
    "trace_id_hex",
    "tracing_config",
]
