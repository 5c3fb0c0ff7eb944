"""``mve.v1.ApplicationAutoScaling`` over gRPC: protobuf in, `Autoscaler` calls, protobuf out.

Configurations travel inside the autoscaler with Application Auto Scaling's own keys
(TargetValue, ScaleOutCooldown, ...), so what DescribeScalingPolicies answers is what was put.
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from mve._proto import autoscaling_pb2 as pb
from mve._proto import autoscaling_pb2_grpc
from mve.control.autoscaler import Autoscaler
from mve.control.autoscaling import ScalableTarget, ScalingActivity, ScalingPolicy
from mve.errors import ValidationError

MAX_RESULTS = 50


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(round(seconds * 1e9)))
    return stamp


def _page(items: list, max_results: int, next_token: str, limit: int = MAX_RESULTS) -> tuple[list, str]:
    if not 0 <= max_results <= limit:
        raise ValidationError(f"MaxResults must be 1-{limit}, got {max_results}.")
    size = max_results or limit
    try:
        offset = int(next_token or "0")
    except ValueError:
        raise ValidationError("The NextToken is not valid for this call.") from None
    if offset < 0:
        raise ValidationError("The NextToken is not valid for this call.")
    page = items[offset : offset + size]
    return page, str(offset + size) if offset + size < len(items) else ""


def target_tracking_dict(message: pb.TargetTrackingScalingPolicyConfiguration) -> dict:
    """The configuration with Application Auto Scaling's keys (only those that are set)."""
    out: dict = {"TargetValue": message.target_value, "DisableScaleIn": message.disable_scale_in}
    if message.HasField("predefined_metric_specification"):
        spec = message.predefined_metric_specification
        out["PredefinedMetricSpecification"] = {"PredefinedMetricType": spec.predefined_metric_type}
        if spec.resource_label:
            out["PredefinedMetricSpecification"]["ResourceLabel"] = spec.resource_label
    if message.HasField("customized_metric_specification"):
        spec = message.customized_metric_specification
        out["CustomizedMetricSpecification"] = {
            "MetricName": spec.metric_name,
            "Namespace": spec.namespace,
            "Dimensions": [{"Name": d.name, "Value": d.value} for d in spec.dimensions],
            "Statistic": spec.statistic,
        }
        if spec.unit:
            out["CustomizedMetricSpecification"]["Unit"] = spec.unit
    if message.HasField("scale_out_cooldown"):
        out["ScaleOutCooldown"] = message.scale_out_cooldown
    if message.HasField("scale_in_cooldown"):
        out["ScaleInCooldown"] = message.scale_in_cooldown
    return out


def step_scaling_dict(message: pb.StepScalingPolicyConfiguration) -> dict:
    """The configuration with Application Auto Scaling's keys (only those that are set)."""
    steps = []
    for step in message.step_adjustments:
        item: dict = {"ScalingAdjustment": step.scaling_adjustment}
        if step.HasField("metric_interval_lower_bound"):
            item["MetricIntervalLowerBound"] = step.metric_interval_lower_bound
        if step.HasField("metric_interval_upper_bound"):
            item["MetricIntervalUpperBound"] = step.metric_interval_upper_bound
        steps.append(item)
    out: dict = {"AdjustmentType": message.adjustment_type, "StepAdjustments": steps}
    if message.HasField("min_adjustment_magnitude"):
        out["MinAdjustmentMagnitude"] = message.min_adjustment_magnitude
    if message.HasField("cooldown"):
        out["Cooldown"] = message.cooldown
    if message.metric_aggregation_type:
        out["MetricAggregationType"] = message.metric_aggregation_type
    return out


def _target_tracking_message(config: dict) -> pb.TargetTrackingScalingPolicyConfiguration:
    message = pb.TargetTrackingScalingPolicyConfiguration(
        target_value=config["TargetValue"],
        scale_out_cooldown=config["ScaleOutCooldown"],
        scale_in_cooldown=config["ScaleInCooldown"],
        disable_scale_in=config["DisableScaleIn"],
    )
    if "PredefinedMetricSpecification" in config:
        spec = config["PredefinedMetricSpecification"]
        message.predefined_metric_specification.CopyFrom(
            pb.PredefinedMetricSpecification(
                predefined_metric_type=spec["PredefinedMetricType"], resource_label=spec.get("ResourceLabel", "")
            )
        )
    if "CustomizedMetricSpecification" in config:
        spec = config["CustomizedMetricSpecification"]
        message.customized_metric_specification.CopyFrom(
            pb.CustomizedMetricSpecification(
                metric_name=spec["MetricName"],
                namespace=spec["Namespace"],
                dimensions=[pb.MetricDimension(name=d["Name"], value=d["Value"]) for d in spec.get("Dimensions", [])],
                statistic=spec["Statistic"],
                unit=spec.get("Unit", ""),
            )
        )
    return message


def _step_message(config: dict) -> pb.StepScalingPolicyConfiguration:
    message = pb.StepScalingPolicyConfiguration(
        adjustment_type=config["AdjustmentType"],
        cooldown=config["Cooldown"],
        metric_aggregation_type=config["MetricAggregationType"],
    )
    if "MinAdjustmentMagnitude" in config:
        message.min_adjustment_magnitude = config["MinAdjustmentMagnitude"]
    for step in config["StepAdjustments"]:
        item = message.step_adjustments.add(scaling_adjustment=step["ScalingAdjustment"])
        if "MetricIntervalLowerBound" in step:
            item.metric_interval_lower_bound = step["MetricIntervalLowerBound"]
        if "MetricIntervalUpperBound" in step:
            item.metric_interval_upper_bound = step["MetricIntervalUpperBound"]
    return message


