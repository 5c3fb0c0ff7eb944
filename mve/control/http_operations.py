"""Which operations the control plane's HTTP face serves, and how one call reaches mve's SDK.

An operation is served when the installed botocore's model of the service has it AND mve's SDK
client of that service implements it (``OPERATIONS`` in `mve.sdk.control`, `mve.sdk.autoscaling`,
`mve.sdk.cloudwatch`): the HTTP face adds no operation of its own. A call is the SDK method of
an in-process client pointed at the control plane's own gRPC address, so validation, defaults
and errors have one source, the control plane.

Errors become `ErrorReply` (code, message, HTTP status):

| what | code | status |
| --- | --- | --- |
| an error the control plane answered | its code (``ValidationException``, ``ResourceInUse``, ...) | `mve.errors.http_status` (the one table of names and statuses) |
| parameters mve's SDK refuses (a member mve does not support, a wrong type) | ``ValidationException`` | 400 |
| the control plane not reachable / too slow | ``ServiceUnavailable`` | 503 |
| anything unexpected | ``InternalFailure`` | 500 |
| an operation botocore knows and mve does not implement | ``UnknownOperationException`` | 400 (JSON), 404 (CBOR) |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from botocore.model import OperationModel, ServiceModel

from mve.control.http_protocols import ErrorReply, Protocol, protocols_for
from mve.errors import http_status
from mve.sdk import autoscaling as sdk_autoscaling
from mve.sdk import cloudwatch as sdk_cloudwatch
from mve.sdk import control as sdk_control
from mve.sdk.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
    SDKError,
)

log = logging.getLogger(__name__)

# botocore's service name -> the SDK's snake_case method -> operation table of mve's client.
SDK_OPERATIONS: dict[str, dict[str, str]] = {
    "sagemaker": sdk_control.OPERATIONS,
    "application-autoscaling": sdk_autoscaling.OPERATIONS,
    "cloudwatch": sdk_cloudwatch.OPERATIONS,
}

UNKNOWN_OPERATION = "UnknownOperationException"


@dataclass(frozen=True)
class ServiceFace:
    """One service as the HTTP face serves it: botocore's model, its codecs, mve's operations."""

    name: str
    model: ServiceModel
    protocols: dict[str, Protocol]  # botocore's protocol name -> codec
    methods: dict[str, str]  # operation name -> SDK method name

    @property
    def target_prefix(self) -> str:
        """``X-Amz-Target`` prefix (JSON) or the service segment of the path (CBOR)."""
        return self.model.metadata["targetPrefix"]

    def operation(self, name: str, protocol: Protocol) -> OperationModel:
        """The model of an operation mve serves; `OperationFailure` if botocore or mve lacks it."""
        if name in self.methods:
            return self.model.operation_model(name)
        status = protocol.unknown_operation_status
        if name in self.model.operation_names:
            message = (
                f"mve does not implement {self.model.service_id}'s {name}; "
                f"it serves: {', '.join(sorted(self.methods))}"
            )
        else:
            message = f"{self.model.service_id} has no operation {name!r}"
        raise OperationFailure(ErrorReply(UNKNOWN_OPERATION, message, status))

    def status_for(self, code: str) -> int:
        """The HTTP status of error `code` on this service (`mve.errors.http_status`; unknown names: 400)."""
        return http_status(code, self.name)


class OperationFailure(Exception):
    """A call that ends in an error answer."""

    def __init__(self, reply: ErrorReply):
        super().__init__(f"{reply.code}: {reply.message}")
        self.reply = reply


def load_faces(session=None) -> dict[str, ServiceFace]:
    """Every service the HTTP face serves, read from the installed botocore's models (blocking: reads files)."""
    import botocore.session

    session = session or botocore.session.get_session()
    faces = {}
    for name, sdk_methods in SDK_OPERATIONS.items():
        model = session.get_service_model(name)
        methods = {operation: method for method, operation in sdk_methods.items()}
        missing = sorted(set(methods) - set(model.operation_names))
        if missing:
            raise RuntimeError(f"botocore's {name} model lacks operations mve implements: {', '.join(missing)}")
        faces[name] = ServiceFace(name, model, protocols_for(model), methods)
    return faces


def call_operation(client, face: ServiceFace, operation: str, params: dict) -> dict:
    """Call `operation` through mve's SDK `client` (blocking); `OperationFailure` with the wire error."""
    method = getattr(client, face.methods[operation])
    try:
        return method(**params)
    except ClientError as error:
        raise OperationFailure(error_reply(face, error)) from None
    except ParamValidationError as error:
        raise OperationFailure(ErrorReply("ValidationException", str(error), 400)) from None
    except (EndpointConnectionError, ReadTimeoutError) as error:
        raise OperationFailure(ErrorReply("ServiceUnavailable", str(error), 503)) from None
    except SDKError as error:
        log.error("event=http_sdk_error operation=%s error=%r", operation, str(error))
        raise OperationFailure(ErrorReply("InternalFailure", f"internal failure: {type(error).__name__}", 500)) from None


def error_reply(face: ServiceFace, error: ClientError) -> ErrorReply:
    """A service error from mve's SDK as the HTTP face answers it."""
    body = error.response.get("Error", {})
    code = body.get("Code") or "InternalFailure"
    return ErrorReply(code, body.get("Message", ""), face.status_for(code))


__all__ = [
    "OperationFailure", "SDK_OPERATIONS", "ServiceFace", "UNKNOWN_OPERATION", "call_operation", "error_reply",
    "load_faces",
]
