"""What the experiments service reads from (and asks of) the rest of the control plane.

One seam over `ControlService` and its store, so that feedback, reports, the capture index and the
bandit never reach into endpoint records themselves. Every method runs on the event loop's thread
(the store is used from there only) and returns plain values that worker threads may read.
"""

from __future__ import annotations

from dataclasses import dataclass

from mve.control.capture_index import CaptureTarget, capture_directory
from mve.control.records import EndpointRecord, EndpointStatus
from mve.errors import ValidationError


@dataclass(frozen=True)
class WeightChangeView:
    """One change of the production weights: when, who, every variant's weight after it, why."""

    time: float
    source: str
    weights: dict[str, float]
    reason: str


@dataclass(frozen=True)
class EndpointView:
    """An endpoint as an experiment sees it."""

    name: str
    status: str
    production_variants: tuple[str, ...]
    shadow_variants: tuple[str, ...]
    #: Production variants: their current weight; shadow variants: their sampling fraction (0-1).
    current_weights: dict[str, float]
    capture_enabled: bool
    capture_destination: str
    updating: bool

    @property
    def production_shares(self) -> dict[str, float]:
        """Each production variant's share of the traffic now (its weight over their sum)."""
        total = sum(self.current_weights[v] for v in self.production_variants)
        return {v: (self.current_weights[v] / total if total > 0 else 0.0) for v in self.production_variants}


class ExperimentSources:
    """Endpoints, their capture configs and weight history, and automatic weight changes."""

    def __init__(self, service):
        self.service = service

    @property
    def store(self):
        """The control plane's state store."""
        return self.service.store

    def _record(self, name: str) -> EndpointRecord | None:
        return self.store.get_endpoint(name)

    def require_endpoint(self, name: str) -> EndpointView:
        """The endpoint called `name`, or ValidationError "Could not find endpoint ..."."""
        endpoint = self._record(name) if name else None
        if endpoint is None or endpoint.status == EndpointStatus.DELETING:
            from mve.control.service import arn

            raise ValidationError(f'Could not find endpoint "{arn("endpoint", name)}".')
        return self._view(endpoint)

    def _view(self, endpoint: EndpointRecord) -> EndpointView:
        capture = self.service.data_capture_of(endpoint) or {}
        production = [v for v in endpoint.variants if not v.shadow]
        shadows = [v for v in endpoint.variants if v.shadow]
        production_total = sum(v.current_weight for v in production)
        weights = {v.variant_name: v.current_weight for v in production}
        for shadow in shadows:
            fraction = shadow.current_weight / production_total if production_total > 0 else 0.0
            weights[shadow.variant_name] = min(1.0, fraction)
        return EndpointView(
            name=endpoint.name,
            status=endpoint.status,
            production_variants=tuple(v.variant_name for v in production),
            shadow_variants=tuple(v.variant_name for v in shadows),
            current_weights=weights,
            capture_enabled=bool(capture.get("enable_capture")),
            capture_destination=str(capture.get("destination_s3_uri", "")),
            updating=self.store.get_deployment(endpoint.name) is not None,
        )

    def endpoint_names(self) -> set[str]:
        """Every endpoint's name (Deleting ones included)."""
        return {e.name for e in self.store.list_endpoints()}

    def capture_targets(self) -> list[CaptureTarget]:
        """The endpoints whose data capture is on, with the directory their records go to."""
        targets = []
        for endpoint in self.store.list_endpoints():
            if endpoint.status == EndpointStatus.DELETING:
                continue
            capture = self.service.data_capture_of(endpoint) or {}
            if capture.get("enable_capture") and capture.get("destination_s3_uri"):
                targets.append(CaptureTarget(endpoint.name, capture_directory(capture["destination_s3_uri"], endpoint.name)))
        return targets

    def weight_history(self, name: str, since: float, until: float) -> tuple[WeightChangeView | None, list[WeightChangeView]]:
        """(the change in force at `since`, or None; every change with since < time < until, oldest first)."""
        store = self.store
        before = store.weights_in_effect(name, at=since)
        changes = [c for c in store.weight_changes(name, since=since, until=until) if c.time > since]
        return (_view_change(before) if before else None), [_view_change(c) for c in changes]

    def automatic_changes(self, name: str, since: float, until: float) -> list[WeightChangeView]:
        """The weight changes the control plane made itself in [since, until), oldest first."""
        return [_view_change(c) for c in self.store.weight_changes(name, since=since, until=until, automatic_only=True)]

    def apply_automatic_weights(self, name: str, weights: dict[str, float], source: str, reason: str) -> None:
        """Set production weights chosen by the control plane (recorded with source and reason)."""
        self.service.apply_automatic_weights(name, weights, source=source, reason=reason)


def _view_change(change) -> WeightChangeView:
    return WeightChangeView(float(change.time), change.source, dict(change.weights), change.reason)