def target_message(target: ScalableTarget) -> pb.ScalableTarget:
    """A target as DescribeScalableTargets answers it."""
    return pb.ScalableTarget(
        service_namespace="sagemaker",
        resource_id=target.resource_id,
        scalable_dimension="sagemaker:variant:DesiredInstanceCount",
        min_capacity=target.min_capacity,
        max_capacity=target.max_capacity,
        creation_time=_stamp(target.created),
        suspended_state=pb.SuspendedState(
            dynamic_scaling_in_suspended=target.scale_in_suspended,
            dynamic_scaling_out_suspended=target.scale_out_suspended,
            scheduled_scaling_suspended=target.scheduled_suspended,
        ),
        scalable_target_arn=target.arn,
    )


def policy_message(policy: ScalingPolicy) -> pb.ScalingPolicy:
    """A policy as DescribeScalingPolicies answers it."""
    message = pb.ScalingPolicy(
        policy_arn=policy.arn,
        policy_name=policy.policy_name,
        service_namespace="sagemaker",
        resource_id=policy.resource_id,
        scalable_dimension="sagemaker:variant:DesiredInstanceCount",
        policy_type=policy.policy_type,
        creation_time=_stamp(policy.created),
    )
    if policy.policy_type == "TargetTrackingScaling":
        message.target_tracking_scaling_policy_configuration.CopyFrom(_target_tracking_message(policy.config))
    else:
        message.step_scaling_policy_configuration.CopyFrom(_step_message(policy.config))
    return message


def activity_message(activity: ScalingActivity) -> pb.ScalingActivity:
    """An activity as DescribeScalingActivities answers it."""
    message = pb.ScalingActivity(
        activity_id=activity.activity_id,
        service_namespace="sagemaker",
        resource_id=activity.resource_id,
        scalable_dimension="sagemaker:variant:DesiredInstanceCount",
        description=activity.description,
        cause=activity.cause,
        start_time=_stamp(activity.start),
        status_code=activity.status_code,
        status_message=activity.status_message,
        details=activity.details,
    )
    if activity.end:
        message.end_time.CopyFrom(_stamp(activity.end))
    return message


class ApplicationAutoScalingServicer(autoscaling_pb2_grpc.ApplicationAutoScalingServicer):
    """The gRPC face of the `Autoscaler`; errors are mapped by the server's interceptor."""

    def __init__(self, autoscaler: Autoscaler):
        self._autoscaler = autoscaler

    async def RegisterScalableTarget(self, request, context):
        suspended = None
        if request.HasField("suspended_state"):
            s = request.suspended_state
            suspended = {
                "DynamicScalingInSuspended": s.dynamic_scaling_in_suspended,
                "DynamicScalingOutSuspended": s.dynamic_scaling_out_suspended,
                "ScheduledScalingSuspended": s.scheduled_scaling_suspended,
            }
        target = self._autoscaler.register_scalable_target(
            request.service_namespace,
            request.resource_id,
            request.scalable_dimension,
            request.min_capacity if request.HasField("min_capacity") else None,
            request.max_capacity if request.HasField("max_capacity") else None,
            suspended,
            request.role_arn,
        )
        return pb.RegisterScalableTargetResponse(scalable_target_arn=target.arn)

    async def DescribeScalableTargets(self, request, context):
        targets = self._autoscaler.describe_scalable_targets(
            request.service_namespace, tuple(request.resource_ids), request.scalable_dimension
        )
        page, token = _page(targets, request.max_results, request.next_token)
        return pb.DescribeScalableTargetsResponse(scalable_targets=[target_message(t) for t in page], next_token=token)

    async def DeregisterScalableTarget(self, request, context):
        self._autoscaler.deregister_scalable_target(request.service_namespace, request.resource_id, request.scalable_dimension)
        return pb.DeregisterScalableTargetResponse()

    async def PutScalingPolicy(self, request, context):
        policy = self._autoscaler.put_scaling_policy(
            request.policy_name,
            request.service_namespace,
            request.resource_id,
            request.scalable_dimension,
            request.policy_type,
            target_tracking_dict(request.target_tracking_scaling_policy_configuration)
            if request.HasField("target_tracking_scaling_policy_configuration")
            else None,
            step_scaling_dict(request.step_scaling_policy_configuration)
            if request.HasField("step_scaling_policy_configuration")
            else None,
        )
        return pb.PutScalingPolicyResponse(policy_arn=policy.arn)

    async def DescribeScalingPolicies(self, request, context):
        policies = self._autoscaler.describe_scaling_policies(
            request.service_namespace, request.resource_id, tuple(request.policy_names)
        )
        page, token = _page(policies, request.max_results, request.next_token)
        return pb.DescribeScalingPoliciesResponse(scaling_policies=[policy_message(p) for p in page], next_token=token)

    async def DeleteScalingPolicy(self, request, context):
        self._autoscaler.delete_scaling_policy(
            request.policy_name, request.service_namespace, request.resource_id, request.scalable_dimension
        )
        return pb.DeleteScalingPolicyResponse()

    async def DescribeScalingActivities(self, request, context):
        activities = self._autoscaler.describe_scaling_activities(request.service_namespace, request.resource_id)
        page, token = _page(activities, request.max_results, request.next_token)
        return pb.DescribeScalingActivitiesResponse(
            scaling_activities=[activity_message(a) for a in page], next_token=token
        )
