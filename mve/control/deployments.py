"""UpdateEndpoint: moving an endpoint to a new config without losing a request, and back on alarm.

A deployment keeps the serving fleet ("blue", the endpoint's config) while it starts the new
config's fleet ("green") and moves traffic to it, as SageMaker's deployment guardrails do:

- Blue/green: green starts and passes its health checks while blue serves; traffic then moves by
  the policy (ALL_AT_ONCE, CANARY then the rest, LINEAR steps), with `WaitIntervalInSeconds` of
  baking after each shift; after the last, blue is kept `TerminationWaitInSeconds`, then drained
  and stopped. Each fleet keeps its variants' proportions, so an A/B split holds on green too.
- Rolling: capacity is replaced in batches of `MaximumBatchSize` (green instances start, traffic
  follows capacity, as many blue instances stop), for fleets too large to double.
- Auto-rollback: the named alarms are watched from the first traffic shift to the end of the last
  baking period; any of them in ALARM (or the execution timeout passing) sends traffic back to
  blue at once (RollingBack), green is stopped, and the endpoint is InService on its old config
  with a FailureReason naming the cause. A failed rollback leaves UpdateRollbackFailed.
- A green fleet that fails to start never touches blue: the endpoint stays InService on its old
  config with the reason in FailureReason.
- Shadow variants: the new config's shadows start with green (a rolling update starts them with
  its first batch) and count for no traffic share; blue's shadows and data capture stay in the
  routing table until the update finishes, then the new config's apply.
- Every move of traffic (each shift, the switch, a rollback) is recorded in the endpoint's weight
  history with source "deployment" (`mve.control.routes.production_shares`).

Progress is stored (`DeploymentRecord`): a control plane that restarts during an update rolls it
back (`DeploymentRunner.recover`). Time and sleeping are injected, so tests run a ten-minute
canary in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable

from mve.control.records import (
    DeploymentPhase,
    DeploymentRecord,
    EndpointConfigRecord,
    EndpointRecord,
    EndpointStatus,
    GreenVariant,
    InstanceStatus,
    VariantState,
    WeightChangeSource,
)
from mve.control.routes import RoutePublisher, production_shares
from mve.control.store import Store
from mve.errors import ValidationError

log = logging.getLogger(__name__)

TRAFFIC_TYPES = ("ALL_AT_ONCE", "CANARY", "LINEAR")
SIZE_TYPES = ("INSTANCE_COUNT", "CAPACITY_PERCENT")
RETAINABLE = ("DesiredInstanceCount", "DesiredWeight", "DataCaptureConfig")
DEFAULT_MAX_EXECUTION_S = 28800
POLL_S = 0.1


class Rollback(Exception):
    """Why an update goes back to blue (the message becomes the FailureReason)."""


@dataclass(frozen=True)
class Policy:
    """A validated DeploymentConfig as the runner uses it.

    `mode` is ALL_AT_ONCE, CANARY, LINEAR (blue/green) or ROLLING; `size` the canary size, the
    linear step or the rolling batch as (type, value); `rollback_size` the rolling rollback batch.
    """

    mode: str = "ALL_AT_ONCE"
    wait_s: int = 0
    size: tuple[str, int] | None = None
    rollback_size: tuple[str, int] | None = None
    termination_wait_s: int = 0
    max_execution_s: int = DEFAULT_MAX_EXECUTION_S
    alarms: tuple[str, ...] = ()

    def as_record(self) -> dict:
        """Plain data for the store."""
        return {
            "mode": self.mode, "wait_s": self.wait_s, "size": list(self.size) if self.size else None,
            "rollback_size": list(self.rollback_size) if self.rollback_size else None,
            "termination_wait_s": self.termination_wait_s, "max_execution_s": self.max_execution_s,
            "alarms": list(self.alarms),
        }

    @classmethod
    def from_record(cls, data: dict) -> "Policy":
        """The policy `as_record` stored."""
        return cls(
            mode=data["mode"], wait_s=data["wait_s"], size=tuple(data["size"]) if data["size"] else None,
            rollback_size=tuple(data["rollback_size"]) if data["rollback_size"] else None,
            termination_wait_s=data["termination_wait_s"], max_execution_s=data["max_execution_s"],
            alarms=tuple(data["alarms"]),
        )


def _range(value: int, low: int, high: int, field_name: str) -> int:
    if not low <= value <= high:
        raise ValidationError(f"{field_name} must be {low}-{high}, got {value}.")
    return value


def _size(size: dict | None, field_name: str) -> tuple[str, int] | None:
    if not size:
        return None
    kind, value = size.get("Type", ""), size.get("Value", 0)
    if kind not in SIZE_TYPES:
        raise ValidationError(f"{field_name}.Type must be one of {', '.join(SIZE_TYPES)}, got {kind!r}.")
    if value < 1:
        raise ValidationError(f"{field_name}.Value must be at least 1, got {value}.")
    if kind == "CAPACITY_PERCENT" and value > 100:
        raise ValidationError(f"{field_name}.Value is a percentage: 1-100, got {value}.")
    return kind, value


def parse_deployment_config(config: dict | None, alarm_exists: Callable[[str], bool]) -> Policy:
    """Validate a DeploymentConfig (SageMaker's keys) into a `Policy`; None means all at once."""
    if not config:
        return Policy()
    blue_green = config.get("BlueGreenUpdatePolicy")
    rolling = config.get("RollingUpdatePolicy")
    if blue_green and rolling:
        raise ValidationError("DeploymentConfig takes BlueGreenUpdatePolicy or RollingUpdatePolicy, not both.")
    alarms = tuple(a.get("AlarmName", "") for a in (config.get("AutoRollbackConfiguration") or {}).get("Alarms", []))
    if config.get("AutoRollbackConfiguration") is not None and not 1 <= len(alarms) <= 10:
        raise ValidationError("AutoRollbackConfiguration.Alarms must name 1-10 alarms.")
    if len(set(alarms)) != len(alarms):
        raise ValidationError("AutoRollbackConfiguration.Alarms names an alarm more than once.")
    for name in alarms:
        if not name or not alarm_exists(name):
            raise ValidationError(f"Alarm {name!r} of AutoRollbackConfiguration does not exist (create it with PutMetricAlarm).")
    if rolling:
        size = _size(rolling.get("MaximumBatchSize"), "RollingUpdatePolicy.MaximumBatchSize")
        if size is None:
            raise ValidationError("RollingUpdatePolicy.MaximumBatchSize is required.")
        return Policy(
            mode="ROLLING",
            wait_s=_range(rolling.get("WaitIntervalInSeconds", 0), 0, 3600, "RollingUpdatePolicy.WaitIntervalInSeconds"),
            size=size,
            rollback_size=_size(rolling.get("RollbackMaximumBatchSize"), "RollingUpdatePolicy.RollbackMaximumBatchSize"),
            max_execution_s=_range(
                rolling.get("MaximumExecutionTimeoutInSeconds", DEFAULT_MAX_EXECUTION_S), 600, 28800,
                "RollingUpdatePolicy.MaximumExecutionTimeoutInSeconds",
            ),
            alarms=alarms,
        )
    if not blue_green:
        return Policy(alarms=alarms)
    routing = blue_green.get("TrafficRoutingConfiguration") or {}
    mode = routing.get("Type", "")
    if mode not in TRAFFIC_TYPES:
        raise ValidationError(f"TrafficRoutingConfiguration.Type must be one of {', '.join(TRAFFIC_TYPES)}, got {mode!r}.")
    size = None
    if mode == "CANARY":
        size = _size(routing.get("CanarySize"), "TrafficRoutingConfiguration.CanarySize")
        if size is None:
            raise ValidationError("A CANARY deployment needs TrafficRoutingConfiguration.CanarySize.")
        if size[0] == "CAPACITY_PERCENT" and size[1] > 50:
            raise ValidationError(f"CanarySize may be at most 50% of the new fleet, got {size[1]}%.")
    elif mode == "LINEAR":
        size = _size(routing.get("LinearStepSize"), "TrafficRoutingConfiguration.LinearStepSize")
        if size is None:
            raise ValidationError("A LINEAR deployment needs TrafficRoutingConfiguration.LinearStepSize.")
        if size[0] == "CAPACITY_PERCENT" and not 10 <= size[1] <= 50:
            raise ValidationError(f"LinearStepSize must be 10-50% of the new fleet, got {size[1]}%.")
    return Policy(
        mode=mode,
        wait_s=_range(routing.get("WaitIntervalInSeconds", 0), 0, 3600, "TrafficRoutingConfiguration.WaitIntervalInSeconds"),
        size=size,
        termination_wait_s=_range(
            blue_green.get("TerminationWaitInSeconds", 0), 0, 3600, "BlueGreenUpdatePolicy.TerminationWaitInSeconds"
        ),
        max_execution_s=_range(
            blue_green.get("MaximumExecutionTimeoutInSeconds", DEFAULT_MAX_EXECUTION_S), 600, 28800,
            "BlueGreenUpdatePolicy.MaximumExecutionTimeoutInSeconds",
        ),
        alarms=alarms,
    )


def _share_of(size: tuple[str, int], green_instances: int) -> float:
    kind, value = size
    return value / 100.0 if kind == "CAPACITY_PERCENT" else value / max(green_instances, 1)


def traffic_steps(policy: Policy, green_instances: int) -> list[float]:
    """The green shares a blue/green deployment moves through, ending at 1.0.

    A canary (or linear step) given as INSTANCE_COUNT is that part of the green fleet's instances.
    """
    if policy.mode == "ALL_AT_ONCE" or policy.size is None:
        return [1.0]
    share = _share_of(policy.size, green_instances)
    if policy.mode == "CANARY":
        if share > 0.5:
            raise ValidationError(
                f"CanarySize {policy.size[1]} is more than half of the new fleet's {green_instances} instances."
            )
        return [share, 1.0]
    if not 0.1 - 1e-9 <= share <= 0.5 + 1e-9:
        raise ValidationError(
            f"LinearStepSize {policy.size[1]} is {share:.0%} of the new fleet's {green_instances} instances; it must be 10-50%."
        )
    steps = [min(share * k, 1.0) for k in range(1, math.ceil(1 / share - 1e-9) + 1)]
    steps[-1] = 1.0
    return steps


def batch_instances(size: tuple[str, int] | None, total: int) -> int:
    """Instances per rolling batch: a count, or a percentage of `total` (at least 1)."""
    if size is None:
        return total
    kind, value = size
    count = value if kind == "INSTANCE_COUNT" else math.floor(total * value / 100)
    return max(1, min(count, total))


def green_variants(
    endpoint: EndpointRecord, config: EndpointConfigRecord, retain_all: bool, excluded: tuple[str, ...]
) -> list[GreenVariant]:
    """The new config's production and shadow variants with the weights and counts they start with.

    With RetainAllVariantProperties a variant of the same name and role (production or shadow)
    keeps its current desired weight and instance count, except the properties named in
    ExcludeRetainedVariantProperties.
    """
    out = []
    for spec in config.all_variants:
        shadow = config.is_shadow(spec.variant_name)
        weight, count = spec.initial_variant_weight, spec.initial_instance_count
        current = endpoint.variant(spec.variant_name) if retain_all else None
        if current is not None and current.shadow == shadow:
            if "DesiredWeight" not in excluded:
                weight = current.desired_weight
            if "DesiredInstanceCount" not in excluded:
                count = current.desired_instance_count
        out.append(GreenVariant(spec.variant_name, weight, count, shadow))
    return out


@dataclass
class _Watch:
    alarms: tuple[str, ...]
    deadline: float


class DeploymentRunner:
    """Runs each endpoint's update as one task; the store holds its progress.

    `launch(endpoint, specs, config)` starts instances and returns their failures;
    `stop(endpoint, records)` drains and stops instances; `alarm_state(name)` answers an alarm's
    state (None when it no longer exists).
    """

    def __init__(
        self,
        store: Store,
        routes: RoutePublisher,
        launch: Callable[[str, list, str], Awaitable[list[BaseException]]],
        stop: Callable[[str, list], Awaitable[None]],
        alarm_state: Callable[[str], str | None],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self._store = store
        self._routes = routes
        self._launch = launch
        self._stop = stop
        self._alarm_state = alarm_state
        self._clock = clock
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task] = {}
        self.finished: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------ entry points

    def start(self, deployment: DeploymentRecord) -> None:
        """Store the deployment and run it in the background."""
        self._store.put_deployment(deployment)
        done = self.finished[deployment.endpoint_name] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(deployment.endpoint_name))
        task.add_done_callback(lambda _: done.set())
        self._tasks[deployment.endpoint_name] = task

    def active(self, endpoint_name: str) -> bool:
        """True while the endpoint has an update in progress."""
        return self._store.get_deployment(endpoint_name) is not None

    def stop_running(self, endpoint_name: str) -> None:
        """Abandon the endpoint's update where it is (the endpoint is being deleted with both fleets)."""
        task = self._tasks.pop(endpoint_name, None)
        if task is not None and not task.done():
            task.cancel()
        self._store.delete_deployment(endpoint_name)

    async def shutdown(self) -> None:
        """Cancel every running update; what is stored is rolled back by the next `recover`."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def recover(self) -> None:
        """After a restart: every stored update is rolled back to its old config.

        Blue kept serving throughout (or, after a partial rolling update, serves what is left and
        the reconciler restores its counts); the green instances are stopped by the reconciler's
        recovery, which adopts only the instances of an endpoint's serving config.
        """
        for deployment in self._store.list_deployments():
            endpoint = self._store.get_endpoint(deployment.endpoint_name)
            self._store.delete_deployment(deployment.endpoint_name)
            if endpoint is None:
                continue
            endpoint.status = EndpointStatus.IN_SERVICE
            endpoint.failure_reason = (
                f"Update to endpoint config {deployment.new_config} was rolled back: the control plane restarted "
                f"during it (phase {deployment.phase})."
            )
            endpoint.last_modified_time = self._clock()
            _settle_variants(endpoint)
            self._store.save_endpoint(endpoint)
            self._record_traffic(endpoint.name, "traffic back on the old fleet: the control plane restarted during the update")
            log.warning("event=update_rolled_back endpoint=%s reason=control_plane_restart", endpoint.name)

    # ------------------------------------------------------------ the run

    async def _run(self, name: str) -> None:
        deployment = self._store.get_deployment(name)
        policy = Policy.from_record(deployment.policy)
        watch = _Watch(policy.alarms, deployment.started_at + policy.max_execution_s)
        log.info(
            "event=update_started endpoint=%s from=%s to=%s mode=%s",
            name, deployment.old_config, deployment.new_config, policy.mode,
        )
        try:
            if policy.mode == "ROLLING":
                await self._rolling(deployment, policy, watch)
            else:
                await self._blue_green(deployment, policy, watch)
        except Rollback as reason:
            await self._roll_back(name, str(reason), policy)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a bug must not leave two fleets without an owner
            log.exception("event=update_error endpoint=%s", name)
            await self._roll_back(name, f"Update failed: {error}", policy)
        finally:
            if self._tasks.get(name) is asyncio.current_task():
                del self._tasks[name]

    async def _blue_green(self, deployment: DeploymentRecord, policy: Policy, watch: _Watch) -> None:
        name = deployment.endpoint_name
        if not await self._start_green(deployment, [(g, g.instance_count) for g in deployment.green]):
            return
        green_total = sum(g.instance_count for g in deployment.green if not g.shadow)
        for share in traffic_steps(policy, green_total):
            self._check(deployment, watch)
            self._set(name, phase=DeploymentPhase.SHIFTING, green_share=share, message=f"{share:.0%} of traffic on the new fleet")
            self._set(name, phase=DeploymentPhase.BAKING)
            await self._bake(deployment, policy.wait_s, watch)
        self._set(name, phase=DeploymentPhase.TERMINATING, message="all traffic on the new fleet")
        if policy.termination_wait_s:
            await self._sleep(policy.termination_wait_s)
        await self._finish(name)

    async def _rolling(self, deployment: DeploymentRecord, policy: Policy, watch: _Watch) -> None:
        name = deployment.endpoint_name
        production = [g for g in deployment.green if not g.shadow]
        # Shadows take no traffic, so they are no part of the capacity moved batch by batch.
        shadows = [(g, g.instance_count) for g in deployment.green if g.shadow]
        green_total = sum(g.instance_count for g in production)
        batch = batch_instances(policy.size, green_total)
        started = 0
        need = {g.variant_name: g.instance_count for g in production}
        first = True
        while started < green_total:
            launches = _spread(production, need, batch)
            if first:
                if not await self._start_green(deployment, launches + shadows):
                    return
                first = False
            else:
                self._check(deployment, watch)
                errors = await self._launch(name, _specs(self._store, deployment.new_config, launches), deployment.new_config)
                if errors:
                    raise Rollback(f"Rolling update to {deployment.new_config} failed to start instances: {errors[0]}")
            for green, count in launches:
                need[green.variant_name] -= count
            self._set(
                name,
                started={
                    **{g.variant_name: count for g, count in shadows},
                    **{g.variant_name: g.instance_count - need[g.variant_name] for g in production},
                },
            )
            started += sum(count for _, count in launches)
            share = started / green_total
            self._check(deployment, watch)
            self._set(name, phase=DeploymentPhase.SHIFTING, green_share=share, message=f"{started} of {green_total} new instances serving")
            await self._retire_blue(name, deployment.old_config, batch, final=started >= green_total)
            self._set(name, phase=DeploymentPhase.BAKING)
            await self._bake(deployment, policy.wait_s, watch)
        await self._finish(name)

    # ------------------------------------------------------------ steps

    async def _start_green(self, deployment: DeploymentRecord, launches: list[tuple[GreenVariant, int]]) -> bool:
        """Start green instances; on failure stop them and leave blue as it was (False)."""
        name = deployment.endpoint_name
        self._stamp_blue(name, deployment.old_config)
        self._set(name, phase=DeploymentPhase.CREATING, message="starting the new fleet")
        specs = _specs(self._store, deployment.new_config, launches)
        errors = await self._launch(name, specs, deployment.new_config)
        if not errors:
            self._set(name, started={g.variant_name: n for g, n in launches})
            return True
        await self._stop(name, self._fleet(name, deployment.new_config))
        reason = f"Update to endpoint config {deployment.new_config} failed, the endpoint still serves {deployment.old_config}: {errors[0]}"
        self._end(name, reason)
        log.warning("event=update_failed endpoint=%s reason=%r", name, reason)
        return False

    async def _bake(self, deployment: DeploymentRecord, seconds: float, watch: _Watch) -> None:
        """Wait `seconds` with traffic where it is, watching alarms, the timeout and green's health."""
        end = self._clock() + seconds
        while True:
            self._check(deployment, watch)
            await self._replace_lost_green(deployment)
            left = end - self._clock()
            if left <= 0:
                return
            await self._sleep(min(POLL_S, left))

    def _check(self, deployment: DeploymentRecord, watch: _Watch) -> None:
        for alarm in watch.alarms:
            if self._alarm_state(alarm) == "ALARM":
                raise Rollback(
                    f"Update to endpoint config {deployment.new_config} was rolled back: alarm {alarm} went into ALARM."
                )
        if self._clock() > watch.deadline:
            raise Rollback(
                f"Update to endpoint config {deployment.new_config} was rolled back: it took longer than "
                f"MaximumExecutionTimeoutInSeconds."
            )

    async def _replace_lost_green(self, deployment: DeploymentRecord) -> None:
        """Start new green instances for any that exited (a crash), so capacity stays."""
        current = self._store.get_deployment(deployment.endpoint_name)
        if current is None or current.phase == DeploymentPhase.CREATING:
            return
        live: dict[str, int] = {}
        for record in self._fleet(deployment.endpoint_name, deployment.new_config):
            live[record.variant_name] = live.get(record.variant_name, 0) + 1
        started = _started_counts(current)
        launches = [(g, started[g.variant_name] - live.get(g.variant_name, 0)) for g in current.green]
        launches = [(g, n) for g, n in launches if n > 0]
        if launches:
            specs = _specs(self._store, deployment.new_config, launches)
            errors = await self._launch(deployment.endpoint_name, specs, deployment.new_config)
            if errors:
                raise Rollback(
                    f"Update to endpoint config {deployment.new_config} was rolled back: a new instance was lost "
                    f"and could not be replaced: {errors[0]}"
                )

    async def _retire_blue(self, name: str, old_config: str, count: int, *, final: bool) -> None:
        """Stop up to `count` blue production instances; every blue variant keeps one, and blue's
        shadows all of theirs, until the final batch."""
        blue = self._fleet(name, old_config)
        if final:
            victims = blue
        else:
            endpoint = self._store.get_endpoint(name)
            shadows = {v.variant_name for v in endpoint.shadow_variants} if endpoint is not None else set()
            by_variant: dict[str, list] = {}
            for record in blue:
                if record.variant_name not in shadows:
                    by_variant.setdefault(record.variant_name, []).append(record)
            victims = []
            while len(victims) < count:
                spare = [records for records in by_variant.values() if len(records) > 1]
                if not spare:
                    break
                largest = max(spare, key=len)
                victims.append(largest.pop())
        if victims:
            await self._stop(name, victims)

    async def _finish(self, name: str) -> None:
        """Green becomes the endpoint: the new config and its variants; blue is drained and stopped."""
        deployment = self._store.get_deployment(name)
        endpoint = self._store.get_endpoint(name)
        endpoint.config_name = deployment.new_config
        endpoint.variants = [
            VariantState(
                variant_name=g.variant_name,
                desired_weight=g.weight,
                current_weight=g.weight,
                desired_instance_count=g.instance_count,
                shadow=g.shadow,
            )
            for g in deployment.green
        ]
        endpoint.data_capture = deployment.data_capture
        endpoint.failure_reason = ""
        endpoint.last_modified_time = self._clock()
        self._store.save_endpoint(endpoint)
        self._store.put_last_deployment_config(name, deployment.policy.get("given"))
        self._store.delete_deployment(name)
        self._record_traffic(name, f"update to endpoint config {deployment.new_config} finished")
        self._routes.publish()  # blue leaves the table: its instances no longer serve the endpoint's config
        await self._stop(name, self._fleet(name, deployment.old_config))
        endpoint = self._store.get_endpoint(name)
        endpoint.status = EndpointStatus.IN_SERVICE
        endpoint.last_modified_time = self._clock()
        self._store.save_endpoint(endpoint)
        self._routes.publish()
        log.info("event=update_finished endpoint=%s config=%s", name, deployment.new_config)

    async def _roll_back(self, name: str, reason: str, policy: Policy) -> None:
        """Traffic back to blue at once, blue's capacity restored, green stopped; InService on the old config."""
        deployment = self._store.get_deployment(name)
        if deployment is None:
            return
        log.warning("event=update_rolling_back endpoint=%s reason=%r", name, reason)
        try:
            self._set(name, phase=DeploymentPhase.ROLLING_BACK, green_share=0.0, message=reason)
            endpoint = self._store.get_endpoint(name)
            endpoint.status = EndpointStatus.ROLLING_BACK
            self._store.save_endpoint(endpoint)
            self._routes.publish()
            await self._restore_blue(name, deployment, policy)
            await self._stop(name, self._fleet(name, deployment.new_config))
        except Exception as error:  # noqa: BLE001 - the endpoint must say that the rollback failed
            log.exception("event=update_rollback_failed endpoint=%s", name)
            endpoint = self._store.get_endpoint(name)
            if endpoint is not None:
                endpoint.status = EndpointStatus.UPDATE_ROLLBACK_FAILED
                endpoint.failure_reason = f"{reason} The rollback failed: {error}"
                endpoint.last_modified_time = self._clock()
                self._store.save_endpoint(endpoint)
            self._store.delete_deployment(name)
            self._routes.publish()
            return
        self._end(name, reason)

    async def _restore_blue(self, name: str, deployment: DeploymentRecord, policy: Policy) -> None:
        """Start blue instances a rolling update stopped, in batches of RollbackMaximumBatchSize."""
        endpoint = self._store.get_endpoint(name)
        config = self._store.get_config(deployment.old_config)
        live: dict[str, int] = {}
        for record in self._fleet(name, deployment.old_config):
            live[record.variant_name] = live.get(record.variant_name, 0) + 1
        missing = [
            (config.variant(v.variant_name), v.desired_instance_count - live.get(v.variant_name, 0))
            for v in endpoint.variants
        ]
        specs = [spec for spec, n in missing if spec is not None for _ in range(max(n, 0))]
        batch = batch_instances(policy.rollback_size, len(specs)) if specs else 0
        for start in range(0, len(specs), max(batch, 1)):
            errors = await self._launch(name, specs[start : start + batch], deployment.old_config)
            if errors:
                raise RuntimeError(f"could not restart the old fleet's instances: {errors[0]}")

    # ------------------------------------------------------------ store helpers

    def _set(self, name: str, **changes) -> None:
        deployment = self._store.get_deployment(name)
        if "phase" in changes and changes["phase"] != deployment.phase:
            changes.setdefault("phase_since", self._clock())
        updated = replace(deployment, **changes)
        self._store.put_deployment(updated)
        if "green_share" in changes:
            self._record_traffic(
                name, f"update to endpoint config {updated.new_config}: {updated.green_share:.0%} of traffic on the new fleet"
            )
            self._routes.publish()
        if "phase" in changes or "green_share" in changes:
            log.info(
                "event=update_progress endpoint=%s phase=%s green_share=%.3f message=%r",
                name, updated.phase, updated.green_share, updated.message,
            )

    def _record_traffic(self, name: str, reason: str) -> None:
        """Add the endpoint's traffic split as routed now to its weight history, when it changed."""
        endpoint = self._store.get_endpoint(name)
        if endpoint is None:
            return
        weights = production_shares(endpoint, self._store.get_deployment(name))
        last = self._store.weights_in_effect(name)
        if last is not None and same_split(last.weights, weights):
            return
        self._store.record_weight_change(name, self._clock(), WeightChangeSource.DEPLOYMENT, weights, reason)

    def _end(self, name: str, reason: str) -> None:
        """The update is over without switching: InService on the old config, with the reason."""
        endpoint = self._store.get_endpoint(name)
        self._store.delete_deployment(name)
        if endpoint is not None:
            endpoint.status = EndpointStatus.IN_SERVICE
            endpoint.failure_reason = reason
            endpoint.last_modified_time = self._clock()
            _settle_variants(endpoint)
            self._store.save_endpoint(endpoint)
        self._routes.publish()

    def _stamp_blue(self, name: str, old_config: str) -> None:
        """Name the serving config on blue's instance records (older records carry none)."""
        for record in self._store.list_instances(name):
            if record.config_name == "":
                record.config_name = old_config
                self._store.put_instance(record)

    def _fleet(self, name: str, config_name: str) -> list:
        """The running (not stopping) instances of one config of the endpoint."""
        return [
            r for r in self._store.list_instances(name)
            if r.config_name == config_name and r.status != InstanceStatus.STOPPING
        ]


