"""Error mapping for the proxy's gRPC handlers, done at registration instead of by an interceptor.

A grpc.aio server with any interceptor runs the interceptor chain (a coroutine and a fresh method
handler) on every call. The proxy instead wraps each handler once, when it is registered, with the
same mapping `mve.errors.ErrorInterceptor` applies (`mve.errors.map_errors`); a behaviour marked
``maps_errors = True`` does the mapping itself and is registered as it is (the ModelInfer hot path).
Every door of the proxy is SageMaker Runtime's: errors take the runtime's names (`mve.errors.RUNTIME`:
bad input and a missing endpoint are ``ValidationError``, not the control API's ValidationException).
"""

from __future__ import annotations

import grpc

from mve.errors import RUNTIME, map_errors


class _MappedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are wrapped once per method, then reused."""

    def __init__(self, inner: grpc.GenericRpcHandler):
        self._inner = inner
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        try:
            return self._wrapped[method]
        except KeyError:
            pass
        handler = map_errors(self._inner.service(handler_call_details), RUNTIME)
        if len(self._wrapped) < 4096:  # bounded: unknown method names must not grow it forever
            self._wrapped[method] = handler
        return handler


class ErrorMappingServer:
    """A grpc.aio server seen through registration: every handler added through it maps errors."""

    def __init__(self, server: grpc.aio.Server):
        self.server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Register generic handlers, each wrapped (per method, once)."""
        self.server.add_generic_rpc_handlers(tuple(_MappedGenericHandler(h) for h in handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        """Register a service's method handlers, each wrapped once."""
        self.server.add_registered_method_handlers(
            service_name, {name: map_errors(h, RUNTIME) for name, h in method_handlers.items()}
        )

    def __getattr__(self, name):
        return getattr(self.server, name)
