"""SageMaker's rules for names, variants, weights, counts and list requests.

Every function raises `mve.errors.ValidationError` (or `ResourceLimitExceeded`) with a message a
person can act on, and returns the value with defaults filled in where there is one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mve.control.instance_types import DEFAULT_INSTANCE_TYPE, resolve_instance_type
from mve.control.records import Batching, VariantSpec
from mve.errors import ResourceLimitExceeded, ValidationError

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROUTING_STRATEGIES = ("LEAST_OUTSTANDING_REQUESTS", "RANDOM")
DEFAULT_ROUTING_STRATEGY = "RANDOM"
MAX_PRODUCTION_VARIANTS = 10
# Production and shadow variants together (SageMaker: one production plus one shadow in a shadow test).
MAX_VARIANTS = 10
CAPTURE_MODES = ("Input", "Output", "InputAndOutput")
MAX_CAPTURE_MODES = 32
MAX_CAPTURE_CONTENT_TYPES = 10
MAX_CONTENT_TYPE_LENGTH = 256
MAX_DESTINATION_LENGTH = 512
MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
MAX_BATCH_SIZE = 1024
MAX_BATCH_DELAY_US = 1_000_000
MAX_BATCHES_IN_FLIGHT = 64
DEFAULT_BATCHES_IN_FLIGHT = 2  # as the proxy's mve.proxy.batching.policy: one batch runs, the next waits
MAX_QUEUE_ROWS = 1_048_576
STARTUP_TIMEOUT_MAX_S = 3600
SORT_FIELDS = ("Name", "CreationTime")
SORT_ORDERS = ("Ascending", "Descending")
ENDPOINT_STATUSES = (
    "OutOfService",
    "Creating",
    "Updating",
    "SystemUpdating",
    "RollingBack",
    "InService",
    "Deleting",
    "Failed",
    "UpdateRollbackFailed",
)


@dataclass(frozen=True)
class Limits:
    """Ranges that depend on the control plane's settings."""

    max_instances_per_variant: int = 10
    min_startup_timeout_s: int = 60
    default_startup_timeout_s: int = 600


def validate_name(value: str, field_name: str) -> str:
    """A SageMaker resource name: 1-63 letters, digits and hyphens, no hyphen at either end."""
    if not value:
        raise ValidationError(f"{field_name} must not be empty.")
    if not NAME_PATTERN.match(value):
        raise ValidationError(
            f"{field_name} {value!r} is invalid: it must be 1-63 characters of letters, digits and hyphens "
            f"(not at the start or end), matching {NAME_PATTERN.pattern}."
        )
    return value


def validate_weight(weight: float, field_name: str) -> float:
    """A relative variant weight: finite and >= 0."""
    if not math.isfinite(weight) or weight < 0:
        raise ValidationError(f"{field_name} must be a finite number >= 0, got {weight!r}.")
    return float(weight)


def validate_instance_count(count: int, field_name: str, limits: Limits) -> int:
    """An instance count: >= 1 and at most the per-variant limit."""
    if count < 1:
        raise ValidationError(f"{field_name} must be >= 1, got {count}.")
    if count > limits.max_instances_per_variant:
        raise ResourceLimitExceeded(
            f"{field_name} {count} exceeds the limit of {limits.max_instances_per_variant} instances per variant."
        )
    return count


