"""Parameter shapes of each operation, and their validation before any call (as botocore does).

A shape is a small tree of `Scalar`, `Structure`, `ListOf` and `MapOf`. `validate` collects every
problem (missing required, unknown, wrong type, below a minimum) into one `ParamValidationError`,
worded as botocore words it, so that code written for boto3 gets the same failures here.

Like botocore, only minimums are checked here (a number's value, a string's or list's length):
botocore leaves maximums and enum values to the service, and so does mve's server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from mve.sdk.exceptions import ParamValidationError


@dataclass(frozen=True)
class Scalar:
    """A leaf value accepted as one of `types`; `min` is the least value (a string's least length)."""

    types: tuple[type, ...]
    min: float | None = None


@dataclass(frozen=True)
class Structure:
    """A dict with known keys; `required` must be present."""

    members: dict
    required: frozenset = field(default_factory=frozenset)


@dataclass(frozen=True)
class ListOf:
    """A list or tuple of `member`, with at least `min` items where `min` is given."""

    member: object
    min: int | None = None


@dataclass(frozen=True)
class MapOf:
    """A dict of string keys to `value`."""

    value: object


@dataclass(frozen=True)
class Unsupported:
    """A boto3 parameter mve knows and refuses before any call, saying `why` (instead of ignoring it)."""

    why: str


STRING = Scalar((str,))
INTEGER = Scalar((int,))
DOUBLE = Scalar((float, int))
BOOLEAN = Scalar((bool,))
BLOB = Scalar((bytes, bytearray, str, object))  # object: any file-like with read()
# A datetime (naive means UTC), epoch seconds, or an ISO 8601 string, as botocore takes timestamps.
TIMESTAMP = Scalar((datetime, str, int, float))


def integer(min: int) -> Scalar:
    """An integer parameter of at least `min` (botocore's ``"min"`` on an integer shape)."""
    return Scalar((int,), min)


def struct(required: tuple[str, ...] = (), **members) -> Structure:
    """A `Structure` from keyword members, with the names in `required` required."""
    return Structure(members, frozenset(required))


TAGS = ListOf(struct(("Key", "Value"), Key=STRING, Value=STRING))

PRODUCTION_VARIANT = struct(
    ("VariantName", "ModelName"),
    VariantName=STRING,
    ModelName=STRING,
    InitialInstanceCount=INTEGER,
    InstanceType=STRING,
    InitialVariantWeight=DOUBLE,
    RoutingConfig=struct(RoutingStrategy=STRING),
    ContainerStartupHealthCheckTimeoutInSeconds=INTEGER,
    # mve extension: dynamic batching in the proxy.
    Batching=struct(
        MaxBatchSize=INTEGER, MaxDelayMicroseconds=INTEGER, MaxBatchesInFlightPerInstance=INTEGER, MaxQueueRows=INTEGER
    ),
)

# boto3 requires InitialSamplingPercentage, DestinationS3Uri and CaptureOptions; mve captures both
# directions when CaptureOptions is left out, and EnableCapture defaults to true as in SageMaker.
DATA_CAPTURE_CONFIG = struct(
    ("InitialSamplingPercentage", "DestinationS3Uri"),
    EnableCapture=BOOLEAN,
    InitialSamplingPercentage=INTEGER,
    DestinationS3Uri=STRING,
    CaptureOptions=ListOf(struct(("CaptureMode",), CaptureMode=STRING)),
    CaptureContentTypeHeader=struct(CsvContentTypes=ListOf(STRING), JsonContentTypes=ListOf(STRING)),
    KmsKeyId=Unsupported(
        "mve writes capture files to a local directory on the proxies' machines and encrypts nothing with KMS; "
        "leave KmsKeyId out (use an encrypted file system for encryption at rest)"
    ),
)


# UpdateEndpoint's deployment guardrails, with the minimums of botocore's SageMaker model
# (the maximums, such as WaitIntervalInSeconds <= 3600, are the server's to check, as in SageMaker).
CAPACITY_SIZE = struct(("Type", "Value"), Type=STRING, Value=integer(1))
WAIT_INTERVAL_IN_SECONDS = integer(0)
MAXIMUM_EXECUTION_TIMEOUT_IN_SECONDS = integer(600)

DEPLOYMENT_CONFIG = struct(
    BlueGreenUpdatePolicy=struct(
        ("TrafficRoutingConfiguration",),
        TrafficRoutingConfiguration=struct(
            ("Type", "WaitIntervalInSeconds"),
            Type=STRING,
            WaitIntervalInSeconds=WAIT_INTERVAL_IN_SECONDS,
            CanarySize=CAPACITY_SIZE,
            LinearStepSize=CAPACITY_SIZE,
        ),
        TerminationWaitInSeconds=integer(0),
        MaximumExecutionTimeoutInSeconds=MAXIMUM_EXECUTION_TIMEOUT_IN_SECONDS,
    ),
    RollingUpdatePolicy=struct(
        ("MaximumBatchSize", "WaitIntervalInSeconds"),
        MaximumBatchSize=CAPACITY_SIZE,
        WaitIntervalInSeconds=WAIT_INTERVAL_IN_SECONDS,
        MaximumExecutionTimeoutInSeconds=MAXIMUM_EXECUTION_TIMEOUT_IN_SECONDS,
        RollbackMaximumBatchSize=CAPACITY_SIZE,
    ),
    AutoRollbackConfiguration=struct(
        Alarms=ListOf(struct(AlarmName=Scalar((str,), 1)), min=1),
    ),
)


def _list_shape(**extra) -> Structure:
    return struct(
        NameContains=STRING, MaxResults=INTEGER, NextToken=STRING, SortBy=STRING, SortOrder=STRING, **extra
    )


OPERATIONS: dict[str, Structure] = {
    "CreateModel": struct(
        ("ModelName", "PrimaryContainer"),
        ModelName=STRING,
        PrimaryContainer=struct(Image=STRING, ModelDataUrl=STRING, Environment=MapOf(STRING)),
        # Accepted so that boto3 code runs unchanged; mve has no IAM roles and ignores it.
        ExecutionRoleArn=STRING,
        Tags=TAGS,
    ),
    "DescribeModel": struct(("ModelName",), ModelName=STRING),
    "ListModels": _list_shape(),
    "DeleteModel": struct(("ModelName",), ModelName=STRING),
    "CreateEndpointConfig": struct(
        ("EndpointConfigName", "ProductionVariants"),
        EndpointConfigName=STRING,
        ProductionVariants=ListOf(PRODUCTION_VARIANT),
        ShadowProductionVariants=ListOf(PRODUCTION_VARIANT),
        DataCaptureConfig=DATA_CAPTURE_CONFIG,
        Tags=TAGS,
    ),
    "DescribeEndpointConfig": struct(("EndpointConfigName",), EndpointConfigName=STRING),
    "ListEndpointConfigs": _list_shape(),
    "DeleteEndpointConfig": struct(("EndpointConfigName",), EndpointConfigName=STRING),
    "CreateEndpoint": struct(
        ("EndpointName", "EndpointConfigName"), EndpointName=STRING, EndpointConfigName=STRING, Tags=TAGS
    ),
    "DescribeEndpoint": struct(("EndpointName",), EndpointName=STRING),
    "ListEndpoints": _list_shape(StatusEquals=STRING),
    "UpdateEndpoint": struct(
        ("EndpointName", "EndpointConfigName"),
        EndpointName=STRING,
        EndpointConfigName=STRING,
        RetainAllVariantProperties=BOOLEAN,
        ExcludeRetainedVariantProperties=ListOf(struct(("VariantPropertyType",), VariantPropertyType=STRING)),
        DeploymentConfig=DEPLOYMENT_CONFIG,
        RetainDeploymentConfig=BOOLEAN,
    ),
    "UpdateEndpointWeightsAndCapacities": struct(
        ("EndpointName", "DesiredWeightsAndCapacities"),
        EndpointName=STRING,
        DesiredWeightsAndCapacities=ListOf(
            struct(("VariantName",), VariantName=STRING, DesiredWeight=DOUBLE, DesiredInstanceCount=INTEGER)
        ),
    ),
    "DeleteEndpoint": struct(("EndpointName",), EndpointName=STRING),
    "InvokeEndpoint": struct(
        ("EndpointName", "Body"),
        EndpointName=STRING,
        Body=BLOB,
        ContentType=STRING,
        Accept=STRING,
        CustomAttributes=STRING,
        TargetVariant=STRING,
        InferenceId=STRING,
        # mve extension: sticky routing, the same key always reaches the same variant.
        RoutingKey=STRING,
    ),
}


def _type_names(types: tuple[type, ...]) -> str:
    return ", ".join(str(t) for t in types)


def _check(shape, value, path: str, problems: list[str]) -> None:
    if isinstance(shape, Structure):
        if not isinstance(value, dict):
            problems.append(
                f"Invalid type for parameter {path}, value: {value!r}, type: {type(value)}, valid types: {dict}"
            )
            return
        _check_members(shape, value, path, problems)
    elif isinstance(shape, ListOf):
        if not isinstance(value, (list, tuple)):
            problems.append(
                f"Invalid type for parameter {path}, value: {value!r}, type: {type(value)}, "
                f"valid types: {list}, {tuple}"
            )
            return
        if shape.min is not None and len(value) < shape.min:
            problems.append(f"Invalid length for parameter {path}, value: {len(value)}, valid min length: {shape.min}")
        for index, item in enumerate(value):
            _check(shape.member, item, f"{path}[{index}]", problems)
    elif isinstance(shape, MapOf):
        if not isinstance(value, dict):
            problems.append(
                f"Invalid type for parameter {path}, value: {value!r}, type: {type(value)}, valid types: {dict}"
            )
            return
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"Invalid type for parameter {path} key {key!r}, valid types: {str}")
            _check(shape.value, item, f"{path}.{key}", problems)
    elif isinstance(shape, Unsupported):
        problems.append(f"Unsupported parameter {path}: {shape.why}")
    elif shape is TIMESTAMP:
        if not _is_timestamp(value):
            problems.append(
                f"Invalid type for parameter {path}, value: {value!r}, type: {type(value)}, "
                f"valid types: {datetime}, timestamp-string, epoch seconds"
            )
    elif shape is BLOB:
        if not isinstance(value, (bytes, bytearray, str)) and not callable(getattr(value, "read", None)):
            problems.append(
                f"Invalid type for parameter {path}, value: {value!r}, type: {type(value)}, "
                f"valid types: {bytes}, {bytearray}, file-like object"
            )
    else:
        # bool is an int in Python; botocore refuses True for an integer, and so do we.
        ok = isinstance(value, shape.types) and not (isinstance(value, bool) and bool not in shape.types)
        if not ok:
            problems.append(
                f"Invalid type for parameter {path}, value: {value!r}, type: {type(value)}, "
                f"valid types: {_type_names(shape.types)}"
            )
        elif shape.min is not None:
            _check_min(shape, value, path, problems)