def same_split(a: dict[str, float], b: dict[str, float], tolerance: float = 1e-9) -> bool:
    """True when two weight maps split traffic the same way (weights are relative; absent means 0)."""
    total_a, total_b = sum(a.values()), sum(b.values())
    if total_a <= 0 or total_b <= 0:
        return total_a <= 0 and total_b <= 0
    return all(abs(a.get(k, 0.0) / total_a - b.get(k, 0.0) / total_b) <= tolerance for k in a.keys() | b.keys())


def _settle_variants(endpoint: EndpointRecord) -> None:
    for variant in endpoint.variants:
        variant.status = ""
        variant.status_message = ""


def _specs(store: Store, config_name: str, launches: list[tuple[GreenVariant, int]]) -> list:
    config = store.get_config(config_name)
    return [config.variant(g.variant_name) for g, count in launches for _ in range(count)]


def _spread(green: list[GreenVariant], need: dict[str, int], batch: int) -> list[tuple[GreenVariant, int]]:
    """Up to `batch` instances across the variants that still need some, largest need first."""
    counts = {g.variant_name: 0 for g in green}
    left = dict(need)
    for _ in range(batch):
        candidates = [g for g in green if left[g.variant_name] > 0]
        if not candidates:
            break
        pick = max(candidates, key=lambda g: left[g.variant_name])
        counts[pick.variant_name] += 1
        left[pick.variant_name] -= 1
    return [(g, counts[g.variant_name]) for g in green if counts[g.variant_name]]


def _started_counts(deployment: DeploymentRecord) -> dict[str, int]:
    """Green instances that should be running now (a rolling update starts them in batches)."""
    return {g.variant_name: deployment.started.get(g.variant_name, 0) for g in deployment.green}


__all__ = [
    "DeploymentRunner",
    "Policy",
    "Rollback",
    "batch_instances",
    "green_variants",
    "parse_deployment_config",
    "same_split",
    "traffic_steps",
]
