"""Domain records of the control plane: what the store keeps and the service hands around.

Plain dataclasses, free of protobuf, so that the store and the reconciler never depend on the
wire format; `servicer` converts between these and ``mve.v1`` messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class EndpointStatus:
    """SageMaker's EndpointStatus values."""

    OUT_OF_SERVICE = "OutOfService"
    CREATING = "Creating"
    UPDATING = "Updating"
    SYSTEM_UPDATING = "SystemUpdating"
    ROLLING_BACK = "RollingBack"
    IN_SERVICE = "InService"
    DELETING = "Deleting"
    FAILED = "Failed"
    UPDATE_ROLLBACK_FAILED = "UpdateRollbackFailed"

    #: Statuses whose endpoints appear in the routing table.
    ROUTABLE = frozenset({IN_SERVICE, UPDATING, SYSTEM_UPDATING, ROLLING_BACK})


class InstanceStatus:
    """Life of one model-server process."""

    STARTING = "Starting"  # spawned, not yet ready: not routable
    IN_SERVICE = "InService"  # answered ServerReady and ModelReady: routable
    STOPPING = "Stopping"  # taken out of routing, being stopped


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: V2 datatype and shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class ModelRecord:
    """A registered model and the artifact copied into the control plane's store."""

    name: str
    arn: str
    image: str
    model_data_url: str
    environment: dict[str, str]
    artifact_path: str
    artifact_sha256: str
    artifact_size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    creation_time: float
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Batching:
    """Dynamic batching in the proxy (off when max_batch_size is 0 or 1)."""

    max_batch_size: int = 0
    max_delay_us: int = 0
    max_batches_in_flight_per_instance: int = 2  # validation.DEFAULT_BATCHES_IN_FLIGHT
    max_queue_rows: int = 0  # 0: the proxy queues up to 64 x max_batch_size rows


@dataclass(frozen=True)
class VariantSpec:
    """One production or shadow variant of an endpoint config, defaults filled in.

    For a shadow variant, `initial_variant_weight` sets its sampling: the part of the endpoint's
    requests copied to it is its weight over the sum of the production weights (at most 1).
    """

    variant_name: str
    model_name: str
    initial_instance_count: int
    instance_type: str
    initial_variant_weight: float
    routing_strategy: str
    startup_health_check_timeout_s: int
    batching: Batching = Batching()


@dataclass
class EndpointConfigRecord:
    """An immutable endpoint config.

    `data_capture` is the validated DataCaptureConfig with proto field names as keys
    (`mve.control.validation.validate_data_capture`), or {} when the config has none.
    """

    name: str
    arn: str
    production_variants: list[VariantSpec]
    data_capture: dict
    creation_time: float
    tags: dict[str, str] = field(default_factory=dict)
    shadow_variants: list[VariantSpec] = field(default_factory=list)

    @property
    def all_variants(self) -> list[VariantSpec]:
        """Production variants, then shadow variants."""
        return [*self.production_variants, *self.shadow_variants]

    def variant(self, name: str) -> VariantSpec | None:
        """The production or shadow variant called `name`, or None."""
        return next((v for v in self.all_variants if v.variant_name == name), None)

    def is_shadow(self, name: str) -> bool:
        """True when `name` is one of the config's shadow variants."""
        return any(v.variant_name == name for v in self.shadow_variants)


@dataclass
class VariantState:
    """Desired and current state of one variant of an endpoint."""

    variant_name: str
    desired_weight: float
    current_weight: float
    desired_instance_count: int
    status: str = ""  # "" when settled, else Creating | Updating | Deleting
    status_message: str = ""
    status_since: float = 0.0
    # A shadow variant: its weight is a sampling weight relative to the production weights.
    shadow: bool = False


