"""The autoscaler: Application Auto Scaling's API over `AutoscalingStore`, and the loop that
evaluates every policy against the metric store and alarms and changes instance counts.

See `mve.control.autoscaling` for the rules; this module applies them to the running endpoints
through `ControlService.update_weights_and_capacities`, so a scaling change is exactly a manual
one: new instances take traffic once healthy, surplus ones are drained before they stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import replace

from mve.control.alarms import AlarmBook
from mve.control.autoscaling import (
    MAX_POLICIES_PER_TARGET,
    PREDEFINED,
    SCALE_IN_MARGIN,
    AutoscalingStore,
    LimitExceeded,
    ObjectNotFound,
    ScalableTarget,
    ScalingActivity,
    ScalingPolicy,
    check_target_keys,
    parse_resource_id,
    step_capacity,
    tracking_capacity,
    validate_step_scaling,
    validate_target_tracking,
)
from mve.control.metric_catalog import SAGEMAKER, variant_dimensions
from mve.control.metric_store import MetricStore
from mve.control.records import EndpointStatus
from mve.errors import MveError, ValidationError

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 60.0
AGGREGATE = {"Average": lambda v: sum(v) / len(v), "Minimum": min, "Maximum": max}
# Proxies report a second's counts about a second later: the window ends this long before now.
SETTLE_S = 2.0


class Autoscaler:
    """Scalable targets, scaling policies and activities; `evaluate` runs one pass of every policy."""

    def __init__(
        self,
        store: AutoscalingStore,
        service,
        metrics: MetricStore,
        alarms: AlarmBook,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        clock=time.time,
    ):
        self.store = store
        self.service = service
        self.metrics = metrics
        self.alarms = alarms
        self.window_s = window_s
        self._clock = clock

    # ------------------------------------------------------------ API

    def register_scalable_target(
        self, namespace: str, resource_id: str, dimension: str, min_capacity: int | None, max_capacity: int | None,
        suspended: dict | None = None, role_arn: str = "",
    ) -> ScalableTarget:
        """Create or update a target; a current count outside the new range is brought into it."""
        check_target_keys(namespace, resource_id, dimension)
        if role_arn:
            raise ValidationError("RoleARN is not used by mve (there is no IAM); leave it out.")
        endpoint_name, variant_name = parse_resource_id(resource_id)
        endpoint = self.service.store.get_endpoint(endpoint_name)
        if endpoint is None or endpoint.variant(variant_name) is None:
            raise ValidationError(f"Could not find variant {variant_name} of endpoint {endpoint_name} ({resource_id}).")
        existing = self.store.get_target(resource_id)
        if existing is None and (min_capacity is None or max_capacity is None):
            raise ValidationError("MinCapacity and MaxCapacity are required to register a new scalable target.")
        low = min_capacity if min_capacity is not None else existing.min_capacity
        high = max_capacity if max_capacity is not None else existing.max_capacity
        limit = self.service.limits.max_instances_per_variant
        if not 1 <= low <= high:
            raise ValidationError(f"MinCapacity ({low}) must be at least 1 and at most MaxCapacity ({high}).")
        if high > limit:
            raise ValidationError(f"MaxCapacity {high} is above the limit of {limit} instances per variant.")
        target = existing or ScalableTarget(resource_id, low, high, self._clock())
        target = replace(target, min_capacity=low, max_capacity=high)
        if suspended is not None:
            target = replace(
                target,
                scale_in_suspended=bool(suspended.get("DynamicScalingInSuspended", False)),
                scale_out_suspended=bool(suspended.get("DynamicScalingOutSuspended", False)),
                scheduled_suspended=bool(suspended.get("ScheduledScalingSuspended", False)),
            )
        self.store.put_target(target)
        log.info("event=scalable_target_registered resource=%s min=%d max=%d", resource_id, low, high)
        current = endpoint.variant(variant_name).desired_instance_count
        clamped = min(max(current, low), high)
        if clamped != current:
            self._scale(target, current, clamped, f"the capacity range was set to {low}-{high}", {"MinCapacity": low, "MaxCapacity": high})
        return target

    def describe_scalable_targets(self, namespace: str, resource_ids=(), dimension: str = "") -> list[ScalableTarget]:
        """Targets, by resource id (filtered)."""
        if namespace != "sagemaker":
            raise ValidationError(f"Unsupported service namespace {namespace!r}: mve scales 'sagemaker' variants only.")
        wanted = set(resource_ids)
        return [
            t for t in self.store.list_targets()
            if (not wanted or t.resource_id in wanted) and (not dimension or dimension == "sagemaker:variant:DesiredInstanceCount")
        ]

    def deregister_scalable_target(self, namespace: str, resource_id: str, dimension: str) -> None:
        """Forget a target and its policies."""
        check_target_keys(namespace, resource_id, dimension)
        if self.store.get_target(resource_id) is None:
            raise ObjectNotFound(f"No scalable target registered for service namespace: sagemaker, resource ID: {resource_id}, scalable dimension: {dimension}")
        self.store.delete_target(resource_id)

    def put_scaling_policy(
        self, name: str, namespace: str, resource_id: str, dimension: str, policy_type: str,
        target_tracking: dict | None, step_scaling: dict | None,
    ) -> ScalingPolicy:
        """Create or replace a policy of a registered target."""
        check_target_keys(namespace, resource_id, dimension)
        if not 1 <= len(name) <= 256 or ":" in name:
            raise ValidationError("PolicyName must be 1-256 characters without ':'.")
        if self.store.get_target(resource_id) is None:
            raise ObjectNotFound(f"No scalable target registered for service namespace: sagemaker, resource ID: {resource_id}, scalable dimension: {dimension}")
        if policy_type == "TargetTrackingScaling":
            if step_scaling or not target_tracking:
                raise ValidationError("A TargetTrackingScaling policy takes TargetTrackingScalingPolicyConfiguration only.")
            config = validate_target_tracking(target_tracking)
        elif policy_type == "StepScaling":
            if target_tracking or not step_scaling:
                raise ValidationError("A StepScaling policy takes StepScalingPolicyConfiguration only.")
            config = validate_step_scaling(step_scaling)
        else:
            raise ValidationError(f"PolicyType must be TargetTrackingScaling or StepScaling, got {policy_type!r}.")
        existing = {p.policy_name: p for p in self.store.list_policies(resource_id)}
        if name not in existing and len(existing) >= MAX_POLICIES_PER_TARGET:
            raise LimitExceeded(f"A scalable target can have at most {MAX_POLICIES_PER_TARGET} scaling policies.")
        policy = ScalingPolicy(name, resource_id, policy_type, config, self._clock())
        if name in existing:
            policy = replace(policy, policy_id=existing[name].policy_id, created=existing[name].created)
        self.store.put_policy(policy)
        log.info("event=scaling_policy_put resource=%s policy=%s type=%s", resource_id, name, policy_type)
        return policy

    def describe_scaling_policies(self, namespace: str, resource_id: str = "", names=()) -> list[ScalingPolicy]:
        """Policies, filtered by target and names."""
        if namespace != "sagemaker":
            raise ValidationError(f"Unsupported service namespace {namespace!r}: mve scales 'sagemaker' variants only.")
        wanted = set(names)
        return [
            p for p in self.store.list_policies(resource_id or None) if not wanted or p.policy_name in wanted
        ]

    def delete_scaling_policy(self, name: str, namespace: str, resource_id: str, dimension: str) -> None:
        """Delete a policy (ObjectNotFoundException when there is none)."""
        check_target_keys(namespace, resource_id, dimension)
        if not self.store.delete_policy(resource_id, name):
            raise ObjectNotFound(f"No scaling policy found for service namespace: sagemaker, resource ID: {resource_id}, scalable dimension: {dimension}, policy name: {name}")

    def describe_scaling_activities(self, namespace: str, resource_id: str = "") -> list[ScalingActivity]:
        """Activities, newest first."""
        if namespace != "sagemaker":
            raise ValidationError(f"Unsupported service namespace {namespace!r}: mve scales 'sagemaker' variants only.")
        if resource_id:
            parse_resource_id(resource_id)
        return self.store.list_activities(resource_id or None)

    def policy_exists(self, arn: str) -> bool:
        """True when `arn` names a step scaling policy (what alarm actions may name)."""
        return any(p.arn == arn and p.policy_type == "StepScaling" for p in self.store.list_policies())

    def capacity_range(self, endpoint: str, variant: str) -> tuple[int, int] | None:
        """(min, max) registered for a variant, or None."""
        target = self.store.get_target(f"endpoint/{endpoint}/variant/{variant}")
        return (target.min_capacity, target.max_capacity) if target is not None else None

    # ------------------------------------------------------------ evaluation

    def evaluate(self) -> int:
        """One pass over every target; the number of scaling activities started."""
        now = self._clock()
        started = 0
        self._settle_activities(now)
        busy = {a.resource_id for a in self.store.list_activities() if a.status_code == "InProgress"}
        for target in self.store.list_targets():
            if target.resource_id in busy:
                continue
            try:
                started += self._evaluate_target(target, now)
            except MveError as error:  # the endpoint changed under us: try next time
                log.info("event=scaling_skipped resource=%s reason=%r", target.resource_id, error.message)
        return started

    def _evaluate_target(self, target: ScalableTarget, now: float) -> int:
        endpoint = self.service.store.get_endpoint(target.endpoint)
        if endpoint is None or endpoint.variant(target.variant) is None:
            return 0
        if endpoint.status != EndpointStatus.IN_SERVICE or (
            self.service.deployments is not None and self.service.deployments.active(endpoint.name)
        ):
            return 0
        current = endpoint.variant(target.variant).desired_instance_count
        proposals = []
        for policy in self.store.list_policies(target.resource_id):
            proposal = self._propose(policy, target, current, now)
            if proposal is not None:
                proposals.append(proposal)
        if not proposals:
            return 0
        capacity, policy, cause, details = max(proposals, key=lambda p: p[0])
        capacity = min(max(capacity, target.min_capacity), target.max_capacity)
        if capacity > current and not target.scale_out_suspended:
            cooldown = policy.config.get("ScaleOutCooldown", policy.config.get("Cooldown", 0))
            if now - target.last_scale_out < cooldown:
                return 0
        elif capacity < current and not target.scale_in_suspended:
            if any(p[0] >= current for p in proposals):
                return 0  # another policy wants this capacity or more
            cooldown = policy.config.get("ScaleInCooldown", policy.config.get("Cooldown", 0))
            if now - target.last_scaling < cooldown:
                return 0
            if policy.policy_type == "TargetTrackingScaling":
                capacity = current - 1  # scale in conservatively: one instance at a time
        else:
            return 0
        self._scale(target, current, capacity, cause, details, policy)
        return 1

    def _propose(self, policy: ScalingPolicy, target: ScalableTarget, current: int, now: float):
        """(capacity, policy, cause, details) that `policy` asks for now, or None."""
        if policy.policy_type == "TargetTrackingScaling":
            config = policy.config
            value, label = self._tracked_value(config, target, now)
            if value is None:
                return None
            goal = config["TargetValue"]
            capacity = tracking_capacity(current, value, goal)
            if capacity < current and (config["DisableScaleIn"] or value >= goal * SCALE_IN_MARGIN):
                capacity = current
            cause = f"policy {policy.policy_name}: {label} was {value:.4g} against the target {goal:g}"
            return capacity, policy, cause, {"MetricValue": value, "TargetValue": goal, "Metric": label}
        for alarm in self.alarms.list_alarms():
            definition = alarm.definition
            if policy.arn not in definition.alarm_actions or not definition.actions_enabled:
                continue
            if alarm.state.value != "ALARM":
                continue
            if now - policy.last_applied < policy.config["Cooldown"]:
                return None
            data = json.loads(alarm.state.reason_data or "{}")
            points = data.get("recentDatapoints") or []
            if not points:
                return None
            # The evaluated datapoints, aggregated as the policy says (Average by default).
            value = AGGREGATE[policy.config["MetricAggregationType"]](points)
            capacity = step_capacity(policy.config, current, value - definition.threshold)
            if capacity is None:
                return None
            cause = (
                f"alarm {alarm.name} in state ALARM triggered policy {policy.policy_name} "
                f"(metric {value:g}, threshold {definition.threshold:g})"
            )
            return capacity, policy, cause, {"MetricValue": value, "Alarm": alarm.name}
        return None

    def _tracked_value(self, config: dict, target: ScalableTarget, now: float) -> tuple[float | None, str]:
        end = now - SETTLE_S
        start = end - self.window_s
        spec = config.get("CustomizedMetricSpecification")
        if spec is None:
            series = self.metrics.find_series(SAGEMAKER, "InvocationsPerInstance", variant_dimensions(target.endpoint, target.variant))
            total = 0.0
            if series is not None:
                total = sum(p.sum for p in self.metrics.points(series.id, start, end))
            # No request in the window is a load of zero, not missing data.
            return total * 60.0 / self.window_s, f"{PREDEFINED} (per minute, last {self.window_s:g} s)"
        dimensions = tuple((d["Name"], d["Value"]) for d in spec.get("Dimensions", []))
        series = self.metrics.find_series(spec["Namespace"], spec["MetricName"], dimensions)
        label = f"{spec['Namespace']} {spec['MetricName']} {spec['Statistic']} (last {self.window_s:g} s)"
        if series is None:
            return None, label
        points = self.metrics.points(series.id, start, end)
        if not points:
            return None, label
        count, total = sum(p.count for p in points), sum(p.sum for p in points)
        stat = spec["Statistic"]
        value = {
            "Average": total / count if count else None,
            "Sum": total,
            "SampleCount": count,
            "Minimum": min(p.min for p in points),
            "Maximum": max(p.max for p in points),
        }[stat]
        return value, label

    def _scale(self, target: ScalableTarget, current: int, capacity: int, cause: str, details: dict, policy: ScalingPolicy | None = None) -> None:
        now = self._clock()
        activity = ScalingActivity(
            activity_id=uuid.uuid4().hex,
            resource_id=target.resource_id,
            description=f"Setting desired instance count to {capacity}.",
            cause=f"At {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))} {cause}; changing the desired capacity from {current} to {capacity}.",
            start=now,
            details=json.dumps({**details, "FromCapacity": current, "ToCapacity": capacity}),
            to_capacity=capacity,
        )
        from mve.control.service import WeightAndCapacity

        try:
            self.service.update_weights_and_capacities(target.endpoint, [WeightAndCapacity(target.variant, None, capacity)])
        except MveError as error:
            activity = replace(activity, status_code="Failed", status_message=error.message, end=now)
            self.store.put_activity(activity)
            log.warning("event=scaling_failed resource=%s reason=%r", target.resource_id, error.message)
            return
        self.store.put_activity(activity)
        updated = replace(target, last_scaling=now, last_scale_out=now if capacity > current else target.last_scale_out)
        self.store.put_target(updated)
        if policy is not None:
            self.store.put_policy(replace(policy, last_applied=now))
        log.info("event=scaling resource=%s from=%d to=%d cause=%r", target.resource_id, current, capacity, cause)

    def _settle_activities(self, now: float) -> None:
        """InProgress activities end Successful once the variant runs its count, Failed when the change failed."""
        for activity in self.store.list_activities():
            if activity.status_code != "InProgress":
                continue
            endpoint_name, variant_name = parse_resource_id(activity.resource_id)
            endpoint = self.service.store.get_endpoint(endpoint_name)
            if endpoint is None or endpoint.variant(variant_name) is None:
                self.store.put_activity(replace(activity, status_code="Failed", status_message="The endpoint or variant is gone.", end=now))
                continue
            if endpoint.status != EndpointStatus.IN_SERVICE:
                continue
            live = self.service.reconciler.current_instance_counts(endpoint_name).get(variant_name, 0)
            desired = endpoint.variant(variant_name).desired_instance_count
            if desired == activity.to_capacity and live == desired:
                self.store.put_activity(replace(activity, status_code="Successful", status_message="Successfully set desired instance count.", end=now))
            else:
                reason = endpoint.failure_reason or f"the variant runs {live} instances"
                self.store.put_activity(replace(activity, status_code="Failed", status_message=reason, end=now))

    async def run_forever(self, interval_s: float) -> None:
        """Evaluate every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.evaluate()
            except Exception:  # noqa: BLE001 - scaling goes on; the error is logged
                log.exception("event=autoscaling_failed")
