"""The control plane's Prometheus collector: endpoint status, instances per variant, routing
table, subscribed proxies and alarms.

The store's SQLite connection belongs to the event loop's thread, so a scrape reads everything in
one callback on that loop (`mve.prometheus.loop_reader`) and builds the text on the exporter's
thread. `alarms` is optional: any object whose ``list_alarms()`` returns items with ``.name`` and
``.state``, the state a string (OK, ALARM or INSUFFICIENT_DATA) or an object holding it in ``.value``
(`mve.control.alarms.AlarmState`); None leaves ``mve_alarm_state`` empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mve.control.records import EndpointStatus, InstanceStatus
from mve.prometheus import direct_read

ENDPOINT_STATUSES = (
    EndpointStatus.CREATING,
    EndpointStatus.IN_SERVICE,
    EndpointStatus.UPDATING,
    EndpointStatus.SYSTEM_UPDATING,
    EndpointStatus.ROLLING_BACK,
    EndpointStatus.UPDATE_ROLLBACK_FAILED,
    EndpointStatus.DELETING,
    EndpointStatus.OUT_OF_SERVICE,
    EndpointStatus.FAILED,
)
ALARM_STATES = ("OK", "ALARM", "INSUFFICIENT_DATA")
LABELS = ("endpoint", "variant")


class ControlPlaneCollector(Collector):
    """Collects the control plane's state at each scrape (see the module docstring).

    `store` is a `mve.control.store.Store`, `routes` a `RoutePublisher`; `read` runs a function
    where they may be used (the loop's thread), by default directly.
    """

    def __init__(self, store, routes, alarms=None, read: Callable = direct_read):
        self._store = store
        self._routes = routes
        self._alarms = alarms
        self._read = read

    def _take(self):
        endpoints = self._store.list_endpoints()
        instances = self._store.list_instances()
        version = self._routes.current.version
        subscribers = self._routes.subscriber_count
        alarms = None
        if self._alarms is not None:
            alarms = [(str(a.name), _state_name(a.state)) for a in self._alarms.list_alarms()]
        return endpoints, instances, version, subscribers, alarms

    def collect(self) -> Iterator:
        endpoints, instances, version, subscribers, alarms = self._read(self._take)
        endpoints = sorted(endpoints, key=lambda e: e.name)

        status = GaugeMetricFamily(
            "mve_endpoint_status", "1 for the endpoint's current status, 0 for the others.",
            labels=("endpoint", "status"),
        )
        for endpoint in endpoints:
            known = ENDPOINT_STATUSES if endpoint.status in ENDPOINT_STATUSES else (*ENDPOINT_STATUSES, endpoint.status)
            for name in known:
                status.add_metric((endpoint.name, name), 1.0 if endpoint.status == name else 0.0)
        yield status

        live: dict[tuple[str, str], int] = {}
        for instance in instances:
            if instance.status == InstanceStatus.IN_SERVICE:
                key = (instance.endpoint_name, instance.variant_name)
                live[key] = live.get(key, 0) + 1
        desired = GaugeMetricFamily(
            "mve_variant_desired_instances", "Instances the variant should have.", labels=LABELS
        )
        running = GaugeMetricFamily(
            "mve_variant_instances", "Instances of the variant that are InService (ready and routable).", labels=LABELS
        )
        current_weight = GaugeMetricFamily(
            "mve_variant_current_weight", "The variant's weight in the routing table now.", labels=LABELS
        )
        desired_weight = GaugeMetricFamily(
            "mve_variant_desired_weight", "The weight the variant is being moved to.", labels=LABELS
        )
        for endpoint in endpoints:
            for variant in endpoint.variants:
                key = (endpoint.name, variant.variant_name)
                desired.add_metric(key, variant.desired_instance_count)
                running.add_metric(key, live.get(key, 0))
                current_weight.add_metric(key, variant.current_weight)
                desired_weight.add_metric(key, variant.desired_weight)
        yield from (desired, running, current_weight, desired_weight)

        yield GaugeMetricFamily(
            "mve_routing_table_version", "Version of the routing table sent to proxies.", value=version
        )
        yield GaugeMetricFamily("mve_proxies_subscribed", "Open WatchRoutes streams (proxies).", value=subscribers)

        alarm_state = GaugeMetricFamily(
            "mve_alarm_state", "1 for the alarm's current state, 0 for the others.", labels=("alarm", "state")
        )
        for name, state in sorted(alarms or ()):
            known = ALARM_STATES if state in ALARM_STATES else (*ALARM_STATES, state)
            for candidate in known:
                alarm_state.add_metric((name, candidate), 1.0 if state == candidate else 0.0)
        yield alarm_state


def _state_name(state) -> str:
    return str(getattr(state, "value", state))
