"""The SDK's exceptions, named and shaped like botocore's, and botocore's own when it is installed.

A service error is a `ClientError` whose ``response["Error"]["Code"]`` is the error's name in the
client's API (``ValidationException`` on ``sagemaker``, ``ValidationError`` and ``ModelError`` on
``sagemaker-runtime``, ...: the table in `mve.errors`), with the HTTP status the HTTP faces would
answer in ``response["ResponseMetadata"]["HTTPStatusCode"]``, and a ModelError's
``OriginalStatusCode`` (an integer) and ``OriginalMessage`` beside ``Error``, as botocore puts them.
Each client has an ``exceptions`` attribute with one `ClientError` subclass per name, so
``except client.exceptions.ModelError`` works as it does with boto3.

With botocore installed, `ClientError` subclasses ``botocore.exceptions.ClientError`` and
`SDKError` ``botocore.exceptions.BotoCoreError`` (`ParamValidationError`, `EndpointConnectionError`
and `WaiterError` botocore's classes of those names), so ``except ClientError`` code written for
boto3 works with either client. Without botocore they are plain exceptions of the same shape.
Problems found before any call (bad parameters) or below the service (no connection, a timeout)
are `SDKError`s.
"""

from __future__ import annotations

import uuid

import grpc

from mve.errors import from_rpc_error, http_status, reason_of

try:
    from botocore import exceptions as _botocore
except ImportError:  # the SDK works without botocore: its own classes, the same shapes
    _botocore = None


def _botocore_base(name: str) -> tuple[type, ...]:
    """botocore's exception class `name`, as a base class, when botocore is installed."""
    cls = getattr(_botocore, name, None) if _botocore is not None else None
    return (cls,) if cls is not None else ()


class SDKError(*_botocore_base("BotoCoreError"), Exception):
    """Base of errors raised by the SDK itself rather than by the service (botocore's BotoCoreError)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)  # botocore's BotoCoreError formats keyword arguments instead
        self.kwargs = {}


class ParamValidationError(SDKError, *_botocore_base("ParamValidationError"), ValueError):
    """The parameters of a call do not match its shape; raised before anything is sent."""

    def __init__(self, report: str):
        super().__init__(f"Parameter validation failed:\n{report}")
        self.report = report
        self.kwargs = {"report": report}


class EndpointConnectionError(SDKError, *_botocore_base("EndpointConnectionError"), ConnectionError):
    """Nothing answered at the address: the service is not running or not reachable."""

    def __init__(self, address: str, detail: str = ""):
        message = f'Could not connect to the endpoint URL: "{address}"'
        super().__init__(f"{message} ({detail})" if detail else message)
        self.address = address
        self.kwargs = {"endpoint_url": address}


class ReadTimeoutError(SDKError, TimeoutError):
    """The call did not complete within its deadline."""

    def __init__(self, address: str, operation: str, timeout: float):
        super().__init__(f'Read timeout on endpoint URL: "{address}" ({operation} took longer than {timeout:g} s)')
        self.address = address
        self.kwargs = {"endpoint_url": address}


class WaiterError(SDKError, *_botocore_base("WaiterError")):
    """A waiter reached a failure state or ran out of attempts."""

    def __init__(self, name: str, reason: str, last_response: dict | None):
        super().__init__(f"Waiter {name} failed: {reason}")
        self.name = name
        self.reason = reason
        self.last_response = last_response
        self.kwargs = {"name": name, "reason": reason}


class ClientError(*_botocore_base("ClientError"), Exception):
    """An error the service reported, with botocore's ``response`` dict and ``operation_name``."""

    def __init__(self, error_response: dict, operation_name: str):
        error = error_response.get("Error", {})
        Exception.__init__(
            self,
            f"An error occurred ({error.get('Code', 'Unknown')}) when calling the {operation_name} "
            f"operation: {error.get('Message', 'Unknown')}",
        )
        self.response = error_response
        self.operation_name = operation_name


# The error names a SageMaker user can meet, control plane and runtime together: one class each,
# shared by every client (boto3 makes them per client; catching by name behaves the same).
ERROR_CODES = (
    "ValidationException",
    "ValidationError",
    "ResourceNotFound",
    "ResourceInUse",
    "ResourceLimitExceeded",
    "ConflictException",
    "ModelError",
    "ModelNotReadyException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalDependencyException",
)

_ERROR_CLASSES: dict[str, type[ClientError]] = {
    code: type(code, (ClientError,), {"__doc__": f"The service answered {code}.", "__module__": __name__})
    for code in ERROR_CODES
}
globals().update(_ERROR_CLASSES)


def service_error_class(class_name: str, code: str, module: str) -> type[ClientError]:
    """A class named `class_name` for the error code `code`, as boto3 names a modeled error
    (CloudWatch's ``InvalidParameterValueException`` catches ``InvalidParameterValue``); a
    subclass of the common class of the same code when there is one, so that both catch it."""
    base = _ERROR_CLASSES.get(code, ClientError)
    if base.__name__ == class_name:
        return base
    return type(class_name, (base,), {"__doc__": f"The service answered {code}.", "__module__": module})


class ClientExceptions:
    """``client.exceptions``: one `ClientError` subclass per error code, plus ``ClientError`` itself."""

    ClientError = ClientError

    def __init__(self) -> None:
        self._by_code: dict[str, type[ClientError]] = {}
        for code in ERROR_CODES:
            cls = _ERROR_CLASSES[code]
            setattr(self, code, cls)
            self._by_code[code] = cls

    def from_code(self, code: str) -> type[ClientError]:
        """The class for `code`; plain `ClientError` for a code this SDK does not model."""
        return self._by_code.get(code, ClientError)


def response_metadata(request_id: str, status: int = 200) -> dict:
    """boto3's ``ResponseMetadata`` for a call identified by `request_id`."""
    return {"RequestId": request_id, "HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0}


def new_request_id() -> str:
    """A fresh request id, sent as gRPC metadata and returned in ``ResponseMetadata``."""
    return str(uuid.uuid4())


def translate_rpc_error(
    error: grpc.RpcError, *, operation: str, address: str, timeout: float, request_id: str, service: str = "sagemaker"
) -> Exception:
    """The exception a failed gRPC call of `service` (boto3's client name) becomes: a ClientError
    subclass with the HTTP status `mve.errors` gives its name there, or a connection/timeout error."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    reason = reason_of(error)
    if reason is None and code == grpc.StatusCode.UNAVAILABLE:
        return EndpointConnectionError(address, error.details() if hasattr(error, "details") else "")
    if reason is None and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ReadTimeoutError(address, operation, timeout)
    domain = from_rpc_error(error)
    error_body = {"Code": domain.reason, "Message": domain.message}
    response: dict = {"Error": error_body, "ResponseMetadata": response_metadata(request_id, http_status(domain.reason, service))}
    for key, value in domain.metadata.items():
        # ModelError's OriginalStatusCode / OriginalMessage sit beside Error, as in boto3.
        response[key] = int(value) if key == "OriginalStatusCode" and value.isdigit() else value
    cls = _ERROR_CLASSES.get(domain.reason, ClientError)
    return cls(response, operation)


__all__ = [
    "ClientError",
    "ClientExceptions",
    "EndpointConnectionError",
    "ERROR_CODES",
    "ParamValidationError",
    "ReadTimeoutError",
    "SDKError",
    "service_error_class",
    "WaiterError",
    "new_request_id",
    "response_metadata",
    "translate_rpc_error",
]
