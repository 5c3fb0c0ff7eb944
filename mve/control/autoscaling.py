"""Autoscaling of each variant's instance count, as Application Auto Scaling does it for SageMaker.

A scalable target (``endpoint/EP/variant/V``, dimension ``sagemaker:variant:DesiredInstanceCount``)
bounds a variant's instance count by MinCapacity and MaxCapacity. Its policies propose a capacity:

- Target tracking: the metric over the last `window_s` (SageMakerVariantInvocationsPerInstance,
  requests per instance per minute, or any stored metric and statistic) and the capacity that
  brings it to TargetValue, ``ceil(capacity x value / target)``. Scale-out may add several
  instances at once, after ScaleOutCooldown since the last scale-out; scale-in removes one
  instance at a time, only once the metric is below 90% of the target, after ScaleInCooldown
  since the last scaling of the target, and never with DisableScaleIn.
- Step scaling: while an alarm whose AlarmActions name the policy is in ALARM, the step whose
  bounds hold (breach = the alarm's newest datapoint - its threshold) changes the capacity, after
  the policy's Cooldown.

Several policies: the largest proposal wins, so that one policy's scale-in never undoes another's
scale-out. The result is clamped to [MinCapacity, MaxCapacity]. Nothing scales while the endpoint
is not InService (an update, another change in progress) or while an earlier activity of the
target is still starting its instances. Every change is a scaling activity (time, from, to, the
metric value that caused it, status). Targets, policies and activities are kept in the store's
database and survive a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import grpc

from mve.errors import MveError, ValidationError

log = logging.getLogger(__name__)

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
RESOURCE = re.compile(r"^endpoint/([a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62})/variant/([a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62})$")
PREDEFINED = "SageMakerVariantInvocationsPerInstance"
STATISTICS = ("Average", "Minimum", "Maximum", "SampleCount", "Sum")
ADJUSTMENT_TYPES = ("ChangeInCapacity", "ExactCapacity", "PercentChangeInCapacity")
DEFAULT_COOLDOWN_S = 300
MAX_POLICIES_PER_TARGET = 50
SCALE_IN_MARGIN = 0.9
ARN_PREFIX = "arn:mve:autoscaling:local:000000000000"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scalable_targets (resource_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scaling_policies (
    resource_id TEXT NOT NULL, policy_name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (resource_id, policy_name));
CREATE TABLE IF NOT EXISTS scaling_activities (
    activity_id TEXT PRIMARY KEY, resource_id TEXT NOT NULL, start REAL NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS scaling_activities_by_resource ON scaling_activities (resource_id, start);
"""
MAX_ACTIVITIES_PER_TARGET = 500


class ObjectNotFound(MveError):
    """Application Auto Scaling's ObjectNotFoundException."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "ObjectNotFoundException"


class LimitExceeded(MveError):
    """Application Auto Scaling's LimitExceededException."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "LimitExceededException"


@dataclass
class ScalableTarget:
    """A variant's registered capacity range."""

    resource_id: str
    min_capacity: int
    max_capacity: int
    created: float
    scale_in_suspended: bool = False
    scale_out_suspended: bool = False
    scheduled_suspended: bool = False
    last_scale_out: float = 0.0
    last_scaling: float = 0.0

    @property
    def endpoint(self) -> str:
        """The endpoint's name."""
        return RESOURCE.match(self.resource_id).group(1)

    @property
    def variant(self) -> str:
        """The variant's name."""
        return RESOURCE.match(self.resource_id).group(2)

    @property
    def arn(self) -> str:
        """The target's ARN."""
        return f"{ARN_PREFIX}:scalable-target/{NAMESPACE}/{self.resource_id}"


@dataclass
class ScalingPolicy:
    """A target tracking or step scaling policy; `config` is its configuration with AWS's keys."""

    policy_name: str
    resource_id: str
    policy_type: str
    config: dict
    created: float
    policy_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    last_applied: float = 0.0

    @property
    def arn(self) -> str:
        """The policy's ARN (alarms name it in AlarmActions for step scaling)."""
        return f"{ARN_PREFIX}:scalingPolicy:{self.policy_id}:resource/{NAMESPACE}/{self.resource_id}:policyName/{self.policy_name}"


@dataclass
class ScalingActivity:
    """One change of a target's capacity (or an attempt)."""

    activity_id: str
    resource_id: str
    description: str
    cause: str
    start: float
    status_code: str = "InProgress"
    status_message: str = ""
    end: float = 0.0
    details: str = ""
    to_capacity: int = 0


# ------------------------------------------------------------ validation


