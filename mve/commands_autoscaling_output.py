"""How ``mve autoscaling`` prints: rich tables for people, the boto3-shaped response (``--json``) for machines."""

from __future__ import annotations


from mve.commands_output import fresh_console, plain, print_json
from mve.scaling_view import suspended_text, table


def _print(columns: list[str], rows: list[list], empty: str) -> None:
    if rows:
        fresh_console().print(table(columns, rows))
    else:
        fresh_console().print(empty)


def _number(value: float) -> str:
    return f"{value:g}"


def _bound(value: float | None, default: str) -> str:
    return default if value is None else _number(value)


def policy_summary(policy: dict) -> str:
    """A policy's configuration in one line, e.g.
    ``SageMakerVariantInvocationsPerInstance = 70; out 60s, in 300s`` or
    ``ChangeInCapacity: [0, 10) +1, [10, +inf) +2; cooldown 60s``."""
    tracking = policy.get("TargetTrackingScalingPolicyConfiguration")
    if tracking:
        predefined = tracking.get("PredefinedMetricSpecification")
        custom = tracking.get("CustomizedMetricSpecification", {})
        metric = (predefined["PredefinedMetricType"] if predefined
                  else f"{custom.get('Statistic', '?')}({custom.get('MetricName', '?')})")
        text = f"{metric} = {_number(tracking['TargetValue'])}"
        cooldowns = [f"{word} {tracking[key]}s" for word, key in (("out", "ScaleOutCooldown"), ("in", "ScaleInCooldown"))
                     if key in tracking]
        if cooldowns:
            text += "; " + ", ".join(cooldowns)
        if tracking.get("DisableScaleIn"):
            text += "; scale-in disabled"
        return text
    step = policy.get("StepScalingPolicyConfiguration")
    if step:
        steps = ", ".join(
            f"[{_bound(s.get('MetricIntervalLowerBound'), '-inf')}, {_bound(s.get('MetricIntervalUpperBound'), '+inf')})"
            f" {s['ScalingAdjustment']:+d}" for s in step.get("StepAdjustments", []))
        text = f"{step.get('AdjustmentType', '')}: {steps or 'no steps'}"
        if "Cooldown" in step:
            text += f"; cooldown {step['Cooldown']}s"
        if "MinAdjustmentMagnitude" in step:
            text += f"; min adjustment {step['MinAdjustmentMagnitude']}"
        if step.get("MetricAggregationType"):
            text += f"; {step['MetricAggregationType']}"
        return text
    return "-"


def show_targets(args, response: dict) -> int:
    """DescribeScalableTargets: resource, min, max, suspended scaling and creation time."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    rows = []
    for target in data.get("ScalableTargets", []):
        rows.append([target["ResourceId"], target["MinCapacity"], target["MaxCapacity"],
                     suspended_text(target.get("SuspendedState", {})), target.get("CreationTime")])
    _print(["ResourceId", "Min", "Max", "Suspended", "Created"], rows, "no scalable targets")
    return 0


def show_policies(args, response: dict) -> int:
    """DescribeScalingPolicies: name, resource, type, a one-line configuration and its alarms."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    rows = [[p["PolicyName"], p["ResourceId"], p["PolicyType"], policy_summary(p),
             ", ".join(a["AlarmName"] for a in p.get("Alarms", [])) or "-", p.get("CreationTime")]
            for p in data.get("ScalingPolicies", [])]
    _print(["PolicyName", "ResourceId", "Type", "Configuration", "Alarms", "Created"], rows, "no scaling policies")
    return 0


def show_activities(args, response: dict) -> int:
    """DescribeScalingActivities: newest first, with the change (from→to), status, cause and end time."""
    from mve.scaling_view import change_text, newest_activities

    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    activities = newest_activities(data.get("ScalingActivities", []), len(data.get("ScalingActivities", [])))
    rows = [[a.get("StartTime"), a["ResourceId"], change_text(a.get("Description", "")),
             a.get("StatusCode", ""), a.get("Cause", ""), a.get("EndTime")] for a in activities]
    _print(["StartTime", "ResourceId", "Change", "Status", "Cause", "EndTime"], rows, "no scaling activities")
    return 0


def show_registered(args, resource: str, response: dict) -> int:
    """RegisterScalableTarget: the target and its ARN."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    bounds = [f"{word} {value}" for word, value in (("min", args.min_capacity), ("max", args.max_capacity))
              if value is not None]
    arn = data.get("ScalableTargetARN")
    fresh_console().print(f"registered {resource}" + (f" ({', '.join(bounds)})" if bounds else "")
                     + (f": {arn}" if arn else ""))
    return 0


def show_put_policy(args, name: str, response: dict) -> int:
    """PutScalingPolicy: the policy's ARN and the alarms it watches."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    fresh_console().print(f"put scaling policy {name}: {data.get('PolicyARN', '')}")
    for alarm in data.get("Alarms", []):
        fresh_console().print(f"  alarm {alarm['AlarmName']}")
    return 0


def done(args, message: str) -> int:
    """A call with an empty response: a short confirmation (``{}`` with --json)."""
    if args.json:
        print_json({})
    else:
        fresh_console().print(message)
    return 0


__all__ = ["done", "policy_summary", "show_activities", "show_policies", "show_put_policy", "show_registered",
           "show_targets"]