def _check_min(shape: Scalar, value, path: str, problems: list[str]) -> None:
    """botocore's range check: a string's length, or a number's value, against the shape's min."""
    if isinstance(value, str):
        if len(value) < shape.min:
            problems.append(f"Invalid length for parameter {path}, value: {len(value)}, valid min length: {shape.min}")
    elif value < shape.min:
        problems.append(f"Invalid value for parameter {path}, value: {value}, valid min value: {shape.min}")


def parse_timestamp(value) -> datetime | None:
    """`value` as an aware datetime, as botocore reads timestamps; None if it is not one.

    A naive datetime or an ISO string without an offset is UTC; numbers (and numeric strings) are
    epoch seconds.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value.strip())
            except ValueError:
                return None
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _is_timestamp(value) -> bool:
    return parse_timestamp(value) is not None


def _check_members(shape: Structure, value: dict, path: str, problems: list[str]) -> None:
    prefix = f"{path}." if path else ""
    where = path or "input"
    for name in sorted(shape.required):
        if name not in value:
            problems.append(f'Missing required parameter in {where}: "{name}"')
    for name, item in value.items():
        if name not in shape.members:
            problems.append(
                f'Unknown parameter in {where}: "{name}", must be one of: {", ".join(shape.members)}'
            )
            continue
        _check(shape.members[name], item, f"{prefix}{name}", problems)


def validate(operation: str, params: dict, operations: dict[str, Structure] | None = None) -> None:
    """Raise `ParamValidationError` listing every problem of `params` for `operation`.

    `operations` is the table of shapes to look `operation` up in (default: SageMaker's, `OPERATIONS`).
    """
    problems: list[str] = []
    _check_members((operations or OPERATIONS)[operation], params, "", problems)
    if problems:
        raise ParamValidationError("\n".join(problems))


__all__ = [
    "OPERATIONS", "TIMESTAMP", "parse_timestamp", "ListOf", "MapOf", "Scalar", "Structure", "Unsupported", "validate",
]
