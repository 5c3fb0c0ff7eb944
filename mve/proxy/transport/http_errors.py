"""SageMaker Runtime's errors as the rest-json answers botocore parses.

botocore's ``RestJSONParser`` takes the error code from the ``x-amzn-ErrorType`` header (else
``code`` / ``__type`` in the JSON body, else the HTTP status as a string) and the message from
``message`` / ``Message`` in the body; the members of a modeled error shape (ModelError's
``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn``) are read from the same JSON body
and land beside ``Error`` in ``ClientError.response``. So every error here is one status, that
header, and a small JSON body.

The runtime's names and statuses come from mve's one error table (`mve.errors.ERRORS`, the rows of
``sagemaker-runtime`` and AWS's common errors): ValidationError 400 (bad input, and a missing
endpoint), ModelError 424, ModelNotReadyException 429, InternalFailure 500, ServiceUnavailable 503,
InternalDependencyException 530, as botocore's service model states them.

A body over 6 MB is answered as SageMaker's real-time endpoints answer it: HTTP 413 with no error
type (botocore's ``Error.Code`` is then ``"413"``) and the message "HTTP content length exceeded
6291456 bytes.".
"""

from __future__ import annotations

import json

import grpc
from aiohttp import web

from mve.codecs import MAX_BODY_BYTES
from mve.errors import RUNTIME, MveError, error_members, error_name, http_status, http_status_of_grpc_code

ERROR_TYPE_HEADER = "x-amzn-ErrorType"
REQUEST_ID_HEADER = "x-amzn-RequestId"

TOO_LARGE_MESSAGE = f"HTTP content length exceeded {MAX_BODY_BYTES} bytes."


def original_status_code(value: str) -> int:
    """ModelError's OriginalStatusCode as an HTTP integer: an integer as it is, a model server's gRPC
    status name by google.rpc.Code's HTTP mapping (DEADLINE_EXCEEDED -> 504), anything else 500."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    code = grpc.StatusCode.__members__.get(value.upper())
    return http_status_of_grpc_code(code) if code is not None else 500


def error_response(code: str | None, status: int, message: str, request_id: str, **members) -> web.Response:
    """A rest-json error: `status`, ``x-amzn-ErrorType: code`` (none when `code` is None), and
    ``{"message": ..., **members}`` as the body."""
    headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id}
    if code is not None:
        headers[ERROR_TYPE_HEADER] = code
    body = json.dumps({"message": message, **members}).encode()
    return web.Response(status=status, body=body, headers=headers)


def mve_error_response(error: MveError, request_id: str) -> web.Response:
    """The runtime's answer for a domain error, named and given its status by `mve.errors`' table; a
    ModelError carries OriginalStatusCode (an integer), OriginalMessage, and LogStreamArn when the
    error names one."""
    members = error_members(error, RUNTIME)
    if "OriginalStatusCode" in members:
        members["OriginalStatusCode"] = original_status_code(error.metadata.get("OriginalStatusCode", ""))
    return error_response(error_name(error, RUNTIME), http_status(error, RUNTIME), error.message, request_id, **members)


def too_large_response(request_id: str) -> web.Response:
    """SageMaker's answer to a body over 6 MB: 413, no error type; the connection is closed
    rather than reading the rest of the body."""
    response = error_response(None, 413, TOO_LARGE_MESSAGE, request_id)
    response.force_close()
    return response


__all__ = [
    "ERROR_TYPE_HEADER", "REQUEST_ID_HEADER", "TOO_LARGE_MESSAGE", "error_response", "mve_error_response",
    "original_status_code", "too_large_response",
]
