"""Application Auto Scaling's parameter shapes, and conversion between boto3-shaped dicts and
``mve.v1.ApplicationAutoScaling`` messages.

The shapes are the subset of boto3's ``application-autoscaling`` parameters that the service
serves (no Tags, scheduled actions, predictive scaling or IncludeNotScaledActivities); anything
else is refused before any call, as botocore refuses an unknown parameter. Optional numbers
(MinCapacity, cooldowns, step bounds, ...) are sent only when the caller gave them, so that the
server can tell "not given" from 0. Responses leave out what the server left unset, as boto3 does,
and times come back as UTC datetimes.
"""

from __future__ import annotations

from mve._proto import autoscaling_pb2 as pb
from mve.sdk.convert import put_time, with_token
from mve.sdk.params import BOOLEAN, DOUBLE, INTEGER, STRING, ListOf, Scalar, Structure, struct

# ---------------------------------------------------------------- shapes

# botocore: ResourceIdMaxLen1600, ResourceId, PolicyName and ResourceLabel have a min length of 1.
NON_EMPTY = Scalar((str,), 1)
TARGET = ("ServiceNamespace", "ResourceId", "ScalableDimension")

SUSPENDED_STATE = struct(
    DynamicScalingInSuspended=BOOLEAN, DynamicScalingOutSuspended=BOOLEAN, ScheduledScalingSuspended=BOOLEAN
)
TARGET_TRACKING = struct(
    ("TargetValue",),
    TargetValue=DOUBLE,
    PredefinedMetricSpecification=struct(
        ("PredefinedMetricType",), PredefinedMetricType=STRING, ResourceLabel=NON_EMPTY
    ),
    CustomizedMetricSpecification=struct(
        MetricName=STRING,
        Namespace=STRING,
        Dimensions=ListOf(struct(("Name", "Value"), Name=STRING, Value=STRING)),
        Statistic=STRING,
        Unit=STRING,
    ),
    ScaleOutCooldown=INTEGER,
    ScaleInCooldown=INTEGER,
    DisableScaleIn=BOOLEAN,
)
STEP_SCALING = struct(
    AdjustmentType=STRING,
    StepAdjustments=ListOf(struct(
        ("ScalingAdjustment",),
        MetricIntervalLowerBound=DOUBLE,
        MetricIntervalUpperBound=DOUBLE,
        ScalingAdjustment=INTEGER,
    )),
    MinAdjustmentMagnitude=INTEGER,
    Cooldown=INTEGER,
    MetricAggregationType=STRING,
)

OPERATIONS: dict[str, Structure] = {
    "RegisterScalableTarget": struct(
        TARGET,
        ServiceNamespace=STRING,
        ResourceId=NON_EMPTY,
        ScalableDimension=STRING,
        MinCapacity=INTEGER,
        MaxCapacity=INTEGER,
        RoleARN=NON_EMPTY,
        SuspendedState=SUSPENDED_STATE,
    ),
    "DescribeScalableTargets": struct(
        ("ServiceNamespace",),
        ServiceNamespace=STRING,
        ResourceIds=ListOf(NON_EMPTY),
        ScalableDimension=STRING,
        MaxResults=INTEGER,
        NextToken=STRING,
    ),
    "DeregisterScalableTarget": struct(
        TARGET, ServiceNamespace=STRING, ResourceId=NON_EMPTY, ScalableDimension=STRING
    ),
    "PutScalingPolicy": struct(
        ("PolicyName", *TARGET),
        PolicyName=NON_EMPTY,
        ServiceNamespace=STRING,
        ResourceId=NON_EMPTY,
        ScalableDimension=STRING,
        PolicyType=STRING,
        StepScalingPolicyConfiguration=STEP_SCALING,
        TargetTrackingScalingPolicyConfiguration=TARGET_TRACKING,
    ),
    "DescribeScalingPolicies": struct(
        ("ServiceNamespace",),
        PolicyNames=ListOf(NON_EMPTY),
        ServiceNamespace=STRING,
        ResourceId=NON_EMPTY,
        ScalableDimension=STRING,
        MaxResults=INTEGER,
        NextToken=STRING,
    ),
    "DeleteScalingPolicy": struct(
        ("PolicyName", *TARGET),
        PolicyName=NON_EMPTY,
        ServiceNamespace=STRING,
        ResourceId=NON_EMPTY,
        ScalableDimension=STRING,
    ),
    "DescribeScalingActivities": struct(
        ("ServiceNamespace",),
        ServiceNamespace=STRING,
        ResourceId=NON_EMPTY,
        ScalableDimension=STRING,
        MaxResults=INTEGER,
        NextToken=STRING,
    ),
}

