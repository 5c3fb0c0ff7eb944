"""The routing table, turned into `_fastroute` choosers, and the variant picks made from it.

A `Router` holds one immutable `RoutingState`. `Router.apply` builds the next state off to the
side from a whole ``RoutingTable`` and swaps one reference, so a request sees either the old table
or the new one, never a mix; a table older than the current one (same control plane) is ignored,
and a table that does not validate is rejected whole, keeping the last good one.

A variant with batching on carries a `VariantBatcher` (made by the batcher factory the data plane
installs). It survives a table swap while the variant's batching config is unchanged, so no queued
request is lost, and is bound to the variant's newest state; a batcher whose variant left the table
or whose config changed is retired: it sends everything it still holds at once.

Randomness comes from an injected `seed`, so tests pick exactly. Sticky picks (routing keys) hash
the key against seeds derived from variant NAMES, so every proxy, in every run, sends a key to the
same variant, and a weight change moves only the keys it must.

Within a variant, its RoutingStrategy picks the instance: LEAST_OUTSTANDING_REQUESTS the one
with the fewest requests in flight, RANDOM (SageMaker's default) one uniformly at random; both
count the requests in flight, which --max-in-flight-per-instance bounds. Instances the variant's
`OutlierDetector` has taken out of rotation (`mve.proxy.routing.outliers`: consecutive failures, a latency
far above their siblings', a refused connection) are passed over; their state survives a
weight-only table with the balancer, and a table that changes the instance list carries it over
by instance id.

An endpoint's shadow variants (`EndpointState.shadows`) are never picked by weight, TargetVariant
or routing key: the data plane sends them copies of sampled requests (`mve.proxy.shadow`), their
`weight` being the sampling fraction (0-1). `EndpointState.capture` is its data capture policy
(`mve.proxy.capture`), None when capture is off.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mve import _fastroute
from mve.errors import ModelNotReady, NotFound, ServiceUnavailable, ValidationError
from mve.proxy.batching.policy import BATCHING_OFF, BatchingPolicy
from mve.proxy.capture import CapturePolicy
from mve.proxy.routing.outliers import OutlierDetector, OutlierPolicy
from mve.sigv4 import NO_KEYS, SigningKeys

log = logging.getLogger(__name__)

LEAST_OUTSTANDING_REQUESTS = "LEAST_OUTSTANDING_REQUESTS"
RANDOM = "RANDOM"
ROUTING_STRATEGIES = (LEAST_OUTSTANDING_REQUESTS, RANDOM)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the routing table declares it (-1: variable dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Instance:
    """One model-server process of a variant."""

    instance_id: str
    address: str


# The account id in mve's ARNs (arn:mve:sagemaker:local:000000000000:...), named where SageMaker names one.
ACCOUNT_ID = "000000000000"


@dataclass(eq=False)
class VariantState:
    """A variant of one endpoint in one routing table, with its instance balancer.

    The balancer and the outlier detector are shared with the previous table's state of the same
    variant when the instance list did not change, so outstanding-request counts and ejections
    survive a weight-only table.
    """

    endpoint_name: str
    name: str
    model_name: str
    weight: float
    routing_strategy: str
    instances: tuple[Instance, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingPolicy = BATCHING_OFF
    balancer: object | None = field(default=None, repr=False)
    batcher: object | None = field(default=None, repr=False)  # VariantBatcher when batching is on
    fleet: str = ""  # "blue" or "green" during an update of the endpoint, else ""
    outliers: OutlierDetector | None = field(default=None, repr=False)  # None when it has no instance
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def acquire(self, limit: int = 0) -> tuple[int, Instance]:
        """Pick an instance by the routing strategy (ejected ones skipped) and count the request.

        LEAST_OUTSTANDING_REQUESTS picks one with the fewest requests in flight, RANDOM one
        uniformly at random (or, when that one is at `limit`, the least loaded). Instances out of
        rotation are passed over while another can serve. Every successful call must be paired
        with `release` of the returned index, and its outcome told to `outliers`. With a `limit`,
        ModelNotReady when every instance already has that many requests outstanding.
        """
        balancer = self.balancer
        if balancer is None:
            raise ModelNotReady(
                f"Variant {self.name} of endpoint {self.endpoint_name} has no healthy instance to take the request"
            )
        outliers = self.outliers
        if outliers.active:
            outliers.refresh()
        if self.routing_strategy == RANDOM:
            index = balancer.acquire_random()
            if limit and balancer.outstanding(index) > limit:
                balancer.release(index)
                index = balancer.acquire()
        else:
            index = balancer.acquire()
        if limit and balancer.outstanding(index) > limit:
            balancer.release(index)
            raise ModelNotReady(
                f"Variant {self.name} of endpoint {self.endpoint_name}: every instance has {limit} requests in "
                f"flight, its limit (--max-in-flight-per-instance); retry later"
            )
        if outliers.active:
            outliers.picked(index)
        return index, self.instances[index]

    def acquire_other(self, failed: int) -> tuple[int, Instance] | None:
        """Like `acquire`, but never the instance at index `failed`; None when it is the only one."""
        if self.balancer is None or len(self.instances) < 2:
            return None
        outliers = self.outliers
        if outliers.active:
            outliers.refresh()
        if self.routing_strategy == RANDOM:
            index = self.balancer.acquire_random(failed)
        else:
            index = self.balancer.acquire(failed)
        if outliers.active:
            outliers.picked(index)
        return index, self.instances[index]

    def release(self, index: int) -> None:
        """The request counted by `acquire` on instance `index` has finished."""
        self.balancer.release(index)

    def eject(self, index: int) -> bool:
        """Pass instance `index` over for a moment (it refused a connection); False if it already was."""
        return self.outliers.refused(index)

    def ejected_instance_ids(self) -> list[str]:
        """The ids of the instances the outlier detector holds out of rotation."""
        return self.outliers.ejected_ids() if self.outliers is not None else []


@dataclass(eq=False)
class EndpointState:
    """The variants of one endpoint and the choosers that pick among them."""

    name: str
    variants: tuple[VariantState, ...]
    by_name: dict[str, VariantState]
    weighted: object | None  # _fastroute.WeightedChooser; None when every weight is 0
    sticky: object | None  # _fastroute.StickyChooser; None when every weight is 0
    # During an update a variant name can be in both fleets: name -> (blue, green) entries.
    twins: dict[str, tuple[VariantState, ...]] = field(default_factory=dict)
    # Shadow variants: their weight is the fraction of requests copied to them (0-1).
    shadows: tuple[VariantState, ...] = ()
    capture: CapturePolicy | None = None  # data capture; None when off

    def pick(self, target_variant: str = "", routing_key: str = "") -> VariantState:
        """TargetVariant when given (weight 0 included), else sticky by key, else by weight.

        A TargetVariant whose name is in both fleets of an update goes to one of them in
        proportion to their weights (the first when both are 0).
        """
        if target_variant:
            twins = self.twins.get(target_variant)
            if twins is not None:
                return _pick_by_weight(twins)
            variant = self.by_name.get(target_variant)
            if variant is None:
                names = ", ".join(v.name for v in self.variants)
                raise ValidationError(
                    f"Variant {target_variant} not found for endpoint {self.name}; its variants are: {names}"
                )
            return variant
        if self.weighted is None:
            raise ServiceUnavailable(
                f"Endpoint {self.name} has no variant with a weight above 0; name one with TargetVariant"
            )
        if routing_key:
            return self.variants[self.sticky.pick(routing_key.encode())]
        return self.variants[self.weighted.pick()]

    @property
    def routable(self) -> bool:
        """True when at least one variant has an instance."""
        return any(v.instances for v in self.variants)


@dataclass(frozen=True)
class RoutingState:
    """One applied routing table."""

    version: int
    control_plane_id: str
    endpoints: dict[str, EndpointState]
    # Whether the HTTP doors require SigV4, and the date keys to check it with (never secrets).
    signing_keys: SigningKeys = NO_KEYS

    def addresses(self) -> set[str]:
        """Every instance address in the table, shadows' included (the upstream channels it needs)."""
        return {i.address for v in self.all_variants() for i in v.instances}

    def all_variants(self):
        """Every variant of every endpoint, shadows included."""
        for endpoint in self.endpoints.values():
            yield from endpoint.variants
            yield from endpoint.shadows