def parse_resource_id(resource_id: str) -> tuple[str, str]:
    """(endpoint, variant) from ``endpoint/EP/variant/V``; ValidationException otherwise."""
    match = RESOURCE.match(resource_id or "")
    if not match:
        raise ValidationError(
            f"Unsupported resource ID {resource_id!r}: use endpoint/<EndpointName>/variant/<VariantName>."
        )
    return match.group(1), match.group(2)


def check_target_keys(namespace: str, resource_id: str, dimension: str) -> None:
    """The only supported namespace and dimension, and a well-formed resource id."""
    if namespace != NAMESPACE:
        raise ValidationError(f"Unsupported service namespace {namespace!r}: mve scales 'sagemaker' variants only.")
    if dimension != DIMENSION:
        raise ValidationError(f"Unsupported scalable dimension {dimension!r}: use {DIMENSION}.")
    parse_resource_id(resource_id)


def _cooldown(value, name: str) -> int:
    if value is None:
        return DEFAULT_COOLDOWN_S
    if not 0 <= value <= 86400:
        raise ValidationError(f"{name} must be 0-86400 seconds, got {value}.")
    return value


def validate_target_tracking(config: dict) -> dict:
    """TargetTrackingScalingPolicyConfiguration with its defaults filled in."""
    target = config.get("TargetValue")
    if target is None or not math.isfinite(target) or not 8.515920e-109 <= target <= 6.174950e107:
        raise ValidationError("TargetTrackingScalingPolicyConfiguration.TargetValue must be a positive number.")
    predefined = config.get("PredefinedMetricSpecification")
    custom = config.get("CustomizedMetricSpecification")
    if bool(predefined) == bool(custom):
        raise ValidationError(
            "Give exactly one of PredefinedMetricSpecification and CustomizedMetricSpecification."
        )
    if predefined:
        kind = predefined.get("PredefinedMetricType", "")
        if kind != PREDEFINED:
            raise ValidationError(f"PredefinedMetricType {kind!r} is not supported for SageMaker variants: use {PREDEFINED}.")
        if predefined.get("ResourceLabel"):
            raise ValidationError("ResourceLabel is used only with ALB metrics; leave it empty.")
    if custom:
        for key in ("MetricName", "Namespace", "Statistic"):
            if not custom.get(key):
                raise ValidationError(f"CustomizedMetricSpecification.{key} is required.")
        if custom["Statistic"] not in STATISTICS:
            raise ValidationError(f"CustomizedMetricSpecification.Statistic must be one of {', '.join(STATISTICS)}.")
    return {
        **config,
        "ScaleOutCooldown": _cooldown(config.get("ScaleOutCooldown"), "ScaleOutCooldown"),
        "ScaleInCooldown": _cooldown(config.get("ScaleInCooldown"), "ScaleInCooldown"),
        "DisableScaleIn": bool(config.get("DisableScaleIn", False)),
    }


def validate_step_scaling(config: dict) -> dict:
    """StepScalingPolicyConfiguration: contiguous, non-overlapping steps relative to the alarm threshold."""
    kind = config.get("AdjustmentType", "")
    if kind not in ADJUSTMENT_TYPES:
        raise ValidationError(f"AdjustmentType must be one of {', '.join(ADJUSTMENT_TYPES)}.")
    steps = config.get("StepAdjustments") or []
    if not steps:
        raise ValidationError("StepScalingPolicyConfiguration.StepAdjustments needs at least one step.")
    bounds = []
    for step in steps:
        lower, upper = step.get("MetricIntervalLowerBound"), step.get("MetricIntervalUpperBound")
        if lower is not None and upper is not None and not lower < upper:
            raise ValidationError(f"A step's MetricIntervalLowerBound ({lower}) must be below its upper bound ({upper}).")
        bounds.append((-math.inf if lower is None else lower, math.inf if upper is None else upper))
    bounds.sort()
    for (_, upper), (lower, _) in zip(bounds, bounds[1:]):
        if upper != lower:
            raise ValidationError("StepAdjustments must neither overlap nor leave a gap between them.")
    magnitude = config.get("MinAdjustmentMagnitude")
    if magnitude is not None and (kind != "PercentChangeInCapacity" or magnitude < 1):
        raise ValidationError("MinAdjustmentMagnitude (at least 1) goes with AdjustmentType PercentChangeInCapacity only.")
    aggregation = config.get("MetricAggregationType") or "Average"
    if aggregation not in ("Average", "Minimum", "Maximum"):
        raise ValidationError("MetricAggregationType must be Average, Minimum or Maximum.")
    return {**config, "Cooldown": _cooldown(config.get("Cooldown"), "Cooldown"), "MetricAggregationType": aggregation}