# ---------------------------------------------------------------- requests


def _optional(spec: dict, **names: str) -> dict:
    """Keyword arguments for the proto `optional` fields whose boto3 key is present in `spec`."""
    return {field: spec[key] for field, key in names.items() if key in spec}


def _target(p: dict) -> dict:
    return {"service_namespace": p["ServiceNamespace"], "resource_id": p["ResourceId"],
            "scalable_dimension": p["ScalableDimension"]}


def _suspended_state(spec: dict) -> pb.SuspendedState:
    return pb.SuspendedState(
        dynamic_scaling_in_suspended=spec.get("DynamicScalingInSuspended", False),
        dynamic_scaling_out_suspended=spec.get("DynamicScalingOutSuspended", False),
        scheduled_scaling_suspended=spec.get("ScheduledScalingSuspended", False),
    )


def _register(p: dict) -> pb.RegisterScalableTargetRequest:
    request = pb.RegisterScalableTargetRequest(
        **_target(p), role_arn=p.get("RoleARN", ""),
        **_optional(p, min_capacity="MinCapacity", max_capacity="MaxCapacity"),
    )
    if "SuspendedState" in p:
        request.suspended_state.CopyFrom(_suspended_state(p["SuspendedState"]))
    return request


def target_tracking_message(spec: dict) -> pb.TargetTrackingScalingPolicyConfiguration:
    """A TargetTrackingScalingPolicyConfiguration message from its validated boto3 dict."""
    config = pb.TargetTrackingScalingPolicyConfiguration(
        target_value=float(spec["TargetValue"]),
        disable_scale_in=spec.get("DisableScaleIn", False),
        **_optional(spec, scale_out_cooldown="ScaleOutCooldown", scale_in_cooldown="ScaleInCooldown"),
    )
    if "PredefinedMetricSpecification" in spec:
        predefined = spec["PredefinedMetricSpecification"]
        config.predefined_metric_specification.CopyFrom(pb.PredefinedMetricSpecification(
            predefined_metric_type=predefined["PredefinedMetricType"],
            resource_label=predefined.get("ResourceLabel", "")))
    if "CustomizedMetricSpecification" in spec:
        custom = spec["CustomizedMetricSpecification"]
        config.customized_metric_specification.CopyFrom(pb.CustomizedMetricSpecification(
            metric_name=custom.get("MetricName", ""),
            namespace=custom.get("Namespace", ""),
            dimensions=[pb.MetricDimension(name=d["Name"], value=d["Value"]) for d in custom.get("Dimensions", ())],
            statistic=custom.get("Statistic", ""),
            unit=custom.get("Unit", "")))
    return config


def step_scaling_message(spec: dict) -> pb.StepScalingPolicyConfiguration:
    """A StepScalingPolicyConfiguration message from its validated boto3 dict."""
    return pb.StepScalingPolicyConfiguration(
        adjustment_type=spec.get("AdjustmentType", ""),
        step_adjustments=[
            pb.StepAdjustment(
                scaling_adjustment=step["ScalingAdjustment"],
                **{field: float(value) for field, value in _optional(
                    step, metric_interval_lower_bound="MetricIntervalLowerBound",
                    metric_interval_upper_bound="MetricIntervalUpperBound").items()},
            )
            for step in spec.get("StepAdjustments", ())
        ],
        metric_aggregation_type=spec.get("MetricAggregationType", ""),
        **_optional(spec, min_adjustment_magnitude="MinAdjustmentMagnitude", cooldown="Cooldown"),
    )


