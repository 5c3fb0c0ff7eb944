"""SageMaker Runtime's errors as the rest-json answers botocore parses.

botocore's ``RestJSONParser`` takes the error code from the ``x-amzn-ErrorType`` header (else
``code`` / ``__type`` in the JSON body, else the HTTP status as a string) and the message from
``message`` / ``Message`` in the body; the members of a modeled error shape (ModelError's
``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn``) are read from the same JSON body
and land beside ``Error`` in ``ClientError.response``. So every error here is one status, that
header, and a small JSON body.

The runtime's names and statuses are those of botocore's service model for ``sagemaker-runtime``
(2017-05-13) and shared/reference/sagemaker-api-facts.md: ValidationError 400, ModelError 424,
ModelNotReadyException 429, InternalFailure 500, ServiceUnavailable 503,
InternalDependencyException 530. A domain error is mapped by its SageMaker reason
(`mve.errors.MveError.reason`), else by its gRPC status code, else it is an InternalFailure.

A body over 6 MB is answered as SageMaker's real-time endpoints answer it: HTTP 413 with no error
type (botocore's ``Error.Code`` is then ``"413"``) and the message "HTTP content length exceeded
6291456 bytes.".
"""

from __future__ import annotations

import json
import logging

import grpc
from aiohttp import web

from mve.codecs import MAX_BODY_BYTES
from mve.errors import MveError

log = logging.getLogger(__name__)

ERROR_TYPE_HEADER = "x-amzn-ErrorType"
REQUEST_ID_HEADER = "x-amzn-RequestId"

# mve's reason (MveError.reason) -> (the runtime's error code, HTTP status). The runtime's bad
# input is ValidationError (not the control API's ValidationException), and a missing endpoint
# is bad input there: SageMaker answers "Endpoint ... not found." as a ValidationError.
RUNTIME_ERRORS: dict[str, tuple[str, int]] = {
    "ValidationError": ("ValidationError", 400),
    "ValidationException": ("ValidationError", 400),
    "ResourceNotFound": ("ValidationError", 400),
    "ModelError": ("ModelError", 424),
    "ModelNotReadyException": ("ModelNotReadyException", 429),
    "InternalFailure": ("InternalFailure", 500),
    "ServiceUnavailable": ("ServiceUnavailable", 503),
    "InternalDependencyException": ("InternalDependencyException", 530),
}

# An error whose reason the runtime has no name for, by its gRPC status code.
_BY_GRPC_CODE: dict[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ("ValidationError", 400),
    grpc.StatusCode.NOT_FOUND: ("ValidationError", 400),
    grpc.StatusCode.OUT_OF_RANGE: ("ValidationError", 400),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("ModelNotReadyException", 429),
    grpc.StatusCode.UNAVAILABLE: ("ServiceUnavailable", 503),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("ServiceUnavailable", 503),
}
_INTERNAL_FAILURE = ("InternalFailure", 500)

# A model server's gRPC status -> the HTTP status a container would have answered (google.rpc.Code's
# documented HTTP mapping), for ModelError's OriginalStatusCode, which SageMaker types as an integer.
GRPC_TO_HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
}

TOO_LARGE_MESSAGE = f"HTTP content length exceeded {MAX_BODY_BYTES} bytes."


def runtime_error(error: MveError) -> tuple[str, int]:
    """(the runtime's error code, HTTP status) for a domain error."""
    found = RUNTIME_ERRORS.get(error.reason)
    if found is not None:
        return found
    return _BY_GRPC_CODE.get(error.code, _INTERNAL_FAILURE)


def original_status_code(value: str) -> int:
    """ModelError's OriginalStatusCode as an HTTP integer, from an integer or a gRPC code name (500 if neither)."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    return GRPC_TO_HTTP_STATUS.get(value.upper(), 500)


def error_response(code: str | None, status: int, message: str, request_id: str, **members) -> web.Response:
    """A rest-json error: `status`, ``x-amzn-ErrorType: code`` (none when `code` is None), and
    ``{"message": ..., **members}`` as the body."""
    headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id}
    if code is not None:
        headers[ERROR_TYPE_HEADER] = code
    body = json.dumps({"message": message, **members}).encode()
    return web.Response(status=status, body=body, headers=headers)


def mve_error_response(error: MveError, request_id: str) -> web.Response:
    """The runtime's answer for a domain error; a ModelError carries OriginalStatusCode (an
    integer), OriginalMessage, and LogStreamArn when the error names one."""
    code, status = runtime_error(error)
    members = {}
    if code == "ModelError":
        metadata = error.metadata
        members["OriginalStatusCode"] = original_status_code(metadata.get("OriginalStatusCode", ""))
        members["OriginalMessage"] = metadata.get("OriginalMessage", error.message)
        if metadata.get("LogStreamArn"):
            members["LogStreamArn"] = metadata["LogStreamArn"]
    return error_response(code, status, error.message, request_id, **members)


def too_large_response(request_id: str) -> web.Response:
    """SageMaker's answer to a body over 6 MB: 413, no error type; the connection is closed
    rather than reading the rest of the body."""
    response = error_response(None, 413, TOO_LARGE_MESSAGE, request_id)
    response.force_close()
    return response


__all__ = [
    "ERROR_TYPE_HEADER", "GRPC_TO_HTTP_STATUS", "REQUEST_ID_HEADER", "RUNTIME_ERRORS", "TOO_LARGE_MESSAGE",
    "error_response", "mve_error_response", "original_status_code", "runtime_error", "too_large_response",
]