EMPTY_STATE = RoutingState(version=0, control_plane_id="", endpoints={})


def _predecessor(old_by_key: dict, name: str, fleet: str) -> VariantState | None:
    """The previous table's entry whose balancer and batcher a variant takes over across fleets.

    When an update starts, blue continues the variant that had no fleet; when it ends, the
    variant with no fleet continues whichever fleet had the traffic (green, or blue after a
    rollback).
    """
    if fleet == "blue":
        return old_by_key.get((name, ""))
    if fleet:
        return None
    candidates = [old_by_key.get((name, f)) for f in ("green", "blue")]
    candidates = [c for c in candidates if c is not None]
    return max(candidates, key=lambda c: c.weight) if candidates else None


def _capture_policy(route) -> CapturePolicy | None:
    """The route's data capture; a config the proxy cannot follow turns capture off for that endpoint
    (logged) rather than refusing the table: capture must never stop traffic."""
    if not route.HasField("data_capture"):
        return None
    try:
        return CapturePolicy.from_config(route.data_capture)
    except ValidationError as error:
        log.error("event=capture_config_refused endpoint=%s reason=%r", route.endpoint_name, error.message)
        return None


def _pick_by_weight(variants: tuple[VariantState, ...]) -> VariantState:
    total = sum(v.weight for v in variants)
    if total <= 0:
        return variants[0]
    point = random.random() * total
    for variant in variants:
        point -= variant.weight
        if point < 0:
            return variant
    return variants[-1]


