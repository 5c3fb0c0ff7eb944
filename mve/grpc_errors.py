"""Server-side wrapping that turns what a gRPC handler raises into a status, named by `mve.errors`.

`ErrorInterceptor` (or `map_errors` at registration, or `abort_with_error` in a handler that maps
its own errors) ends a failed call with `mve.errors.to_status`: the exception's gRPC code and
the name the API gives it as the ErrorInfo reason. Anything that is not an `MveError` is logged
and answered as InternalFailure without its internals; request bytes that are not the method's
message are a validation error naming the message.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import grpc

from mve.errors import InternalFailure, MveError, ValidationError, api_of_method, to_status

log = logging.getLogger(__name__)


async def abort_with_error(context, error: Exception, where: str = "handler", service: str | None = None) -> None:
    """End the call with `error`'s status: an MveError's own, anything else as InternalFailure;
    named as `service` names it (`to_status`).

    An unexpected exception is logged with its traceback (the caller sees only its type). When the
    call has ended already (its deadline passed or the caller cancelled while the error was on its
    way), there is no one left to tell: the handler ends as cancelled, quietly.
    """
    if type(error) is NotImplementedError:
        # A generated base servicer's method nobody implemented (e.g. a newer grpc.health.v1's List).
        try:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{where} is not implemented")
        except grpc.aio.AbortError:
            raise
        except Exception:  # noqa: BLE001 - the call is over
            raise asyncio.CancelledError from None
    if not isinstance(error, MveError):
        log.error("unhandled error in %s", where, exc_info=error)
        error = InternalFailure(f"internal failure: {type(error).__name__}")
    try:
        await context.abort_with_status(to_status(error, service))
    except grpc.aio.AbortError:
        raise
    except Exception:  # noqa: BLE001 - grpc's ExecuteBatchError: the call is over
        raise asyncio.CancelledError from None


def _where(behavior) -> str:
    return getattr(behavior, "__qualname__", None) or type(behavior).__qualname__


class _Undecodable:
    """What a tolerant deserializer hands over for bytes that are not the method's request message."""

    __slots__ = ("message_name", "size")

    def __init__(self, message_name: str, size: int):
        self.message_name = message_name
        self.size = size

    def error(self) -> ValidationError:
        return ValidationError(f"the request ({self.size} bytes) is not a valid {self.message_name}")


def _tolerant(deserializer):
    """`deserializer`, returning an `_Undecodable` instead of raising on bytes that do not parse.

    grpc answers UNKNOWN ("Exception deserializing request!") when a deserializer raises; with
    this, the handler answers INVALID_ARGUMENT / ValidationException naming the message instead.
    """
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None) or "request message"

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - DecodeError, or anything a bad byte string makes it raise
            return _Undecodable(name, len(data))

    return deserialize


def _wrap_unary(behavior, service: str | None):
    async def handler(request, context):
        try:
            if type(request) is _Undecodable:
                raise request.error()
            return await behavior(request, context)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as error:  # noqa: BLE001 - the last line of defence: report, don't crash
            await abort_with_error(context, error, _where(behavior), service)

    return handler


def _wrap_stream(behavior, service: str | None):
    if inspect.iscoroutinefunction(behavior):
        # A reader/writer-style handler (``await context.write(...)``, e.g. grpc_health's Watch)
        # is a coroutine, not an async generator: wrap it as one.
        return _wrap_unary(behavior, service)

    async def handler(request, context):
        try:
            if type(request) is _Undecodable:
                raise request.error()
            async for response in behavior(request, context):
                yield response
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as error:  # noqa: BLE001
            await abort_with_error(context, error, _where(behavior), service)

    return handler


def map_errors(handler: grpc.RpcMethodHandler | None, service: str | None = None) -> grpc.RpcMethodHandler | None:
    """`handler` with its unary or server-streaming behaviour wrapped in the error mapping, its
    errors named as `service` (boto3's client name; default SageMaker's control API) names them.

    Request bytes that are not the method's message become a ValidationException (INVALID_ARGUMENT)
    naming the message, not grpc's UNKNOWN. A behaviour (or the object of a bound method) with ``maps_errors = True`` raises no MveError
    and is returned as it is: a hot path can map its errors itself and skip the extra coroutine.
    """
    if handler is None:
        return None
    kwargs = dict(
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary is not None:
        behavior = handler.unary_unary
        if getattr(getattr(behavior, "__self__", behavior), "maps_errors", False):
            return handler
        return grpc.unary_unary_rpc_method_handler(_wrap_unary(behavior, service), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream, service), **kwargs)
    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps MveError (and any unexpected exception) raised by an async handler to a gRPC status.

    Errors are named as `service` names them, or, without one, as the API of the called method's
    gRPC service does (`api_of_method`: CloudWatch's names on mve.v1.CloudWatch, ...).
    """

    def __init__(self, service: str | None = None):
        self.service = service

    async def intercept_service(self, continuation, handler_call_details):
        service = self.service or api_of_method(getattr(handler_call_details, "method", None))
        return map_errors(await continuation(handler_call_details), service)


__all__ = ["ErrorInterceptor", "abort_with_error", "map_errors"]