def _put_scaling_policy(p: dict) -> pb.PutScalingPolicyRequest:
    request = pb.PutScalingPolicyRequest(policy_name=p["PolicyName"], **_target(p), policy_type=p.get("PolicyType", ""))
    if "TargetTrackingScalingPolicyConfiguration" in p:
        request.target_tracking_scaling_policy_configuration.CopyFrom(
            target_tracking_message(p["TargetTrackingScalingPolicyConfiguration"]))
    if "StepScalingPolicyConfiguration" in p:
        request.step_scaling_policy_configuration.CopyFrom(step_scaling_message(p["StepScalingPolicyConfiguration"]))
    return request


REQUEST_BUILDERS = {
    "RegisterScalableTarget": _register,
    "DescribeScalableTargets": lambda p: pb.DescribeScalableTargetsRequest(
        service_namespace=p["ServiceNamespace"],
        resource_ids=p.get("ResourceIds", ()),
        scalable_dimension=p.get("ScalableDimension", ""),
        max_results=p.get("MaxResults", 0),
        next_token=p.get("NextToken", ""),
    ),
    "DeregisterScalableTarget": lambda p: pb.DeregisterScalableTargetRequest(**_target(p)),
    "PutScalingPolicy": _put_scaling_policy,
    "DescribeScalingPolicies": lambda p: pb.DescribeScalingPoliciesRequest(
        policy_names=p.get("PolicyNames", ()),
        service_namespace=p["ServiceNamespace"],
        resource_id=p.get("ResourceId", ""),
        scalable_dimension=p.get("ScalableDimension", ""),
        max_results=p.get("MaxResults", 0),
        next_token=p.get("NextToken", ""),
    ),
    "DeleteScalingPolicy": lambda p: pb.DeleteScalingPolicyRequest(policy_name=p["PolicyName"], **_target(p)),
    "DescribeScalingActivities": lambda p: pb.DescribeScalingActivitiesRequest(
        service_namespace=p["ServiceNamespace"],
        resource_id=p.get("ResourceId", ""),
        scalable_dimension=p.get("ScalableDimension", ""),
        max_results=p.get("MaxResults", 0),
        next_token=p.get("NextToken", ""),
    ),
}


def build_request(operation: str, params: dict):
    """The protobuf request of `operation` for already validated `params`."""
    return REQUEST_BUILDERS[operation](params)


# ---------------------------------------------------------------- responses




def _put_set(out: dict, message, **names: str) -> None:
    """Copy the fields of `message` that are set (HasField for optional ones, non-empty otherwise)."""
    for key, field in names.items():
        descriptor = message.DESCRIPTOR.fields_by_name[field]
        present = message.HasField(field) if descriptor.has_presence else bool(getattr(message, field))
        if present:
            out[key] = getattr(message, field)


def _suspended_dict(state: pb.SuspendedState) -> dict:
    return {"DynamicScalingInSuspended": state.dynamic_scaling_in_suspended,
            "DynamicScalingOutSuspended": state.dynamic_scaling_out_suspended,
            "ScheduledScalingSuspended": state.scheduled_scaling_suspended}


def _scalable_target(target: pb.ScalableTarget) -> dict:
    out = {"ServiceNamespace": target.service_namespace, "ResourceId": target.resource_id,
           "ScalableDimension": target.scalable_dimension, "MinCapacity": target.min_capacity,
           "MaxCapacity": target.max_capacity, "RoleARN": target.role_arn}
    put_time(out, "CreationTime", target, "creation_time")
    out["SuspendedState"] = _suspended_dict(target.suspended_state)
    _put_set(out, target, ScalableTargetARN="scalable_target_arn")
    return out