def validate_batching(batching: Batching, variant_name: str) -> Batching:
    """Batching knobs in range; 0 for max_batches_in_flight_per_instance means DEFAULT_BATCHES_IN_FLIGHT.

    MaxQueueRows is 0 (64 x MaxBatchSize) or at least MaxBatchSize, so a full batch can queue.
    """
    if not 0 <= batching.max_batch_size <= MAX_BATCH_SIZE:
        raise ValidationError(
            f"Batching.MaxBatchSize of variant {variant_name!r} must be 0-{MAX_BATCH_SIZE}, got {batching.max_batch_size}."
        )
    if not 0 <= batching.max_delay_us <= MAX_BATCH_DELAY_US:
        raise ValidationError(
            f"Batching.MaxDelayMicroseconds of variant {variant_name!r} must be 0-{MAX_BATCH_DELAY_US}, "
            f"got {batching.max_delay_us}."
        )
    in_flight = batching.max_batches_in_flight_per_instance or DEFAULT_BATCHES_IN_FLIGHT
    if not 1 <= in_flight <= MAX_BATCHES_IN_FLIGHT:
        raise ValidationError(
            f"Batching.MaxBatchesInFlightPerInstance of variant {variant_name!r} must be 1-{MAX_BATCHES_IN_FLIGHT}, "
            f"got {in_flight}."
        )
    queue = batching.max_queue_rows
    if queue and not max(batching.max_batch_size, 1) <= queue <= MAX_QUEUE_ROWS:
        raise ValidationError(
            f"Batching.MaxQueueRows of variant {variant_name!r} must be 0 (64 x MaxBatchSize) or "
            f"{max(batching.max_batch_size, 1)}-{MAX_QUEUE_ROWS}, got {queue}."
        )
    return Batching(batching.max_batch_size, batching.max_delay_us, in_flight, queue)


def check_batchable(batching: Batching, variant_name: str, model_name: str, tensors) -> None:
    """With batching on, every input and output of the model must have a dynamic (-1) first dimension.

    `tensors` are (role, TensorSpec) pairs; the proxy stacks requests along the first dimension
    and gives each caller back its own rows of every output, so each needs a batch dimension.
    """
    if batching.max_batch_size <= 1:
        return
    if not any(role == "input" for role, _ in tensors):
        raise ValidationError(
            f"Variant {variant_name!r} asks for batches (MaxBatchSize {batching.max_batch_size}), but model "
            f"{model_name!r} declares no inputs to batch."
        )
    fixed = [f"{role} {spec.name!r} {list(spec.shape)}" for role, spec in tensors if not spec.shape or spec.shape[0] != -1]
    if fixed:
        raise ValidationError(
            f"Variant {variant_name!r} asks for batches (MaxBatchSize {batching.max_batch_size}), but model "
            f"{model_name!r} has a first dimension that is not dynamic (-1) in {', '.join(fixed)}; batching needs "
            "every input and output to have a dynamic batch dimension first. Set MaxBatchSize to 0 to turn batching off."
        )


def validate_variant(
    variant: VariantSpec,
    limits: Limits,
    *,
    weight_given: bool,
    instance_type_given: bool,
    timeout_given: bool,
    strategy_given: bool,
) -> VariantSpec:
    """One production variant with its defaults filled in (weight 1.0, ml.cpu.small, RANDOM)."""
    name = validate_name(variant.variant_name, "VariantName")
    validate_name(variant.model_name, f"ModelName of variant {name!r}")
    validate_instance_count(variant.initial_instance_count, f"InitialInstanceCount of variant {name!r}", limits)
    instance_type = variant.instance_type if instance_type_given else DEFAULT_INSTANCE_TYPE
    resolve_instance_type(instance_type)
    weight = validate_weight(variant.initial_variant_weight, f"InitialVariantWeight of variant {name!r}") if weight_given else 1.0
    strategy = variant.routing_strategy if strategy_given else DEFAULT_ROUTING_STRATEGY
    if strategy not in ROUTING_STRATEGIES:
        raise ValidationError(
            f"RoutingStrategy {strategy!r} of variant {name!r} is invalid: expected one of {', '.join(ROUTING_STRATEGIES)}."
        )
    timeout = variant.startup_health_check_timeout_s if timeout_given else limits.default_startup_timeout_s
    if not limits.min_startup_timeout_s <= timeout <= STARTUP_TIMEOUT_MAX_S:
        raise ValidationError(
            f"ContainerStartupHealthCheckTimeoutInSeconds of variant {name!r} must be "
            f"{limits.min_startup_timeout_s}-{STARTUP_TIMEOUT_MAX_S}, got {timeout}."
        )
    batching = validate_batching(variant.batching, name)
    return VariantSpec(
        variant_name=name,
        model_name=variant.model_name,
        initial_instance_count=variant.initial_instance_count,
        instance_type=instance_type,
        initial_variant_weight=weight,
        routing_strategy=strategy,
        startup_health_check_timeout_s=timeout,
        batching=batching,
    )


