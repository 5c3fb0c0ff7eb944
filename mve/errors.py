"""mve's errors: the domain exceptions, and THE table that names them on every door.

Handlers raise domain exceptions (`ValidationError`, `NotFound`, `ModelError`, ...); no handler
calls ``context.abort`` itself. Each door names an exception the way the AWS API it speaks does,
from one table, `ERRORS`:

    ErrorName(service, name, http_status, raised_as, source)

- ``service``: the API whose name this is, as boto3 spells it (`SAGEMAKER`, `RUNTIME`,
  `AUTOSCALING`, `CLOUDWATCH`, `IAM`), or `ANY_SERVICE` for AWS's common errors.
- ``name``: the error code a boto3 caller reads in ``error.response["Error"]["Code"]``.
- ``http_status``: the status the HTTP faces answer (botocore's ``httpStatusCode`` where its
  service model states one; a client fault of a JSON 1.1 service is 400).
- ``raised_as``: the domain exceptions that take this name in this service. The gRPC status code
  is the exception's own ``code`` (gRPC's word for the condition: a missing name is NOT_FOUND,
  an existing one ALREADY_EXISTS, bad input INVALID_ARGUMENT); the SageMaker name rides beside it
  as the ``google.rpc.ErrorInfo`` reason. So one name can travel on more than one gRPC code, e.g.
  SageMaker's ``ValidationException`` "Could not find endpoint ..." is NOT_FOUND on the gRPC door.
- ``source``: where the name and status come from.

The same condition has different names in different APIs, as in AWS: bad input is
``ValidationException`` on the control API and ``ValidationError`` on the runtime; a missing
endpoint is ``ValidationException`` "Could not find endpoint ..." on DescribeEndpoint and
``ValidationError`` "Endpoint ... not found." on InvokeEndpoint. Exceptions that exist in one API
only (``ObjectNotFoundException`` of Application Auto Scaling, CloudWatch's ``InvalidParameterValue``,
...) are classes of their own that carry their name in ``reason``; the table still lists them.

What a door uses:

- `error_name(error, service)`: the name `service` gives `error`.
- `http_status(error, service)`: the HTTP status (an exception, or a name string).
- `error_members(error, service)`: the members that go beside ``Error`` in the answer
  (ModelError's ``OriginalStatusCode`` as an integer, ``OriginalMessage``, ``LogStreamArn``).
- `to_status(error, service)` / `from_rpc_error(rpc_error)` / `reason_of(rpc_error)`: the gRPC
  status and back; `ErrorInterceptor(service)` and `map_errors(handler, service)` wrap handlers.
- `http_status_of_grpc_code(code)`: a model server's gRPC status as the HTTP status a container
  would have answered (google.rpc.Code's mapping), for ModelError's ``OriginalStatusCode``.

SigV4 errors (``InvalidSignatureException``, ...) exist only on the HTTP faces and are named in
`mve.sigv4`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)

ERROR_DOMAIN = "mve"

# The APIs, as boto3 names its clients. ANY_SERVICE: AWS's common errors, valid in every API.
SAGEMAKER = "sagemaker"
RUNTIME = "sagemaker-runtime"
AUTOSCALING = "application-autoscaling"
CLOUDWATCH = "cloudwatch"
IAM = "iam"
ANY_SERVICE = "*"

# mve's own gRPC APIs name their errors as SageMaker's control API does.
_NAMED_AS = {"experiments": SAGEMAKER, "keys": IAM}


class MveError(Exception):
    """Base of every error mve reports over the wire.

    ``code`` is the gRPC status code; ``reason`` the error's name on the control API (other APIs
    may name it differently: `error_name`); ``metadata`` adds string details (for a ModelError:
    OriginalStatusCode, OriginalMessage). A `reason` given to the constructor (an error read back
    from the wire) is the name on every door.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "InternalFailure"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.explicit_reason = reason
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message!r})"


