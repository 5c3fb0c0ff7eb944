"""The control plane's spans: one SERVER span per API call, joined to the caller's ``traceparent``.

Installed (`TracingInterceptor`) only when tracing is on. The reconciler's work started by a call
(a reconcile pass, each instance launch and stop) is traced in `mve.control.reconciler` as children
of the call's span. WatchRoutes (a stream that lives as long as a proxy) and ReportStats (every
proxy, every second) are plumbing between the services, not operator calls, and are not traced.
"""

from __future__ import annotations

import grpc
from mve.tracing import ServerSpan

UNTRACED = frozenset({"WatchRoutes", "ReportStats"})
_NAMED_FIELDS = (
    ("endpoint_name", "mve.endpoint"),
    ("endpoint_config_name", "mve.endpoint_config"),
    ("model_name", "mve.model"),
)


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary method (except `UNTRACED`) in a SERVER span named ``service/method``.

    Placed after `mve.errors.ErrorInterceptor` in the chain, so the span sees the domain error
    (recorded as an exception, status ERROR) before it is mapped to a gRPC status.
    """

    def __init__(self, tracer):
        self._tracer = tracer

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None:
            return handler
        service, _, name = method.lstrip("/").rpartition("/")
        if name in UNTRACED or service.startswith("grpc."):
            return handler
        return self._wrap(handler, service, name)

    def _wrap(self, handler, service: str, name: str):
        inner = handler.unary_unary
        tracer = self._tracer
        span_name = f"{service}/{name}"

        async def traced(request, context):
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            for field, attribute in _NAMED_FIELDS:
                value = getattr(request, field, "")
                if value and isinstance(value, str):
                    attributes[attribute] = value
            with ServerSpan(tracer, span_name, context.invocation_metadata(), attributes):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