def validate_variant_set(variants: list[VariantSpec], shadows: list[VariantSpec] = ()) -> None:
    """1-10 production variants, at most 10 variants with the shadows, unique names, production weights with a positive sum.

    mve allows several production and several shadow variants in one config; SageMaker allows one of each
    in a shadow test.
    """
    if not variants:
        when = " when ShadowProductionVariants are given" if shadows else ""
        raise ValidationError(f"ProductionVariants must have at least 1 variant{when}.")
    if len(variants) > MAX_PRODUCTION_VARIANTS:
        raise ValidationError(
            f"ProductionVariants has {len(variants)} variants; at most {MAX_PRODUCTION_VARIANTS} are allowed."
        )
    if len(variants) + len(shadows) > MAX_VARIANTS:
        raise ValidationError(
            f"ProductionVariants and ShadowProductionVariants have {len(variants) + len(shadows)} variants together; "
            f"at most {MAX_VARIANTS} are allowed."
        )
    seen: set[str] = set()
    for variant in [*variants, *shadows]:
        if variant.variant_name in seen:
            raise ValidationError(
                f"VariantName {variant.variant_name!r} appears more than once; names must be unique across "
                "ProductionVariants and ShadowProductionVariants."
            )
        seen.add(variant.variant_name)
    validate_weight_sum({v.variant_name: v.initial_variant_weight for v in variants})


def validate_data_capture(capture: dict | None) -> dict:
    """A DataCaptureConfig (proto field names as keys) checked and with every key filled in; {} for None.

    The destination is a local directory: an absolute path or a file:///abs/path URI on the
    proxies' machines. It is required when capture is enabled and checked whenever it is given.
    """
    if capture is None:
        return {}
    enabled = bool(capture.get("enable_capture", False))
    sampling = capture.get("initial_sampling_percentage", 0)
    if not isinstance(sampling, int) or not 0 <= sampling <= 100:
        raise ValidationError(f"DataCaptureConfig.InitialSamplingPercentage must be 0-100, got {sampling!r}.")
    destination = str(capture.get("destination_s3_uri", ""))
    if destination or enabled:
        validate_capture_destination(destination)
    modes = list(capture.get("capture_modes", []))
    if len(modes) > MAX_CAPTURE_MODES:
        raise ValidationError(f"DataCaptureConfig.CaptureOptions may hold at most {MAX_CAPTURE_MODES} entries, got {len(modes)}.")
    for mode in modes:
        if mode not in CAPTURE_MODES:
            raise ValidationError(
                f"DataCaptureConfig.CaptureOptions.CaptureMode {mode!r} is invalid: expected one of {', '.join(CAPTURE_MODES)}."
            )
    content_types = {}
    for key, field_name in (("csv_content_types", "CsvContentTypes"), ("json_content_types", "JsonContentTypes")):
        content_types[key] = _content_types(list(capture.get(key, [])), f"DataCaptureConfig.CaptureContentTypeHeader.{field_name}")
    return {
        "enable_capture": enabled,
        "initial_sampling_percentage": sampling,
        "destination_s3_uri": destination,
        "capture_modes": modes,
        **content_types,
    }


