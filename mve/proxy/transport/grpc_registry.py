"""Error mapping and invocation auth for the proxy's gRPC handlers, done at registration instead of
by interceptors.

A grpc.aio server with any interceptor runs the interceptor chain (a coroutine and a fresh method
handler) on every call. The proxy instead wraps each handler once, when it is registered, with the
same mapping `mve.errors.ErrorInterceptor` applies (`mve.errors.map_errors`); a behaviour marked
``maps_errors = True`` does the mapping itself and is registered as it is (the ModelInfer hot path).
Every door of the proxy is SageMaker Runtime's: errors take the runtime's names (`mve.errors.RUNTIME`:
bad input and a missing endpoint are ``ValidationError``, not the control API's ValidationException).

Invocation auth (``--invoke-token-file``, ``--tls-client-auth require``): given a `Gatekeeper`,
every handler registered through `ErrorMappingServer` whose method the gatekeeper's policy does not
leave open (`mve.authn.RuntimePolicy`: everything but health and reflection, the raw ModelInfer
included) is wrapped so that the caller is checked before the handler runs, and refused with
UNAUTHENTICATED / PERMISSION_DENIED named as the runtime names them. Without a gatekeeper nothing
is wrapped: the default path runs no check at all.
"""

from __future__ import annotations

import grpc

from mve.authn import OPEN, Gatekeeper
from mve.errors import RUNTIME, map_errors, to_status


def _authorized(handler: grpc.RpcMethodHandler | None, method: str, gatekeeper: Gatekeeper | None):
    """`handler` with the caller checked first, or `handler` itself for open methods or no gatekeeper."""
    if handler is None or gatekeeper is None or gatekeeper.policy.rule(method).kind == OPEN:
        return handler
    check = gatekeeper.check
    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            error = check(method, context.invocation_metadata(), context)
            if error is not None:
                await context.abort_with_status(to_status(error, RUNTIME))
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def unary_stream(request, context):
            error = check(method, context.invocation_metadata(), context)
            if error is not None:
                await context.abort_with_status(to_status(error, RUNTIME))
            async for response in inner_stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    # The proxy serves no client-streaming method; one added later must not slip past the check.
    raise TypeError(f"{method}: invocation auth covers unary and server-streaming methods only")


class _MappedGenericHandler(grpc.GenericRpcHandler):
    """Every service of the server as ONE generic handler: a method's handler is found, wrapped
    once, then answered from one dict on every later call."""

    def __init__(self, gatekeeper: Gatekeeper | None):
        self._gatekeeper = gatekeeper
        self._inner: list[grpc.GenericRpcHandler] = []
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def add(self, inner: grpc.GenericRpcHandler) -> None:
        """Serve `inner`'s methods too (after those added before it, as grpc tries them)."""
        self._inner.append(inner)
        self._wrapped = {method: h for method, h in self._wrapped.items() if h is not None}

    def add_method(self, method: str, handler: grpc.RpcMethodHandler) -> None:
        """Serve `method` (``/service/Method``) with `handler`, ahead of the generic handlers."""
        self._wrapped[method] = self._wrap(handler, method)

    def _wrap(self, handler, method: str):
        return _authorized(map_errors(handler, RUNTIME), method, self._gatekeeper)

    def service(self, handler_call_details):
        method = handler_call_details.method
        try:
            return self._wrapped[method]
        except KeyError:
            pass
        handler = None
        for inner in self._inner:
            handler = inner.service(handler_call_details)
            if handler is not None:
                break
        handler = self._wrap(handler, method)
        if len(self._wrapped) < 4096:  # bounded: unknown method names must not grow it forever
            self._wrapped[method] = handler
        return handler


class ErrorMappingServer:
    """A grpc.aio server seen through registration: every handler added through it maps errors and,
    with a `gatekeeper`, checks its caller first (open methods excepted).

    Every service goes to the server as part of one generic handler, never as registered methods:
    grpc's generated ``add_XServicer_to_server`` (grpcio >= 1.62) also calls
    ``add_registered_method_handlers``, and a grpc.aio server then keeps one pending
    request-call task per registered method beside the generic one and waits on all of them
    (``asyncio.wait(FIRST_COMPLETED)``) for every incoming call: each call pays for a done
    callback added to and removed from every one of them, and a new task for the method served.
    Registered handlers given here are served ahead of the generic ones, as grpc serves them.
    """

    def __init__(self, server: grpc.aio.Server, gatekeeper: Gatekeeper | None = None):
        self.server = server
        self.gatekeeper = gatekeeper
        self._handler = _MappedGenericHandler(gatekeeper)
        server.add_generic_rpc_handlers((self._handler,))

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Serve generic handlers, each method wrapped once, on its first call."""
        for handler in handlers:
            self._handler.add(handler)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        """Serve a service's method handlers, each wrapped once, through the one generic handler."""
        for name, handler in method_handlers.items():
            self._handler.add_method(f"/{service_name}/{name}", handler)

    def __getattr__(self, name):
        return getattr(self.server, name)
