"""Routing tables: built from the store, versioned, and sent to every WatchRoutes subscriber.

A table lists every routable endpoint (InService, Updating, ...) with its variants' weights,
routing strategy, batching, model inputs/outputs and healthy (InService) instances; its shadow
variants with their sampling fractions; and its data capture when capture is enabled. The version
increases (durably, across restarts) only when the content changes. Each subscriber has a queue
of one slot that always holds the newest table, so a slow subscriber skips stale tables and never
holds anyone else up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable

from google.protobuf import json_format

from mve._proto import control_pb2 as pb
from mve.control.records import (
    DeploymentRecord,
    EndpointConfigRecord,
    EndpointRecord,
    EndpointStatus,
    InstanceRecord,
    InstanceStatus,
    ModelRecord,
    TensorSpec,
    VariantSpec,
)
from mve.control.store import Store
from mve.sigv4 import SigningKeys

log = logging.getLogger(__name__)


def _tensor_specs(specs: list[TensorSpec]) -> list[pb.TensorSpec]:
    return [pb.TensorSpec(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in specs]


def _variant_route(spec: VariantSpec, model: ModelRecord | None, weight: float, instances, fleet: str) -> pb.VariantRoute:
    batching = spec.batching
    return pb.VariantRoute(
        variant_name=spec.variant_name,
        model_name=spec.model_name,
        weight=weight,
        routing_strategy=spec.routing_strategy,
        batching=pb.BatchingConfig(
            max_batch_size=batching.max_batch_size,
            max_delay_us=batching.max_delay_us,
            max_batches_in_flight_per_instance=batching.max_batches_in_flight_per_instance,
            max_queue_rows=batching.max_queue_rows,
        ),
        instances=[
            pb.InstanceRoute(instance_id=i.instance_id, address=i.address)
            for i in sorted(instances, key=lambda i: i.instance_id)
        ],
        inputs=_tensor_specs(model.inputs) if model else [],
        outputs=_tensor_specs(model.outputs) if model else [],
        fleet=fleet,
    )


def sampling_fraction(shadow_weight: float, production_weight_sum: float) -> float:
    """The part of an endpoint's requests copied to a shadow variant: its weight over the production sum, at most 1."""
    if production_weight_sum <= 0:
        return 0.0
    return min(1.0, shadow_weight / production_weight_sum)


def production_shares(endpoint: EndpointRecord, deployment: DeploymentRecord | None = None) -> dict[str, float]:
    """The weight of each production variant name as routed now.

    Outside an update, and during one before any traffic moved, these are the variants' current
    weights. Once traffic moves, each fleet's weights are scaled to its share of the traffic (blue
    1 - green_share, green green_share) and the shares of a name in both fleets are added, so the
    result sums to 1.
    """
    weights = endpoint.production_weights()
    if deployment is None or deployment.green_share <= 0:
        return weights
    blue_total = sum(weights.values()) or 1.0
    shares = {name: weight / blue_total * (1.0 - deployment.green_share) for name, weight in weights.items()}
    green = [g for g in deployment.green if not g.shadow]
    green_total = sum(g.weight for g in green) or 1.0
    for variant in green:
        shares[variant.variant_name] = shares.get(variant.variant_name, 0.0) + variant.weight / green_total * deployment.green_share
    return shares


def data_capture_route(capture: dict) -> pb.DataCaptureConfig | None:
    """The routing table's DataCaptureConfig for an endpoint's capture settings; None when capture is off."""
    if not capture.get("enable_capture"):
        return None
    return json_format.ParseDict(capture, pb.DataCaptureConfig())