def validate_capture_destination(destination: str) -> str:
    """DestinationS3Uri: an absolute local path or file:///abs/path, at most 512 characters."""
    field_name = "DataCaptureConfig.DestinationS3Uri"
    if not destination:
        raise ValidationError(f"{field_name} is required when EnableCapture is true.")
    if len(destination) > MAX_DESTINATION_LENGTH:
        raise ValidationError(f"{field_name} must be at most {MAX_DESTINATION_LENGTH} characters, got {len(destination)}.")
    where = "mve writes captures to a local directory or file:// URI on the proxies' machines"
    path = destination
    if destination.startswith("file://"):
        path = destination[len("file://") :]
        if not path.startswith("/"):
            raise ValidationError(
                f"{field_name} {destination!r} is invalid: a file:// URI takes an absolute path and no host "
                f"(file:///abs/path); {where}."
            )
    elif "://" in destination:
        raise ValidationError(f"{field_name} {destination!r} is not supported: {where} (an absolute path or file:///abs/path).")
    if not path.startswith("/"):
        raise ValidationError(f"{field_name} {destination!r} must be an absolute path or file:///abs/path; {where}.")
    return destination


def _content_types(values: list[str], field_name: str) -> list[str]:
    if len(values) > MAX_CAPTURE_CONTENT_TYPES:
        raise ValidationError(f"{field_name} may hold at most {MAX_CAPTURE_CONTENT_TYPES} media types, got {len(values)}.")
    for value in values:
        if len(value) > MAX_CONTENT_TYPE_LENGTH or not MEDIA_TYPE.match(value):
            raise ValidationError(
                f"{field_name} {value[:80]!r} is invalid: expected a media type type/subtype of at most "
                f"{MAX_CONTENT_TYPE_LENGTH} characters (for example text/csv or application/json)."
            )
    return values


def validate_weight_sum(weights: dict[str, float]) -> None:
    """At least one variant must keep a positive weight, or nothing could be routed at random."""
    if sum(weights.values()) <= 0:
        raise ValidationError(
            "The sum of the variant weights must be greater than 0: at least one variant needs a positive weight "
            f"(got {weights})."
        )


def validate_model_data_url(url: str) -> str:
    """The local path a ModelDataUrl names: a path or a file:// URL."""
    if not url:
        raise ValidationError("PrimaryContainer.ModelDataUrl must not be empty.")
    if url.startswith("file://"):
        return url[len("file://") :]
    if "://" in url:
        raise ValidationError(f"ModelDataUrl {url!r} is not supported: use a local path or a file:// URL.")
    return url


@dataclass(frozen=True)
class ListQuery:
    """A validated List* request."""

    name_contains: str
    max_results: int
    offset: int
    sort_by: str
    sort_order: str
    status_equals: str = ""


def validate_list_query(
    name_contains: str,
    max_results: int,
    next_token: str,
    sort_by: str,
    sort_order: str,
    status_equals: str = "",
) -> ListQuery:
    """MaxResults 1-100 (0 = 100), SortBy Name | CreationTime, SortOrder Ascending | Descending."""
    if max_results == 0:
        max_results = 100
    if not 1 <= max_results <= 100:
        raise ValidationError(f"MaxResults must be 1-100, got {max_results}.")
    sort_by = sort_by or "CreationTime"
    if sort_by not in SORT_FIELDS:
        raise ValidationError(f"SortBy {sort_by!r} is invalid: expected one of {', '.join(SORT_FIELDS)}.")
    sort_order = sort_order or "Descending"
    if sort_order not in SORT_ORDERS:
        raise ValidationError(f"SortOrder {sort_order!r} is invalid: expected one of {', '.join(SORT_ORDERS)}.")
    if status_equals and status_equals not in ENDPOINT_STATUSES:
        raise ValidationError(
            f"StatusEquals {status_equals!r} is invalid: expected one of {', '.join(ENDPOINT_STATUSES)}."
        )
    offset = 0
    if next_token:
        if not next_token.isdigit() or len(next_token) > 9:
            raise ValidationError(f"NextToken {next_token!r} is invalid: pass the token a previous call returned.")
        offset = int(next_token)
    if len(name_contains) > 63:
        raise ValidationError("NameContains must be at most 63 characters.")
    return ListQuery(name_contains, max_results, offset, sort_by, sort_order, status_equals)