@dataclass
class EndpointRecord:
    """An endpoint: its config, status and per-variant state."""

    name: str
    arn: str
    config_name: str
    status: str
    failure_reason: str
    creation_time: float
    last_modified_time: float
    variants: list[VariantState]
    tags: dict[str, str] = field(default_factory=dict)
    # The DataCaptureConfig the endpoint kept from an earlier config through UpdateEndpoint's
    # RetainAllVariantProperties; None: its config's own.
    data_capture: dict | None = None

    def variant(self, name: str) -> VariantState | None:
        """The state of the (production or shadow) variant called `name`, or None."""
        return next((v for v in self.variants if v.variant_name == name), None)

    @property
    def production_variants(self) -> list[VariantState]:
        """The variants that answer callers."""
        return [v for v in self.variants if not v.shadow]

    @property
    def shadow_variants(self) -> list[VariantState]:
        """The variants that get copies of sampled requests."""
        return [v for v in self.variants if v.shadow]

    def production_weights(self) -> dict[str, float]:
        """Current weight of each production variant."""
        return {v.variant_name: v.current_weight for v in self.production_variants}

    def data_capture_in_effect(self, config: EndpointConfigRecord | None) -> dict:
        """The DataCaptureConfig the endpoint applies: the retained one, else its config's ({}: none)."""
        if self.data_capture is not None:
            return self.data_capture
        return config.data_capture if config is not None else {}


@dataclass
class InstanceRecord:
    """One model-server process serving a variant."""

    endpoint_name: str
    variant_name: str
    instance_id: str
    pid: int
    address: str
    status: str
    started_at: float
    log_path: str = ""
    # The endpoint config this instance serves ("" in records from before updates existed: the
    # endpoint's current config). During an update the new config's instances form the green fleet.
    config_name: str = ""

    def serves(self, config_name: str) -> bool:
        """True when this instance belongs to the fleet of `config_name`."""
        return self.config_name in ("", config_name)


class DeploymentPhase:
    """Where an update stands (stored, so that a restarted control plane knows)."""

    CREATING = "Creating"  # the green fleet is starting
    SHIFTING = "ActivatingTraffic"  # traffic is moving to green
    BAKING = "Baking"  # traffic moved; alarms are watched for the wait interval
    TERMINATING = "Terminating"  # blue is kept for TerminationWaitInSeconds, then drained
    ROLLING_BACK = "RollingBack"


@dataclass
class GreenVariant:
    """A variant of the new config as the update deploys it: weight and instance count."""

    variant_name: str
    weight: float
    instance_count: int
    shadow: bool = False


@dataclass
class DeploymentRecord:
    """One UpdateEndpoint in progress: blue (the serving config), green (the new one), the policy.

    `policy` is the validated DeploymentConfig as plain data (see `mve.control.deployments`);
    `green_share` is the part of the traffic green receives now, 0 to 1.
    """

    endpoint_name: str
    old_config: str
    new_config: str
    policy: dict
    green: list[GreenVariant]
    phase: str
    green_share: float
    started_at: float
    phase_since: float
    step: int = 0
    message: str = ""
    # Green instances started so far per variant (a rolling update starts them in batches).
    started: dict[str, int] = field(default_factory=dict)
    # The DataCaptureConfig the endpoint keeps after the update (RetainAllVariantProperties
    # without DataCaptureConfig excluded); None: the new config's.
    data_capture: dict | None = None


class WeightChangeSource:
    """Who changed an endpoint's production weights."""

    CREATE = "create"  # CreateEndpoint, with the config's initial weights
    OPERATOR = "operator"  # UpdateEndpointWeightsAndCapacities
    DEPLOYMENT = "deployment"  # UpdateEndpoint moving traffic between fleets, or finishing
    BANDIT = "bandit"  # an experiment's bandit policy

    #: Sources that are not automatic (DescribeEndpoint's AutomaticWeightChanges leaves them out).
    MANUAL = frozenset({CREATE, OPERATOR, DEPLOYMENT})


@dataclass(frozen=True)
class WeightChange:
    """One change of an endpoint's production weights, as the store keeps it.

    `weights` holds every production variant's weight after the change, by variant name. They are
    relative: a variant's share of the traffic is its weight over their sum. During an update a
    name that is in both fleets has its two shares added (then the weights sum to 1).
    """

    endpoint_name: str
    time: float
    source: str
    weights: dict[str, float]
    reason: str = ""