def variant_seed(name: str) -> int:
    """A stable 63-bit seed from a variant name, the same in every process."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") >> 1


class Router:
    """Holds the current `RoutingState`; `apply` swaps in a new table, `pick` chooses a variant."""

    def __init__(
        self,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        batcher_factory: Callable[[BatchingPolicy], object] | None = None,
        outliers: OutlierPolicy = OutlierPolicy(),
    ):
        self._rng = random.Random(seed)
        self._clock = clock
        self._state = EMPTY_STATE
        self._batcher_factory = batcher_factory
        self.has_table = False
        self.outlier_policy = outliers
        # Outlier ejections since the start, by (endpoint, variant, reason): counted by every
        # variant's detector, so a table swap never takes a count back.
        self.ejections: Counter = Counter()

    def set_batcher_factory(self, factory: Callable[[BatchingPolicy], object]) -> None:
        """Make batchers with `factory(policy)` from now on, for the current table's batched variants too."""
        self._batcher_factory = factory
        for variant in self._state.all_variants():
            if variant.batching.enabled and variant.batcher is None:
                variant.batcher = factory(variant.batching)
                variant.batcher.bind(variant)

    @property
    def state(self) -> RoutingState:
        """The routing state requests use now."""
        return self._state

    @property
    def signing_keys(self) -> SigningKeys:
        """The applied table's `mve.sigv4.SigningKeys` (``auth_required`` and date keys) for the HTTP door.

        Before any table (`has_table` False) they require a signature and know no key: nothing passes.
        """
        return self._state.signing_keys

    def apply(self, table) -> bool:
        """Build state from a ``RoutingTable`` and swap it in; False when ignored or rejected."""
        current = self._state
        same_source = self.has_table and table.control_plane_id == current.control_plane_id
        if same_source and table.version < current.version:
            log.info("event=routes_ignored version=%d current=%d reason=older", table.version, current.version)
            return False
        try:
            state = self._build(table, current)
        except (ValidationError, ValueError) as error:  # ValueError: _fastroute refused the table's numbers
            log.error("event=routes_rejected version=%d reason=%r", table.version, str(error))
            return False
        self._state = state
        self.has_table = True
        self._hand_over_batchers(current, state)
        log.info("event=routes_applied version=%d endpoints=%d", state.version, len(state.endpoints))
        return True

    @staticmethod
    def _hand_over_batchers(previous: RoutingState, state: RoutingState) -> None:
        """Bind kept batchers to their variant's new state; retire those no variant kept."""
        kept = set()
        for variant in state.all_variants():
            if variant.batcher is not None:
                variant.batcher.bind(variant)
                kept.add(id(variant.batcher))
        for variant in previous.all_variants():
            if variant.batcher is not None and id(variant.batcher) not in kept:
                log.info(
                    "event=batcher_retired endpoint=%s variant=%s queued_rows=%d",
                    variant.endpoint_name, variant.name, variant.batcher.queued_rows,
                )
                variant.batcher.retire()

    def ejected_instances(self) -> dict[tuple[str, str], list[str]]:
        """(endpoint, variant) -> ids of its instances out of rotation, for the variants that have any.

        Both fleets of a variant during an update, and shadow variants, are included.
        """
        out: dict[tuple[str, str], list[str]] = {}
        for endpoint in self._state.endpoints.values():
            for variant in endpoint.variants + endpoint.shadows:
                ejected = variant.ejected_instance_ids()
                if ejected:
                    out.setdefault((endpoint.name, variant.name), []).extend(ejected)
        return out

    def endpoint(self, endpoint_name: str) -> EndpointState:
        """The endpoint's state; NotFound when the table has no such endpoint (SageMaker Runtime's
        ValidationError "Endpoint NAME of account ACCOUNT not found.")."""
        endpoint = self._state.endpoints.get(endpoint_name)
        if endpoint is None:
            raise NotFound(f"Endpoint {endpoint_name} of account {ACCOUNT_ID} not found.")
        return endpoint

    def pick(self, endpoint_name: str, target_variant: str = "", routing_key: str = "") -> VariantState:
        """The variant that serves one request (see `EndpointState.pick`)."""
        return self.endpoint(endpoint_name).pick(target_variant, routing_key)

    def _build(self, table, current: RoutingState) -> RoutingState:
        endpoints: dict[str, EndpointState] = {}
        for route in table.endpoints:
            if route.endpoint_name in endpoints:
                raise ValidationError(f"endpoint {route.endpoint_name} is listed twice")
            endpoints[route.endpoint_name] = self._build_endpoint(route, current.endpoints.get(route.endpoint_name))
        return RoutingState(
            version=table.version, control_plane_id=table.control_plane_id, endpoints=endpoints,
            signing_keys=SigningKeys.from_table(table),
        )

    def _build_endpoint(self, route, previous: EndpointState | None) -> EndpointState:
        variants = []
        by_name: dict[str, VariantState] = {}
        twins: dict[str, tuple[VariantState, ...]] = {}
        seen: set[tuple[str, str]] = set()
        old_by_key = {(o.name, o.fleet): o for o in previous.variants} if previous is not None else {}
        for v in route.variants:
            key = (v.variant_name, v.fleet)
            if key in seen:
                fleet = f" in fleet {v.fleet}" if v.fleet else ""
                raise ValidationError(f"variant {v.variant_name}{fleet} of endpoint {route.endpoint_name} is listed twice")
            seen.add(key)
            if not math.isfinite(v.weight) or v.weight < 0:
                raise ValidationError(f"variant {v.variant_name} has weight {v.weight}; weights must be finite and >= 0")
            old = old_by_key.get(key) or _predecessor(old_by_key, v.variant_name, v.fleet)
            variant = self._build_variant(route.endpoint_name, v, old)
            variants.append(variant)
            if variant.name in by_name:
                twins[variant.name] = (by_name[variant.name], variant)
            else:
                by_name[variant.name] = variant
        weights = [v.weight for v in variants]
        weighted = sticky = None
        if sum(weights) > 0:
            weighted = _fastroute.WeightedChooser(weights, seed=self._rng.getrandbits(63))
            # During an update blue and green of one name need seeds of their own; outside updates a
            # variant's seed is its name's, so sticky keys stay where they were.
            sticky = _fastroute.StickyChooser(
                weights, seeds=[variant_seed(f"{v.name}/{v.fleet}" if v.fleet else v.name) for v in variants]
            )
        return EndpointState(
            name=route.endpoint_name,
            variants=tuple(variants),
            by_name=by_name,
            weighted=weighted,
            sticky=sticky,
            twins=twins,
            shadows=self._build_shadows(route, previous, by_name),
            capture=_capture_policy(route),
        )

    def _build_shadows(self, route, previous: EndpointState | None, production: dict) -> tuple[VariantState, ...]:
        """The endpoint's shadow variants; each keeps its balancer and batcher across tables like a variant."""
        old_by_name = {s.name: s for s in previous.shadows} if previous is not None else {}
        shadows = []
        for v in route.shadow_variants:
            if v.variant_name in production or any(s.name == v.variant_name for s in shadows):
                raise ValidationError(
                    f"shadow variant {v.variant_name} of endpoint {route.endpoint_name} is listed twice or is also a "
                    f"production variant"
                )
            if not (math.isfinite(v.weight) and 0 <= v.weight <= 1):
                raise ValidationError(
                    f"shadow variant {v.variant_name} has sampling fraction {v.weight}; it must be 0-1"
                )
            shadows.append(self._build_variant(route.endpoint_name, v, old_by_name.get(v.variant_name)))
        return tuple(shadows)

    def _build_variant(self, endpoint_name: str, v, old: VariantState | None) -> VariantState:
        strategy = v.routing_strategy or RANDOM
        if strategy not in ROUTING_STRATEGIES:
            raise ValidationError(f"variant {v.variant_name} has unknown routing strategy {strategy}")
        instances = tuple(Instance(i.instance_id, i.address) for i in v.instances)
        outliers = None
        if old is not None and old.instances == instances and old.balancer is not None:
            balancer, outliers = old.balancer, old.outliers
        elif instances:
            balancer = _fastroute.InstanceBalancer(len(instances), seed=self._rng.getrandbits(63))
            outliers = OutlierDetector(
                endpoint_name, v.variant_name, [i.instance_id for i in instances], balancer, self.outlier_policy,
                self._clock, ejections=self.ejections, previous=old.outliers if old is not None else None,
            )
        else:
            balancer = None
        batching = BatchingPolicy.from_config(v.batching)
        batcher = None
        if batching.enabled:
            if old is not None and old.batcher is not None and old.batching == batching:
                batcher = old.batcher
            elif self._batcher_factory is not None:
                batcher = self._batcher_factory(batching)
        return VariantState(
            endpoint_name=endpoint_name,
            name=v.variant_name,
            fleet=v.fleet,
            model_name=v.model_name,
            weight=float(v.weight),
            routing_strategy=strategy,
            instances=instances,
            inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in v.inputs),
            outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in v.outputs),
            batching=batching,
            balancer=balancer,
            batcher=batcher,
            outliers=outliers,
            clock=self._clock,
        )
