"""Domain errors and their one mapping to gRPC status.

Handlers raise these; `ErrorInterceptor` turns them into a gRPC status whose details carry a
``google.rpc.ErrorInfo`` with the SageMaker-style reason (``ValidationException``,
``ResourceNotFound``, ``ModelError``, ...). Clients turn a status back into the same exception
with `from_rpc_error`. No handler calls ``context.abort`` itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)

ERROR_DOMAIN = "mve"


class MveError(Exception):
    """Base of every error mve reports over the wire.

    ``reason`` is the SageMaker error name; ``metadata`` adds string details
    (for a ModelError: OriginalStatusCode, OriginalMessage).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "InternalFailure"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message!r})"


class ValidationError(MveError):
    """Bad input: a field out of range, a malformed body, an unknown variant (HTTP 400)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "ValidationException"


class ResourceAlreadyExists(MveError):
    """A model, config or endpoint with this name exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ValidationException"


class ResourceNotFound(MveError):
    """No model, config or endpoint by that name."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "ResourceNotFound"


class ResourceInUse(MveError):
    """The resource is used by another one (a model by a config, a config by an endpoint) or
    is in a status that does not allow the call."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "ResourceInUse"


class ResourceLimitExceeded(MveError):
    """A limit such as the number of variants or instances was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "ResourceLimitExceeded"


class ModelError(MveError):
    """The model server answered with an error (SageMaker's 424)."""

    code = grpc.StatusCode.INTERNAL
    reason = "ModelError"


class ModelNotReady(MveError):
    """The variant has no instance ready to take the request (SageMaker's 429)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "ModelNotReadyException"


class ServiceUnavailable(MveError):
    """The service cannot take requests now; retry later (503)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "ServiceUnavailable"


class InternalFailure(MveError):
    """A bug or an unexpected condition inside mve (500)."""

    code = grpc.StatusCode.INTERNAL
    reason = "InternalFailure"


_CODE_VALUES = {code: code.value[0] for code in grpc.StatusCode}

_REASON_TYPES: dict[str, type[MveError]] = {
    "ValidationException": ValidationError,
    "ValidationError": ValidationError,
    "ResourceNotFound": ResourceNotFound,
    "ResourceInUse": ResourceInUse,
    "ResourceLimitExceeded": ResourceLimitExceeded,
    "ModelError": ModelError,
    "ModelNotReadyException": ModelNotReady,
    "ServiceUnavailable": ServiceUnavailable,
    "InternalFailure": InternalFailure,
}

_CODE_TYPES: dict[grpc.StatusCode, type[MveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.ALREADY_EXISTS: ResourceAlreadyExists,
    grpc.StatusCode.NOT_FOUND: ResourceNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: ResourceInUse,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceLimitExceeded,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServiceUnavailable,
}


def to_status(error: MveError) -> grpc.Status:
    """The gRPC status for `error`, with an ErrorInfo detail naming its reason."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=_CODE_VALUES[error.code], message=error.message, details=[detail])
    return rpc_status.to_status(status)


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def reason_of(error: grpc.RpcError) -> str | None:
    """The SageMaker-style reason in an RpcError's ErrorInfo, or None when it has none."""
    info = _error_info(error)
    return info.reason if info is not None else None


def from_rpc_error(error: grpc.RpcError) -> MveError:
    """Turn a failed call back into the domain exception the server raised."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    info = _error_info(error)
    reason = info.reason if info is not None else None
    metadata = dict(info.metadata) if info is not None else {}
    if code == grpc.StatusCode.ALREADY_EXISTS:
        cls: type[MveError] = ResourceAlreadyExists
    elif reason in _REASON_TYPES:
        cls = _REASON_TYPES[reason]
    else:
        cls = _CODE_TYPES.get(code, InternalFailure)
    err = cls(message or "", reason=reason or cls.reason, metadata=metadata)
    err.code = code
    return err


async def abort_with_error(context, error: Exception, where: str = "handler") -> None:
    """End the call with `error`'s status: an MveError's own, anything else as InternalFailure.

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
        await context.abort_with_status(to_status(error))
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


def _wrap_unary(behavior):
    async def handler(request, context):
        try:
            if type(request) is _Undecodable:
                raise request.error()
            return await behavior(request, context)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as error:  # noqa: BLE001 - the last line of defence: report, don't crash
            await abort_with_error(context, error, _where(behavior))

    return handler


def _wrap_stream(behavior):
    if inspect.iscoroutinefunction(behavior):
        # A reader/writer-style handler (``await context.write(...)``, e.g. grpc_health's Watch)
        # is a coroutine, not an async generator: wrap it as one.
        return _wrap_unary(behavior)

    async def handler(request, context):
        try:
            if type(request) is _Undecodable:
                raise request.error()
            async for response in behavior(request, context):
                yield response
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as error:  # noqa: BLE001
            await abort_with_error(context, error, _where(behavior))

    return handler


def map_errors(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """`handler` with its unary or server-streaming behaviour wrapped in the error mapping.

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
        return grpc.unary_unary_rpc_method_handler(_wrap_unary(behavior), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream), **kwargs)
    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps MveError (and any unexpected exception) raised by an async handler to a gRPC status."""

    async def intercept_service(self, continuation, handler_call_details):
        return map_errors(await continuation(handler_call_details))


__all__ = [
    "ErrorInterceptor",
    "abort_with_error",
    "map_errors",
    "InternalFailure",
    "ModelError",
    "ModelNotReady",
    "MveError",
    "ResourceAlreadyExists",
    "ResourceInUse",
    "ResourceLimitExceeded",
    "ResourceNotFound",
    "ServiceUnavailable",
    "ValidationError",
    "from_rpc_error",
    "reason_of",
    "to_status",
]