def _shadow_routes(
    endpoint: EndpointRecord, config: EndpointConfigRecord, models: dict[str, ModelRecord], serving
) -> list[pb.VariantRoute]:
    """The endpoint's shadow variants, each with its sampling fraction as its weight.

    Shadows are only ever the serving config's, so their `fleet` is always empty.
    """
    production_sum = sum(endpoint.production_weights().values())
    routes = []
    for state in endpoint.shadow_variants:
        spec = config.variant(state.variant_name)
        if spec is None:
            continue
        routes.append(
            _variant_route(
                spec, models.get(spec.model_name), sampling_fraction(state.current_weight, production_sum),
                serving(endpoint.name, endpoint.config_name, state.variant_name), "",
            )
        )
    return routes


def build_endpoint_routes(
    endpoints: list[EndpointRecord],
    configs: dict[str, EndpointConfigRecord],
    models: dict[str, ModelRecord],
    instances: list[InstanceRecord],
    deployments: dict[str, DeploymentRecord] | None = None,
) -> list[pb.EndpointRoute]:
    """The routes of every routable endpoint, endpoints sorted by name, variants in config order.

    An endpoint with an update in progress has two fleets: its serving config's variants ("blue")
    and the new config's ("green"), each fleet's weights scaled so that green receives the
    deployment's `green_share` of the traffic and every variant keeps its proportion in its fleet.
    Shadow variants and data capture are the serving config's until the update finishes: the new
    config's shadows start with green but receive copies only once the endpoint runs that config.
    """
    deployments = deployments or {}
    ready: dict[tuple[str, str, str], list[InstanceRecord]] = {}
    for instance in instances:
        if instance.status == InstanceStatus.IN_SERVICE and instance.address:
            key = (instance.endpoint_name, instance.config_name, instance.variant_name)
            ready.setdefault(key, []).append(instance)

    def serving(endpoint: str, config_name: str, variant: str) -> list[InstanceRecord]:
        return ready.get((endpoint, config_name, variant), []) + ready.get((endpoint, "", variant), [])

    routes = []
    for endpoint in sorted(endpoints, key=lambda e: e.name):
        config = configs.get(endpoint.config_name)
        if endpoint.status not in EndpointStatus.ROUTABLE or config is None:
            continue
        route = pb.EndpointRoute(endpoint_name=endpoint.name)
        deployment = deployments.get(endpoint.name)
        green_config = configs.get(deployment.new_config) if deployment is not None else None
        blue_share = 1.0 - deployment.green_share if green_config is not None else 1.0
        blue_total = sum(endpoint.production_weights().values()) or 1.0
        for state in endpoint.production_variants:
            spec = config.variant(state.variant_name)
            if spec is None:
                continue
            weight = state.current_weight if green_config is None else state.current_weight / blue_total * blue_share
            route.variants.append(
                _variant_route(
                    spec, models.get(spec.model_name), weight,
                    serving(endpoint.name, endpoint.config_name, state.variant_name),
                    "blue" if green_config is not None else "",
                )
            )
        if green_config is not None:
            production_green = [g for g in deployment.green if not g.shadow]
            green_total = sum(g.weight for g in production_green) or 1.0
            for green in production_green:
                spec = green_config.variant(green.variant_name)
                if spec is None:
                    continue
                route.variants.append(
                    _variant_route(
                        spec, models.get(spec.model_name), green.weight / green_total * deployment.green_share,
                        ready.get((endpoint.name, deployment.new_config, green.variant_name), []), "green",
                    )
                )
        route.shadow_variants.extend(_shadow_routes(endpoint, config, models, serving))
        capture = data_capture_route(endpoint.data_capture_in_effect(config))
        if capture is not None:
            route.data_capture.CopyFrom(capture)
        routes.append(route)
    return routes


def build_routes_from_store(store: Store) -> list[pb.EndpointRoute]:
    """`build_endpoint_routes` over everything in `store`."""
    endpoints = store.list_endpoints()
    deployments = {d.endpoint_name: d for d in store.list_deployments()}
    names = {e.config_name for e in endpoints} | {d.new_config for d in deployments.values()}
    configs = {name: store.get_config(name) for name in names}
    model_names = {v.model_name for c in configs.values() if c for v in c.all_variants}
    models = {name: store.get_model(name) for name in model_names}
    return build_endpoint_routes(
        endpoints,
        {k: v for k, v in configs.items() if v is not None},
        {k: v for k, v in models.items() if v is not None},
        store.list_instances(),
        deployments,
    )


