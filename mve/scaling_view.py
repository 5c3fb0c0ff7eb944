"""An endpoint's autoscaling at a glance, for ``mve endpoint describe`` and ``mve top``.

The reads (`endpoint_scaling`, `recent_activities`) call ``mve.client("application-autoscaling")``
with ResourceId filters for the endpoint's variants and answer None when the control plane has no
autoscaling or the call fails: autoscaling is extra information there, never a reason to fail.
The rest is pure: responses -> rows -> rich tables, tested without a server.
"""

from __future__ import annotations

import re
from datetime import datetime

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"


def resource_id(endpoint: str, variant: str) -> str:
    """Application Auto Scaling's ResourceId of a SageMaker variant: ``endpoint/EP/variant/V``."""
    return f"endpoint/{endpoint}/variant/{variant}"


def endpoint_prefix(endpoint: str) -> str:
    """The start of every ResourceId of `endpoint`'s variants."""
    return f"endpoint/{endpoint}/variant/"


def variant_of(resource: str) -> str:
    """The variant name in ``endpoint/EP/variant/V`` (the ResourceId itself if it is not one)."""
    head, sep, variant = resource.rpartition("/variant/")
    return variant if sep and head.startswith("endpoint/") else resource


_FROM_TO = re.compile(r"from (\d+) to (\d+)", re.IGNORECASE)
_TO = re.compile(r"\bto (\d+)", re.IGNORECASE)


def change_text(description: str) -> str:
    """``"Setting desired instance count from 1 to 3."`` -> ``"1→3"``; ``"... to 3."`` -> ``"→3"``;
    else the description itself."""
    match = _FROM_TO.search(description)
    if match:
        return f"{match.group(1)}→{match.group(2)}"
    match = _TO.search(description)
    return f"→{match.group(1)}" if match else description


def newest_activities(activities: list[dict], limit: int) -> list[dict]:
    """The `limit` most recent activities (by StartTime), newest first."""
    return sorted(activities, key=lambda a: a["StartTime"].timestamp() if a.get("StartTime") else float("-inf"),
                  reverse=True)[:limit]


def activity_rows(activities: list[dict], limit: int) -> list[list]:
    """[StartTime, variant, change, StatusCode, Cause] of the `limit` newest activities."""
    return [[a.get("StartTime"), variant_of(a.get("ResourceId", "")), change_text(a.get("Description", "")),
             a.get("StatusCode", ""), a.get("Cause", "")] for a in newest_activities(activities, limit)]


def suspended_text(state: dict) -> str:
    """A SuspendedState as ``scale-in, scheduled`` (what is suspended), ``-`` when nothing is."""
    suspended = [name for key, name in (("DynamicScalingInSuspended", "scale-in"),
                                         ("DynamicScalingOutSuspended", "scale-out"),
                                         ("ScheduledScalingSuspended", "scheduled")) if state.get(key)]
    return ", ".join(suspended) or "-"


def target_rows(targets: list[dict]) -> list[list]:
    """[variant, MinCapacity, MaxCapacity, suspended] per scalable target, by variant name."""
    return [[variant_of(t.get("ResourceId", "")), t.get("MinCapacity"), t.get("MaxCapacity"),
             suspended_text(t.get("SuspendedState", {}))]
            for t in sorted(targets, key=lambda t: t.get("ResourceId", ""))]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def table(columns: list[str], rows: list[list], title: str | None = None):
    """A rich Table of `rows` under `columns`."""
    from rich.table import Table

    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*(_cell(value) for value in row))
    return out


ACTIVITY_COLUMNS = ["time", "variant", "change", "status", "cause"]
TARGET_COLUMNS = ["variant", "min", "max", "suspended"]


def activities_table(activities: list[dict], limit: int, title: str = "Scaling activities"):
    """The `limit` newest activities as a rich Table."""
    return table(ACTIVITY_COLUMNS, activity_rows(activities, limit), title=title)


def targets_table(targets: list[dict], title: str = "Scalable targets"):
    """Scalable targets (min/max per variant) as a rich Table."""
    return table(TARGET_COLUMNS, target_rows(targets), title=title)


# ---------------------------------------------------------------- reads (None when unavailable)


def recent_activities(aas, endpoint: str, variant_names: list[str], limit: int) -> list[dict] | None:
    """The `limit` newest scaling activities over `endpoint`'s variants; None if the service failed."""
    from mve.sdk.exceptions import ClientError, SDKError

    activities: list[dict] = []
    try:
        for variant in variant_names:
            response = aas.describe_scaling_activities(
                ServiceNamespace=NAMESPACE, ResourceId=resource_id(endpoint, variant), ScalableDimension=DIMENSION,
                MaxResults=limit)
            activities.extend(response.get("ScalingActivities", []))
    except (ClientError, SDKError):
        return None
    return newest_activities(activities, limit)


def endpoint_scaling(aas, endpoint: str, variant_names: list[str], activities: int = 5) -> dict | None:
    """{"ScalableTargets": [...], "ScalingActivities": [...]} of `endpoint`'s variants (the `activities`
    newest); None if the control plane has no autoscaling or a call failed."""
    from mve.sdk.exceptions import ClientError, SDKError

    if not variant_names:
        return {"ScalableTargets": [], "ScalingActivities": []}
    targets: list[dict] = []
    try:
        for page in aas.get_paginator("describe_scalable_targets").paginate(
                ServiceNamespace=NAMESPACE, ResourceIds=[resource_id(endpoint, v) for v in variant_names],
                ScalableDimension=DIMENSION):
            targets.extend(page.get("ScalableTargets", []))
    except (ClientError, SDKError):
        return None
    recent = recent_activities(aas, endpoint, variant_names, activities)
    return {"ScalableTargets": targets, "ScalingActivities": recent or []}


def print_endpoint_scaling(console, scaling: dict | None, limit: int = 5) -> None:
    """Under ``mve endpoint describe``: the scalable targets and the newest activities, when there are any."""
    if not scaling:
        return
    if scaling["ScalableTargets"]:
        console.print(targets_table(scaling["ScalableTargets"]))
    if scaling["ScalingActivities"]:
        console.print(activities_table(scaling["ScalingActivities"], limit))