class ValidationError(MveError):
    """Bad input: a field out of range, a malformed body, an unknown variant (HTTP 400).

    ``ValidationException`` on the control API, ``ValidationError`` on the runtime.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "ValidationException"


class NotFound(ValidationError):
    """No model, endpoint config or endpoint by that name, where SageMaker calls that bad input.

    SageMaker answers ``ValidationException`` 'Could not find endpoint "arn:..."' on the control
    API and ``ValidationError`` 'Endpoint ... not found.' on InvokeEndpoint; gRPC says NOT_FOUND.
    Not to be confused with `ResourceNotFound`, SageMaker's own error name for other resources.
    """

    code = grpc.StatusCode.NOT_FOUND


class ResourceAlreadyExists(ValidationError):
    """A model, config or endpoint with this name exists already (SageMaker: ValidationException)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceNotFound(MveError):
    """SageMaker's ``ResourceNotFound``: used where the API itself uses that name (a bandit policy,
    a model a model server does not serve). A missing model, config or endpoint is `NotFound`."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "ResourceNotFound"


class ResourceInUse(MveError):
    """The resource is used by another one (a model by a config, a config by an endpoint)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "ResourceInUse"


class ResourceLimitExceeded(MveError):
    """A limit such as the number of variants or instances was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "ResourceLimitExceeded"


class ModelError(MveError):
    """The model answered with an error (SageMaker's 424).

    ``original_status_code`` is the HTTP status the model's container answered (an integer; a
    model server's gRPC status is converted by `http_status_of_grpc_code`) and
    ``original_message`` its message; both travel as ErrorInfo metadata and come back as the
    answer's ``OriginalStatusCode`` and ``OriginalMessage``.
    """

    code = grpc.StatusCode.INTERNAL
    reason = "ModelError"

    def __init__(
        self,
        message: str,
        *,
        original_status_code: int | None = None,
        original_message: str | None = None,
        log_stream_arn: str | None = None,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ):
        details = dict(metadata or {})
        if original_status_code is not None:
            details["OriginalStatusCode"] = str(int(original_status_code))
        if original_message is not None:
            details["OriginalMessage"] = original_message
        if log_stream_arn:
            details["LogStreamArn"] = log_stream_arn
        super().__init__(message, reason=reason, metadata=details)

    @classmethod
    def answered(cls, status: int, message: str, *, model: str, variant: str, note: str = "") -> "ModelError":
        """The ModelError for a model that answered `status` (HTTP) with `message`, worded as SageMaker's:
        'Received server error (500) from model M of variant V with message "..."'."""
        kind = "client" if 400 <= status < 500 else "server"
        return cls(
            f'Received {kind} error ({status}) from model {model} of variant {variant} with message "{message}"'
            + (f": {note}" if note else "."),
            original_status_code=status,
            original_message=message,
        )

    @property
    def original_status_code(self) -> int | None:
        """The container's HTTP status, or None when the model server did not say."""
        value = self.metadata.get("OriginalStatusCode", "")
        return int(value) if value.isdigit() else None

    @property
    def original_message(self) -> str:
        """The container's own message (the error's message when it gave none)."""
        return self.metadata.get("OriginalMessage", self.message)


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


class Unauthenticated(MveError):
    """A gRPC door that requires a credential got none (no bearer token, no client certificate)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "MissingAuthenticationTokenException"


class UnrecognizedClient(MveError):
    """A bearer token the door does not know (AWS: "The security token included in the request is invalid.")."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UnrecognizedClientException"


class AccessDenied(MveError):
    """A known caller asked for something its identity may not do (AWS: "User: ... is not authorized to perform: ...")."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "AccessDeniedException"


@dataclass(frozen=True)
class ErrorName:
    """One row of the table: what `service` calls `raised_as`, and its HTTP status."""

    service: str
    name: str
    http_status: int
    raised_as: tuple[type[MveError], ...]
    source: str


_BOTOCORE = "botocore 1.44.8 data/{}/service-2.json"
_SM = _BOTOCORE.format("sagemaker/2017-07-24")
_SMR = _BOTOCORE.format("sagemaker-runtime/2017-05-13")
_AAS = _BOTOCORE.format("application-autoscaling/2016-02-06")
_CW = _BOTOCORE.format("cloudwatch/2010-08-01")
_IAM = _BOTOCORE.format("iam/2010-05-08")
_FACTS = "shared/reference/sagemaker-api-facts.md"
_JSON_400 = "a JSON 1.1 client fault is HTTP 400"

# THE table. A class listed in a row of a service is named by that row there; a class in no row
# of a service is named by its own `reason` (the nearest class up its MRO that has a row or sets one).
ERRORS: tuple[ErrorName, ...] = (
    # SageMaker's control API (JSON 1.1). Its modeled errors carry no httpStatusCode: 400.
    ErrorName(SAGEMAKER, "ValidationException", 400, (ValidationError, NotFound, ResourceAlreadyExists),
              f"{_FACTS} (DescribeEndpoint/DeleteEndpoint on a missing name, creating an existing one); "
              "not modeled in botocore (ClientError with Error.Code)"),
    ErrorName(SAGEMAKER, "ResourceNotFound", 400, (ResourceNotFound,),
              f"{_SM}: shape ResourceNotFound (242 operations, none of the endpoint ones); {_JSON_400}"),
    ErrorName(SAGEMAKER, "ResourceInUse", 400, (ResourceInUse,), f"{_SM}: shape ResourceInUse; {_JSON_400}"),
    ErrorName(SAGEMAKER, "ResourceLimitExceeded", 400, (ResourceLimitExceeded,),
              f"{_SM}: CreateModel, CreateEndpointConfig, CreateEndpoint, UpdateEndpoint, "
              f"UpdateEndpointWeightsAndCapacities; {_JSON_400}"),
    # SageMaker Runtime (rest-json), statuses from the shapes' httpStatusCode.
    ErrorName(RUNTIME, "ValidationError", 400, (ValidationError, NotFound, ResourceNotFound),
              f"{_SMR}: InvokeEndpoint; {_FACTS} (a missing endpoint is 'Endpoint ... not found.')"),
    ErrorName(RUNTIME, "ModelError", 424, (ModelError,), f"{_SMR}: InvokeEndpoint, with OriginalStatusCode (integer), "
              "OriginalMessage, LogStreamArn"),
    ErrorName(RUNTIME, "ModelNotReadyException", 429, (ModelNotReady,), f"{_SMR}: InvokeEndpoint"),
    # Application Auto Scaling (JSON 1.1).
    ErrorName(AUTOSCALING, "ValidationException", 400, (ValidationError,), f"{_AAS}; {_JSON_400}"),
    ErrorName(AUTOSCALING, "ObjectNotFoundException", 400, (), f"{_AAS}; {_JSON_400} (mve.control.autoscaling)"),
    ErrorName(AUTOSCALING, "LimitExceededException", 400, (), f"{_AAS}; {_JSON_400} (mve.control.autoscaling)"),
    ErrorName(AUTOSCALING, "InternalServiceException", 500, (InternalFailure,), f"{_AAS}: shape InternalServiceException"),
    # CloudWatch (smithy-rpc-v2-cbor, awsQueryCompatible: botocore's Error.Code is the query code).
    ErrorName(CLOUDWATCH, "ValidationError", 400, (ValidationError,), f"{_CW}: ValidationException, query code ValidationError"),
    ErrorName(CLOUDWATCH, "InvalidParameterValue", 400, (), f"{_CW}: InvalidParameterValueException (mve.control.metric_query)"),
    ErrorName(CLOUDWATCH, "MissingParameter", 400, (), f"{_CW}: MissingRequiredParameterException (mve.control.metric_query)"),
    ErrorName(CLOUDWATCH, "InvalidParameterCombination", 400, (),
              f"{_CW}: InvalidParameterCombinationException (mve.control.metric_query)"),
    ErrorName(CLOUDWATCH, "InvalidNextToken", 400, (), f"{_CW}: InvalidNextToken (mve.control.cloudwatch)"),
    ErrorName(CLOUDWATCH, "ResourceNotFound", 404, (ResourceNotFound, NotFound), f"{_CW}: ResourceNotFound (mve.control.alarms)"),
    ErrorName(CLOUDWATCH, "LimitExceeded", 400, (ResourceLimitExceeded,), f"{_CW}: LimitExceededFault (mve.control.alarms)"),
    ErrorName(CLOUDWATCH, "InternalServiceError", 500, (InternalFailure,), f"{_CW}: InternalServiceFault"),
    # IAM (query): access keys.
    ErrorName(IAM, "InvalidInput", 400, (ValidationError,), f"{_IAM}: InvalidInputException"),
    ErrorName(IAM, "NoSuchEntity", 404, (NotFound, ResourceNotFound),
              f"{_IAM}: CreateAccessKey, DeleteAccessKey, ListAccessKeys"),
    ErrorName(IAM, "LimitExceeded", 409, (ResourceLimitExceeded,), f"{_IAM}: CreateAccessKey"),
    ErrorName(IAM, "ServiceFailure", 500, (InternalFailure,), f"{_IAM}: ServiceFailureException"),
    # AWS's common errors, in every API (the runtime models them on InvokeEndpoint).
    ErrorName(ANY_SERVICE, "InternalFailure", 500, (InternalFailure,), f"{_SMR}: InternalFailure; AWS common errors"),
    ErrorName(ANY_SERVICE, "ServiceUnavailable", 503, (ServiceUnavailable,),
              f"{_SMR}: ServiceUnavailable; AWS common errors"),
    ErrorName(ANY_SERVICE, "MissingAuthenticationTokenException", 403, (Unauthenticated,),
              "AWS common errors: MissingAuthenticationToken, as JSON services name it (mve.sigv4)"),
    ErrorName(ANY_SERVICE, "UnrecognizedClientException", 403, (UnrecognizedClient,),
              "AWS JSON services' answer to an unknown security token (mve.sigv4)"),
    ErrorName(ANY_SERVICE, "AccessDeniedException", 400, (AccessDenied,),
              f"AWS common errors: AccessDeniedException (HTTP 400); {_SMR}"),
    ErrorName(ANY_SERVICE, "InternalDependencyException", 530, (),
              f"{_SMR}: InvokeEndpoint (mve raises none: it has no internal dependency to blame)"),
)

# google.rpc.Code's documented HTTP mapping (googleapis google/rpc/code.proto), for a model
# server's gRPC status as the HTTP status a container would have answered.
GRPC_TO_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

_BY_CLASS: dict[tuple[str, type], ErrorName] = {}
_BY_NAME: dict[tuple[str, str], ErrorName] = {}
for _row in ERRORS:
    _BY_NAME.setdefault((_row.service, _row.name), _row)
    for _cls in _row.raised_as:
        _BY_CLASS.setdefault((_row.service, _cls), _row)


def _naming(service: str | None) -> str:
    service = service or SAGEMAKER
    return _NAMED_AS.get(service, service)


def error_name(error: MveError, service: str | None = None) -> str:
    """The name `service` (boto3's client name; default: SageMaker's control API) gives `error`."""
    if error.explicit_reason is not None:
        return error.explicit_reason
    service = _naming(service)
    for cls in type(error).__mro__:
        row = _BY_CLASS.get((service, cls)) or _BY_CLASS.get((ANY_SERVICE, cls))
        if row is not None:
            return row.name
        if "reason" in cls.__dict__:
            return cls.__dict__["reason"]
    return InternalFailure.reason


def http_status(error: MveError | str, service: str | None = None) -> int:
    """The HTTP status of `error` (an exception, or an error name) on `service`'s HTTP face.

    A name the table does not know is 400 (a client fault) unless the exception's gRPC code says
    otherwise (`GRPC_TO_HTTP_STATUS`), as for a caller's own made-up name.
    """
    name = error if isinstance(error, str) else error_name(error, service)
    service = _naming(service)
    row = _BY_NAME.get((service, name)) or _BY_NAME.get((ANY_SERVICE, name))
    if row is None:
        row = next((r for r in ERRORS if r.name == name), None)
    if row is not None:
        return row.http_status
    if isinstance(error, MveError):
        return GRPC_TO_HTTP_STATUS.get(error.code, 500)
    return 400


def error_members(error: MveError, service: str | None = None) -> dict:
    """What goes beside ``Error`` in the answer: a ModelError's OriginalStatusCode (an int),
    OriginalMessage and LogStreamArn, as botocore puts them in ``ClientError.response``."""
    if error_name(error, service) != "ModelError":
        return {}
    members: dict = {}
    status = error.metadata.get("OriginalStatusCode", "")
    members["OriginalStatusCode"] = int(status) if status.isdigit() else 500
    members["OriginalMessage"] = error.metadata.get("OriginalMessage", error.message)
    if error.metadata.get("LogStreamArn"):
        members["LogStreamArn"] = error.metadata["LogStreamArn"]
    return members


def http_status_of_grpc_code(code: grpc.StatusCode) -> int:
    """The HTTP status google.rpc.Code maps `code` to (500 for anything unexpected)."""
    return GRPC_TO_HTTP_STATUS.get(code, 500)


# The API each gRPC service of mve speaks, for the name its errors take. The Open Inference
# Protocol is spoken by the proxy (the runtime: it says so when it maps errors) and by model servers.
GRPC_SERVICE_API = {
    "mve.v1.EndpointControl": SAGEMAKER,
    "mve.v1.Experiments": SAGEMAKER,
    "mve.v1.ApplicationAutoScaling": AUTOSCALING,
    "mve.v1.CloudWatch": CLOUDWATCH,
    "mve.v1.AccessKeys": IAM,
    "mve.v1.EndpointRuntime": RUNTIME,
}


def api_of_method(method: str | None) -> str:
    """The API of a gRPC method path ``/package.Service/Method`` (SageMaker's for any other)."""
    service = (method or "").lstrip("/").partition("/")[0]
    return GRPC_SERVICE_API.get(service, SAGEMAKER)


_CODE_VALUES = {code: code.value[0] for code in grpc.StatusCode}
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

# An error read back without a reason mve knows: its class by gRPC code.
_CODE_TYPES: dict[grpc.StatusCode, type[MveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.ALREADY_EXISTS: ResourceAlreadyExists,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: ResourceInUse,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceLimitExceeded,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServiceUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: AccessDenied,
}


def to_status(error: MveError, service: str | None = None) -> grpc.Status:
    """The gRPC status for `error`, with an ErrorInfo detail naming it as `service` does."""
    info = error_details_pb2.ErrorInfo(
        reason=error_name(error, service), domain=ERROR_DOMAIN, metadata=error.metadata
    )
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
    """The SageMaker error name in an RpcError's ErrorInfo, or None when it has none."""
    info = _error_info(error)
    return info.reason if info is not None else None


def _class_for(reason: str | None, code: grpc.StatusCode) -> type[MveError]:
    """The domain class a (name, gRPC code) pair read from the wire stands for."""
    candidates = [cls for row in ERRORS if row.name == reason for cls in row.raised_as]
    for cls in candidates:
        if cls.code == code:
            return cls
    if candidates:
        return candidates[0]
    return _CODE_TYPES.get(code, InternalFailure)


def from_rpc_error(error: grpc.RpcError) -> MveError:
    """Turn a failed call back into the domain exception the server raised, its name kept."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    info = _error_info(error)
    reason = info.reason if info is not None and info.reason else None
    metadata = dict(info.metadata) if info is not None else {}
    cls = _class_for(reason, code)
    err = cls(message or "", reason=reason or cls.reason, metadata=metadata)
    err.code = code
    return err


# The handler wrapping lives in mve.grpc_errors (it needs the table above); these names stay
# importable from here, as every server imports them.
_GRPC_WRAPPING = ("ErrorInterceptor", "abort_with_error", "map_errors")


def __getattr__(name: str):
    if name in _GRPC_WRAPPING:
        from mve import grpc_errors

        return getattr(grpc_errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ANY_SERVICE",
    "AccessDenied",
    "AUTOSCALING",
    "CLOUDWATCH",
    "ERRORS",
    "ErrorInterceptor",
    "ErrorName",
    "GRPC_TO_HTTP_STATUS",
    "IAM",
    "InternalFailure",
    "ModelError",
    "ModelNotReady",
    "MveError",
    "NotFound",
    "RUNTIME",
    "ResourceAlreadyExists",
    "ResourceInUse",
    "ResourceLimitExceeded",
    "ResourceNotFound",
    "SAGEMAKER",
    "ServiceUnavailable",
    "Unauthenticated",
    "UnrecognizedClient",
    "ValidationError",
    "abort_with_error",
    "api_of_method",
    "error_members",
    "error_name",
    "from_rpc_error",
    "http_status",
    "http_status_of_grpc_code",
    "map_errors",
    "reason_of",
    "to_status",
]