def _target_tracking(config: pb.TargetTrackingScalingPolicyConfiguration) -> dict:
    out: dict = {"TargetValue": config.target_value}
    if config.HasField("predefined_metric_specification"):
        predefined = config.predefined_metric_specification
        out["PredefinedMetricSpecification"] = {"PredefinedMetricType": predefined.predefined_metric_type}
        _put_set(out["PredefinedMetricSpecification"], predefined, ResourceLabel="resource_label")
    if config.HasField("customized_metric_specification"):
        custom = config.customized_metric_specification
        spec: dict = {}
        _put_set(spec, custom, MetricName="metric_name", Namespace="namespace")
        if custom.dimensions:
            spec["Dimensions"] = [{"Name": d.name, "Value": d.value} for d in custom.dimensions]
        _put_set(spec, custom, Statistic="statistic", Unit="unit")
        out["CustomizedMetricSpecification"] = spec
    _put_set(out, config, ScaleOutCooldown="scale_out_cooldown", ScaleInCooldown="scale_in_cooldown")
    out["DisableScaleIn"] = config.disable_scale_in
    return out


def _step_scaling(config: pb.StepScalingPolicyConfiguration) -> dict:
    out: dict = {}
    _put_set(out, config, AdjustmentType="adjustment_type")
    steps = []
    for step in config.step_adjustments:
        item: dict = {}
        _put_set(item, step, MetricIntervalLowerBound="metric_interval_lower_bound",
                 MetricIntervalUpperBound="metric_interval_upper_bound")
        item["ScalingAdjustment"] = step.scaling_adjustment
        steps.append(item)
    out["StepAdjustments"] = steps
    _put_set(out, config, MinAdjustmentMagnitude="min_adjustment_magnitude", Cooldown="cooldown",
             MetricAggregationType="metric_aggregation_type")
    return out


def _alarms(alarms) -> list[dict]:
    return [{"AlarmName": a.alarm_name, "AlarmARN": a.alarm_arn} for a in alarms]


def _scaling_policy(policy: pb.ScalingPolicy) -> dict:
    out = {"PolicyARN": policy.policy_arn, "PolicyName": policy.policy_name,
           "ServiceNamespace": policy.service_namespace, "ResourceId": policy.resource_id,
           "ScalableDimension": policy.scalable_dimension, "PolicyType": policy.policy_type}
    if policy.HasField("step_scaling_policy_configuration"):
        out["StepScalingPolicyConfiguration"] = _step_scaling(policy.step_scaling_policy_configuration)
    if policy.HasField("target_tracking_scaling_policy_configuration"):
        out["TargetTrackingScalingPolicyConfiguration"] = _target_tracking(
            policy.target_tracking_scaling_policy_configuration)
    out["Alarms"] = _alarms(policy.alarms)
    put_time(out, "CreationTime", policy, "creation_time")
    return out


def _activity(activity: pb.ScalingActivity) -> dict:
    out = {"ActivityId": activity.activity_id, "ServiceNamespace": activity.service_namespace,
           "ResourceId": activity.resource_id, "ScalableDimension": activity.scalable_dimension,
           "Description": activity.description, "Cause": activity.cause}
    put_time(out, "StartTime", activity, "start_time")
    put_time(out, "EndTime", activity, "end_time")
    out["StatusCode"] = activity.status_code
    _put_set(out, activity, StatusMessage="status_message", Details="details")
    return out




RESPONSE_CONVERTERS = {
    "RegisterScalableTarget": lambda r: {"ScalableTargetARN": r.scalable_target_arn} if r.scalable_target_arn else {},
    "DescribeScalableTargets": lambda r: with_token(
        {"ScalableTargets": [_scalable_target(t) for t in r.scalable_targets]}, r.next_token),
    "DeregisterScalableTarget": lambda r: {},
    "PutScalingPolicy": lambda r: {"PolicyARN": r.policy_arn, "Alarms": _alarms(r.alarms)},
    "DescribeScalingPolicies": lambda r: with_token(
        {"ScalingPolicies": [_scaling_policy(p) for p in r.scaling_policies]}, r.next_token),
    "DeleteScalingPolicy": lambda r: {},
    "DescribeScalingActivities": lambda r: with_token(
        {"ScalingActivities": [_activity(a) for a in r.scaling_activities]}, r.next_token),
}


def convert_response(operation: str, response) -> dict:
    """The boto3-shaped dict of `operation`'s protobuf `response`."""
    return RESPONSE_CONVERTERS[operation](response)


__all__ = ["OPERATIONS", "build_request", "convert_response", "step_scaling_message", "target_tracking_message"]
