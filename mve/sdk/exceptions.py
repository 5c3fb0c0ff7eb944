"""The SDK's exceptions, named and shaped like botocore's.

A service error is a `ClientError` whose ``response["Error"]["Code"]`` is the SageMaker error name
(``ValidationException``, ``ResourceNotFound``, ``ModelError``, ...). Each client has an
``exceptions`` attribute with one `ClientError` subclass per name, so
``except client.exceptions.ResourceNotFound`` works as it does with boto3. Problems found before
any call (bad parameters) or below the service (no connection, a timeout) are `SDKError`s.
"""

from __future__ import annotations

import uuid

import grpc

from mve.errors import from_rpc_error, reason_of


class SDKError(Exception):
    """Base of errors raised by the SDK itself rather than by the service (botocore's BotoCoreError)."""


class ParamValidationError(SDKError, ValueError):
    """The parameters of a call do not match its shape; raised before anything is sent."""

    def __init__(self, report: str):
        super().__init__(f"Parameter validation failed:\n{report}")
        self.report = report


class EndpointConnectionError(SDKError, ConnectionError):
    """Nothing answered at the address: the service is not running or not reachable."""

    def __init__(self, address: str, detail: str = ""):
        message = f'Could not connect to the endpoint URL: "{address}"'
        super().__init__(f"{message} ({detail})" if detail else message)
        self.address = address


class ReadTimeoutError(SDKError, TimeoutError):
    """The call did not complete within its deadline."""

    def __init__(self, address: str, operation: str, timeout: float):
        super().__init__(f'Read timeout on endpoint URL: "{address}" ({operation} took longer than {timeout:g} s)')
        self.address = address


class WaiterError(SDKError):
    """A waiter reached a failure state or ran out of attempts."""

    def __init__(self, name: str, reason: str, last_response: dict | None):
        super().__init__(f"Waiter {name} failed: {reason}")
        self.name = name
        self.reason = reason
        self.last_response = last_response


class ClientError(Exception):
    """An error the service reported, with botocore's ``response`` dict and ``operation_name``."""

    def __init__(self, error_response: dict, operation_name: str):
        error = error_response.get("Error", {})
        super().__init__(
            f"An error occurred ({error.get('Code', 'Unknown')}) when calling the {operation_name} "
            f"operation: {error.get('Message', 'Unknown')}"
        )
        self.response = error_response
        self.operation_name = operation_name


# The error names a SageMaker user can meet, control plane and runtime together.
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


_ERROR_CLASSES: dict[str, type[ClientError]] = {
    code: type(code, (ClientError,), {"__doc__": f"The service answered {code}.", "__module__": __name__})
    for code in ERROR_CODES
}
globals().update(_ERROR_CLASSES)

_HTTP_STATUS = {
    "ValidationException": 400,
    "ValidationError": 400,
    "ResourceNotFound": 400,
    "ResourceInUse": 400,
    "ResourceLimitExceeded": 400,
    "ConflictException": 409,
    "ModelError": 424,
    "ModelNotReadyException": 429,
    "ServiceUnavailable": 503,
    "InternalFailure": 500,
    "InternalDependencyException": 530,
}


def response_metadata(request_id: str, status: int = 200) -> dict:
    """boto3's ``ResponseMetadata`` for a call identified by `request_id`."""
    return {"RequestId": request_id, "HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0}


def new_request_id() -> str:
    """A fresh request id, sent as gRPC metadata and returned in ``ResponseMetadata``."""
    return str(uuid.uuid4())


def translate_rpc_error(
    error: grpc.RpcError, *, operation: str, address: str, timeout: float, request_id: str
) -> Exception:
    """The exception a failed gRPC call becomes: a ClientError subclass, or a connection/timeout error."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    reason = reason_of(error)
    if reason is None and code == grpc.StatusCode.UNAVAILABLE:
        return EndpointConnectionError(address, error.details() if hasattr(error, "details") else "")
    if reason is None and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ReadTimeoutError(address, operation, timeout)
    domain = from_rpc_error(error)
    error_body = {"Code": domain.reason, "Message": domain.message}
    response: dict = {"Error": error_body, "ResponseMetadata": response_metadata(request_id, _HTTP_STATUS.get(domain.reason, 400))}
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
    "WaiterError",
    "new_request_id",
    "response_metadata",
    "translate_rpc_error",
]