class RoutePublisher:
    """Keeps the current routing table and pushes each new version to every subscriber.

    `signing_keys` gives the date keys a table carries (`AccessKeyStore.signing_keys`); with it
    tables say ``auth_required``, without it (``--auth none``) they carry no keys and do not.
    With `upstream_tls` (``--model-server-tls-cert``) every table says ``upstream_tls``: proxies dial
    the model servers with TLS.
    """

    def __init__(
        self,
        store: Store,
        signing_keys: Callable[[], list[pb.SigningKey]] | None = None,
        *,
        upstream_tls: bool = False,
    ):
        self._store = store
        self._signing_keys = signing_keys
        self.upstream_tls = upstream_tls
        self._signing: SigningKeys | None = None
        self._table: pb.RoutingTable | None = None
        self._subscribers: set[asyncio.Queue] = set()
        self._delivered: dict[asyncio.Queue, int] = {}  # subscriber -> the last version handed to it

    @property
    def current(self) -> pb.RoutingTable:
        """The table subscribers have now (publishing one first if there is none yet)."""
        if self._table is None:
            self.publish()
        assert self._table is not None
        return self._table

    @property
    def auth_required(self) -> bool:
        """Whether the tables require SigV4 on the HTTP faces (``--auth sigv4``)."""
        return self._signing_keys is not None

    @property
    def signing_keys(self) -> SigningKeys:
        """The current table's `mve.sigv4.SigningKeys`: what the control plane's own HTTP faces check."""
        table = self.current
        if self._signing is None:
            self._signing = SigningKeys.from_table(table)
        return self._signing

    @property
    def subscriber_count(self) -> int:
        """How many WatchRoutes streams are open."""
        return len(self._subscribers)

    def publish(self) -> pb.RoutingTable:
        """Rebuild the table from the store; if it changed, give it a new version and send it."""
        routes = build_routes_from_store(self._store)
        keys = self._signing_keys() if self._signing_keys is not None else []
        previous = self._table
        if (
            previous is not None
            and list(previous.endpoints) == routes
            and list(previous.signing_keys) == keys
            and previous.auth_required == self.auth_required
            and previous.upstream_tls == self.upstream_tls
        ):
            return previous
        table = pb.RoutingTable(
            version=self._store.next_route_version(),
            endpoints=routes,
            control_plane_id=self._store.control_plane_id(),
            signing_keys=keys,
            auth_required=self.auth_required,
            upstream_tls=self.upstream_tls,
        )
        self._table = table
        self._signing = None
        log.info(
            "event=routes_published version=%d endpoints=%d signing_keys=%d auth_required=%s upstream_tls=%s "
            "subscribers=%d",
            table.version,
            len(routes),
            len(keys),
            table.auth_required,
            table.upstream_tls,
            len(self._subscribers),
        )
        for queue in self._subscribers:
            _put_latest(queue, table)
        return table

    async def subscribe(self) -> AsyncIterator[pb.RoutingTable]:
        """The current table at once, then every new one (stale ones skipped for slow readers)."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        queue.put_nowait(self.current)
        self._subscribers.add(queue)
        try:
            while True:
                table = await queue.get()
                self._delivered[queue] = table.version
                yield table
        finally:
            self._subscribers.discard(queue)
            self._delivered.pop(queue, None)

    async def wait_delivered(self, version: int, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait until some proxy subscribes and every subscriber was sent `version` or later.

        False when `timeout_s` passed first (no proxy came, or one is stuck).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            subscribers = list(self._subscribers)
            if subscribers and all(self._delivered.get(q, 0) >= version for q in subscribers):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(poll_s)


def _put_latest(queue: asyncio.Queue, table: pb.RoutingTable) -> None:
    if queue.full():
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
    queue.put_nowait(table)