def step_capacity(config: dict, current: int, breach: float) -> int | None:
    """The capacity a step scaling policy asks for at `breach` above the threshold (None: no step holds)."""
    for step in config["StepAdjustments"]:
        lower = step.get("MetricIntervalLowerBound")
        upper = step.get("MetricIntervalUpperBound")
        if (lower is None or breach >= lower) and (upper is None or breach < upper):
            adjustment = step["ScalingAdjustment"]
            kind = config["AdjustmentType"]
            if kind == "ExactCapacity":
                return adjustment
            if kind == "ChangeInCapacity":
                return current + adjustment
            change = current * adjustment / 100.0
            change = math.ceil(change) if change > 0 else math.floor(change)
            magnitude = config.get("MinAdjustmentMagnitude") or 0
            if change and abs(change) < magnitude:
                change = magnitude if change > 0 else -magnitude
            return current + change
    return None


def tracking_capacity(current: int, value: float, target: float) -> int:
    """The capacity that brings a per-instance metric from `value` to `target`."""
    return max(1, math.ceil(current * value / target - 1e-9))


# ------------------------------------------------------------ store


class AutoscalingStore:
    """Targets, policies and activities in SQLite (the control plane's mve.db, its own tables)."""

    def __init__(self, path: Path | str):
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def put_target(self, target: ScalableTarget) -> None:
        """Insert or replace a target."""
        self.db.execute("INSERT OR REPLACE INTO scalable_targets VALUES (?, ?)", (target.resource_id, json.dumps(asdict(target))))

    def get_target(self, resource_id: str) -> ScalableTarget | None:
        """The target of a resource, or None."""
        row = self.db.execute("SELECT body FROM scalable_targets WHERE resource_id=?", (resource_id,)).fetchone()
        return ScalableTarget(**json.loads(row[0])) if row else None

    def list_targets(self) -> list[ScalableTarget]:
        """Every target, by resource id."""
        rows = self.db.execute("SELECT body FROM scalable_targets ORDER BY resource_id").fetchall()
        return [ScalableTarget(**json.loads(r[0])) for r in rows]

    def delete_target(self, resource_id: str) -> None:
        """Delete a target with its policies."""
        self.db.execute("DELETE FROM scalable_targets WHERE resource_id=?", (resource_id,))
        self.db.execute("DELETE FROM scaling_policies WHERE resource_id=?", (resource_id,))

    def put_policy(self, policy: ScalingPolicy) -> None:
        """Insert or replace a policy."""
        self.db.execute(
            "INSERT OR REPLACE INTO scaling_policies VALUES (?, ?, ?)",
            (policy.resource_id, policy.policy_name, json.dumps(asdict(policy))),
        )

    def list_policies(self, resource_id: str | None = None) -> list[ScalingPolicy]:
        """Policies of one target (or all), by resource id and name."""
        if resource_id is None:
            rows = self.db.execute("SELECT body FROM scaling_policies ORDER BY resource_id, policy_name").fetchall()
        else:
            rows = self.db.execute(
                "SELECT body FROM scaling_policies WHERE resource_id=? ORDER BY policy_name", (resource_id,)
            ).fetchall()
        return [ScalingPolicy(**json.loads(r[0])) for r in rows]

    def delete_policy(self, resource_id: str, name: str) -> bool:
        """Delete a policy; False when there was none."""
        return self.db.execute(
            "DELETE FROM scaling_policies WHERE resource_id=? AND policy_name=?", (resource_id, name)
        ).rowcount > 0

    def put_activity(self, activity: ScalingActivity) -> None:
        """Insert or replace an activity, keeping the newest 500 per target."""
        self.db.execute(
            "INSERT OR REPLACE INTO scaling_activities VALUES (?, ?, ?, ?)",
            (activity.activity_id, activity.resource_id, activity.start, json.dumps(asdict(activity))),
        )
        self.db.execute(
            "DELETE FROM scaling_activities WHERE resource_id=? AND activity_id NOT IN "
            "(SELECT activity_id FROM scaling_activities WHERE resource_id=? ORDER BY start DESC LIMIT ?)",
            (activity.resource_id, activity.resource_id, MAX_ACTIVITIES_PER_TARGET),
        )

    def list_activities(self, resource_id: str | None = None) -> list[ScalingActivity]:
        """Activities, newest first."""
        if resource_id is None:
            rows = self.db.execute("SELECT body FROM scaling_activities ORDER BY start DESC").fetchall()
        else:
            rows = self.db.execute(
                "SELECT body FROM scaling_activities WHERE resource_id=? ORDER BY start DESC", (resource_id,)
            ).fetchall()
        return [ScalingActivity(**json.loads(r[0])) for r in rows]

    def close(self) -> None:
        """Close the database."""
        self.db.close()
