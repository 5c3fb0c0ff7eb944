"""mve.client("application-autoscaling") against an in-test gRPC server: validation, requests (optional
fields absent unless given), response shapes, Application Auto Scaling's error classes and paginators."""

from __future__ import annotations

from concurrent import futures
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import timestamp_pb2

import mve
from mve._proto import autoscaling_pb2 as pb
from mve._proto import autoscaling_pb2_grpc
from mve.errors import ResourceLimitExceeded, ResourceNotFound, ValidationError, to_status
from mve.sdk import ParamValidationError
from mve.sdk.autoscaling_convert import build_request

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
NOWHERE = "127.0.0.1:1"  # nothing listens: a call that got past validation would fail to connect
NS, DIM = "sagemaker", "sagemaker:variant:DesiredInstanceCount"
RID = "endpoint/ab/variant/Variant2"
TARGET = {"ServiceNamespace": NS, "ResourceId": RID, "ScalableDimension": DIM}


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


class FakeAutoScaling(autoscaling_pb2_grpc.ApplicationAutoScalingServicer):
    """Canned answers; pages are numbered by NextToken ("" -> 0 -> "1" -> "2" -> end)."""

    def __init__(self):
        self.requests: dict[str, list] = {}

    def _page(self, name: str, request) -> int:
        self.requests.setdefault(name, []).append(request)
        return int(request.next_token or 0) if hasattr(request, "next_token") else 0

    def RegisterScalableTarget(self, request, context):  # noqa: N802 - gRPC's name
        self._page("RegisterScalableTarget", request)
        if request.role_arn:
            context.abort_with_status(to_status(ValidationError("RoleARN is not supported")))
        if request.max_capacity > 100:
            context.abort_with_status(to_status(ResourceLimitExceeded("too many", reason="LimitExceededException")))
        return pb.RegisterScalableTargetResponse(scalable_target_arn=f"arn:mve:application-autoscaling:{request.resource_id}")

    def DescribeScalableTargets(self, request, context):  # noqa: N802
        page = self._page("DescribeScalableTargets", request)
        return pb.DescribeScalableTargetsResponse(
            scalable_targets=[pb.ScalableTarget(
                service_namespace=NS, resource_id=f"endpoint/ab/variant/V{page}", scalable_dimension=DIM,
                min_capacity=1, max_capacity=3 + page, creation_time=_ts(T0),
                suspended_state=pb.SuspendedState(dynamic_scaling_in_suspended=page == 1),
                scalable_target_arn=f"arn:{page}")],
            next_token=str(page + 1) if page < 2 else "")

    def DeregisterScalableTarget(self, request, context):  # noqa: N802
        self._page("DeregisterScalableTarget", request)
        if request.resource_id == "endpoint/nope/variant/V":
            context.abort_with_status(to_status(ResourceNotFound(
                "No scalable target registered", reason="ObjectNotFoundException")))
        return pb.DeregisterScalableTargetResponse()

    def PutScalingPolicy(self, request, context):  # noqa: N802
        self._page("PutScalingPolicy", request)
        if request.policy_name == "busy":
            context.abort_with_status(to_status(ValidationError("busy", reason="ConcurrentUpdateException")))
        alarms = []
        if request.policy_type == "TargetTrackingScaling":
            alarms = [pb.Alarm(alarm_name=f"TargetTracking-{request.resource_id}-AlarmHigh", alarm_arn="arn:high"),
                      pb.Alarm(alarm_name=f"TargetTracking-{request.resource_id}-AlarmLow", alarm_arn="arn:low")]
        return pb.PutScalingPolicyResponse(policy_arn=f"arn:policy/{request.policy_name}", alarms=alarms)

    def DescribeScalingPolicies(self, request, context):  # noqa: N802
        page = self._page("DescribeScalingPolicies", request)
        tracking = pb.TargetTrackingScalingPolicyConfiguration(
            target_value=70.0, scale_in_cooldown=300, disable_scale_in=False,
            predefined_metric_specification=pb.PredefinedMetricSpecification(
                predefined_metric_type="SageMakerVariantInvocationsPerInstance"))
        step = pb.StepScalingPolicyConfiguration(
            adjustment_type="ChangeInCapacity", cooldown=60, metric_aggregation_type="Average",
            step_adjustments=[pb.StepAdjustment(metric_interval_upper_bound=0.0, scaling_adjustment=-1),
                              pb.StepAdjustment(metric_interval_lower_bound=10.0, scaling_adjustment=2)])
        policies = [
            pb.ScalingPolicy(policy_arn="arn:p0", policy_name="tt", service_namespace=NS, resource_id=RID,
                             scalable_dimension=DIM, policy_type="TargetTrackingScaling",
                             target_tracking_scaling_policy_configuration=tracking,
                             alarms=[pb.Alarm(alarm_name="hi", alarm_arn="arn:hi")], creation_time=_ts(T0)),
            pb.ScalingPolicy(policy_arn="arn:p1", policy_name="step", service_namespace=NS, resource_id=RID,
                             scalable_dimension=DIM, policy_type="StepScaling",
                             step_scaling_policy_configuration=step, creation_time=_ts(T0)),
        ]
        return pb.DescribeScalingPoliciesResponse(scaling_policies=policies[page:page + 1],
                                                  next_token="1" if page == 0 else "")

    def DeleteScalingPolicy(self, request, context):  # noqa: N802
        self._page("DeleteScalingPolicy", request)
        return pb.DeleteScalingPolicyResponse()

    def DescribeScalingActivities(self, request, context):  # noqa: N802
        page = self._page("DescribeScalingActivities", request)
        if request.resource_id == "endpoint/boom/variant/V":
            context.abort_with_status(to_status(ValidationError("x", reason="InternalServiceException")))
        activity = pb.ScalingActivity(
            activity_id=f"a{page}", service_namespace=NS, resource_id=request.resource_id or RID,
            scalable_dimension=DIM, description="Setting desired instance count from 1 to 3.",
            cause="monitor alarm hi in state ALARM triggered policy tt", start_time=_ts(T0 + timedelta(minutes=page)),
            status_code="InProgress" if page else "Successful")
        if page == 0:
            activity.end_time.CopyFrom(_ts(T0 + timedelta(seconds=30)))
            activity.status_message = "Successfully set desired instance count to 3."
        return pb.DescribeScalingActivitiesResponse(scaling_activities=[activity],
                                                    next_token=str(page + 1) if page < 1 else "")


@pytest.fixture(scope="module")
def fake():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = FakeAutoScaling()
    autoscaling_pb2_grpc.add_ApplicationAutoScalingServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with mve.client("application-autoscaling", address=f"127.0.0.1:{port}") as aas:
        yield aas, servicer
    server.stop(grace=None)


# ---------------------------------------------------------------- validation, before any call


def test_the_address_defaults_to_the_control_plane(monkeypatch):
    monkeypatch.setenv("MVE_CONTROL_PLANE", "127.0.0.1:7171")
    assert mve.client("application-autoscaling").address == "127.0.0.1:7171"
    monkeypatch.delenv("MVE_CONTROL_PLANE")
    aas = mve.client("application-autoscaling", region_name="us-east-1")
    assert aas.address == "127.0.0.1:7070" and aas.service_name == "application-autoscaling"


def test_bad_parameters_are_all_reported_before_any_call():
    aas = mve.client("application-autoscaling", address=NOWHERE)
    with pytest.raises(ParamValidationError) as caught:
        aas.register_scalable_target(ServiceNamespace=NS, ResourceId="", MinCapacity="1", MaxCapacity=True,
                                     SuspendedState={"DynamicScalingInSuspended": "yes"}, Tags={"a": "b"})
    report = caught.value.report
    assert 'Missing required parameter in input: "ScalableDimension"' in report
    assert "Invalid length for parameter ResourceId, value: 0, valid min length: 1" in report
    assert "Invalid type for parameter MinCapacity, value: '1'" in report
    assert "Invalid type for parameter MaxCapacity, value: True" in report
    assert "Invalid type for parameter SuspendedState.DynamicScalingInSuspended, value: 'yes'" in report
    assert 'Unknown parameter in input: "Tags"' in report

    with pytest.raises(ParamValidationError) as caught:
        aas.put_scaling_policy(ServiceNamespace=NS, ResourceId=RID, ScalableDimension=DIM, PolicyType="StepScaling",
                               TargetTrackingScalingPolicyConfiguration={"ScaleInCooldown": 1.5,
                                                                         "PredefinedMetricSpecification": {}},
                               StepScalingPolicyConfiguration={"StepAdjustments": [{"MetricIntervalLowerBound": 0}]})
    report = caught.value.report
    assert 'Missing required parameter in input: "PolicyName"' in report
    assert 'Missing required parameter in TargetTrackingScalingPolicyConfiguration: "TargetValue"' in report
    assert ('Missing required parameter in TargetTrackingScalingPolicyConfiguration.PredefinedMetricSpecification: '
            '"PredefinedMetricType"') in report
    assert "Invalid type for parameter TargetTrackingScalingPolicyConfiguration.ScaleInCooldown, value: 1.5" in report
    assert ('Missing required parameter in StepScalingPolicyConfiguration.StepAdjustments[0]: '
            '"ScalingAdjustment"') in report

    for method in (aas.describe_scalable_targets, aas.describe_scaling_policies, aas.describe_scaling_activities):
        with pytest.raises(ParamValidationError, match='Missing required parameter in input: "ServiceNamespace"'):
            method()
    with pytest.raises(ParamValidationError, match='Unknown parameter in input: "IncludeNotScaledActivities"'):
        aas.describe_scaling_activities(ServiceNamespace=NS, IncludeNotScaledActivities=True)
    with pytest.raises(ParamValidationError, match="Invalid type for parameter ResourceIds, value: 'endpoint/ab'"):
        aas.describe_scalable_targets(ServiceNamespace=NS, ResourceIds="endpoint/ab")
    with pytest.raises(ParamValidationError, match='Missing required parameter in input: "PolicyName"'):
        aas.delete_scaling_policy(**TARGET)
    with pytest.raises(ParamValidationError, match='Missing required parameter in input: "ResourceId"'):
        aas.deregister_scalable_target(ServiceNamespace=NS, ScalableDimension=DIM)


def test_optional_numbers_are_sent_only_when_given():
    bare = build_request("RegisterScalableTarget", dict(TARGET))
    assert not bare.HasField("min_capacity") and not bare.HasField("max_capacity")
    assert not bare.HasField("suspended_state") and bare.role_arn == ""
    zero = build_request("RegisterScalableTarget", {**TARGET, "MinCapacity": 0})
    assert zero.HasField("min_capacity") and zero.min_capacity == 0 and not zero.HasField("max_capacity")

    policy = build_request("PutScalingPolicy", {**TARGET, "PolicyName": "p", "PolicyType": "TargetTrackingScaling",
                                                "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 70}})
    config = policy.target_tracking_scaling_policy_configuration
    assert config.target_value == 70.0 and not policy.HasField("step_scaling_policy_configuration")
    assert not config.HasField("scale_in_cooldown") and not config.HasField("scale_out_cooldown")
    assert not config.HasField("predefined_metric_specification") and not config.disable_scale_in

    step = build_request("PutScalingPolicy", {**TARGET, "PolicyName": "s", "StepScalingPolicyConfiguration": {
        "StepAdjustments": [{"MetricIntervalUpperBound": 0, "ScalingAdjustment": -1}]}})
    config = step.step_scaling_policy_configuration
    assert step.policy_type == "" and not step.HasField("target_tracking_scaling_policy_configuration")
    assert not config.HasField("cooldown") and not config.HasField("min_adjustment_magnitude")
    (adjustment,) = config.step_adjustments
    assert adjustment.HasField("metric_interval_upper_bound") and adjustment.metric_interval_upper_bound == 0.0
    assert not adjustment.HasField("metric_interval_lower_bound") and adjustment.scaling_adjustment == -1


# ---------------------------------------------------------------- calls


def test_register_scalable_target_request_and_response(fake):
    aas, servicer = fake
    response = aas.register_scalable_target(
        **TARGET, MinCapacity=1, MaxCapacity=3,
        SuspendedState={"DynamicScalingInSuspended": True, "ScheduledScalingSuspended": False})
    assert response["ScalableTargetARN"] == f"arn:mve:application-autoscaling:{RID}"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    request = servicer.requests["RegisterScalableTarget"][-1]
    assert (request.service_namespace, request.resource_id, request.scalable_dimension) == (NS, RID, DIM)
    assert (request.min_capacity, request.max_capacity) == (1, 3)
    assert request.HasField("suspended_state") and request.suspended_state.dynamic_scaling_in_suspended
    assert not request.suspended_state.dynamic_scaling_out_suspended

    aas.register_scalable_target(**TARGET, MaxCapacity=5)
    request = servicer.requests["RegisterScalableTarget"][-1]
    assert not request.HasField("min_capacity") and request.max_capacity == 5 and not request.HasField("suspended_state")


def test_service_errors_are_application_auto_scalings_exception_classes(fake):
    aas, _ = fake
    with pytest.raises(aas.exceptions.ValidationException) as caught:
        aas.register_scalable_target(**TARGET, RoleARN="arn:aws:iam::1:role/x")
    assert caught.value.response["Error"] == {"Code": "ValidationException", "Message": "RoleARN is not supported"}
    assert "when calling the RegisterScalableTarget operation: RoleARN is not supported" in str(caught.value)
    with pytest.raises(aas.exceptions.LimitExceededException):
        aas.register_scalable_target(**TARGET, MaxCapacity=1000)
    with pytest.raises(aas.exceptions.ObjectNotFoundException) as caught:
        aas.deregister_scalable_target(ServiceNamespace=NS, ResourceId="endpoint/nope/variant/V", ScalableDimension=DIM)
    assert isinstance(caught.value, aas.exceptions.ClientError)
    with pytest.raises(aas.exceptions.ConcurrentUpdateException):
        aas.put_scaling_policy(PolicyName="busy", **TARGET, PolicyType="StepScaling")
    with pytest.raises(aas.exceptions.InternalServiceException):
        aas.describe_scaling_activities(ServiceNamespace=NS, ResourceId="endpoint/boom/variant/V")
    for name in ("InvalidNextTokenException", "FailedResourceAccessException", "ResourceNotFoundException",
                 "TooManyTagsException"):
        assert issubclass(getattr(aas.exceptions, name), aas.exceptions.ClientError)
    assert aas.exceptions.from_code("ObjectNotFoundException") is aas.exceptions.ObjectNotFoundException


def test_describe_scalable_targets_shape_and_paginator(fake):
    aas, servicer = fake
    response = aas.describe_scalable_targets(ServiceNamespace=NS, ResourceIds=[RID, "endpoint/ab/variant/V1"],
                                             ScalableDimension=DIM, MaxResults=1)
    assert response["NextToken"] == "1"
    assert response["ScalableTargets"] == [{
        "ServiceNamespace": NS, "ResourceId": "endpoint/ab/variant/V0", "ScalableDimension": DIM,
        "MinCapacity": 1, "MaxCapacity": 3, "RoleARN": "", "CreationTime": T0,
        "SuspendedState": {"DynamicScalingInSuspended": False, "DynamicScalingOutSuspended": False,
                           "ScheduledScalingSuspended": False},
        "ScalableTargetARN": "arn:0"}]
    assert response["ScalableTargets"][0]["CreationTime"].tzinfo is timezone.utc
    request = servicer.requests["DescribeScalableTargets"][-1]
    assert list(request.resource_ids) == [RID, "endpoint/ab/variant/V1"] and request.max_results == 1

    assert aas.can_paginate("describe_scalable_targets") and not aas.can_paginate("register_scalable_target")
    pages = list(aas.get_paginator("describe_scalable_targets").paginate(
        ServiceNamespace=NS, PaginationConfig={"PageSize": 7}))
    assert [p["ScalableTargets"][0]["MaxCapacity"] for p in pages] == [3, 4, 5] and "NextToken" not in pages[-1]
    assert pages[1]["ScalableTargets"][0]["SuspendedState"]["DynamicScalingInSuspended"] is True
    assert [(r.max_results, r.next_token) for r in servicer.requests["DescribeScalableTargets"][-3:]] == [
        (7, ""), (7, "1"), (7, "2")]
    with pytest.raises(ValueError, match="no paginator"):
        aas.get_paginator("put_scaling_policy")
    with pytest.raises(ValueError, match="Waiter does not exist"):
        aas.get_waiter("scalable_target_exists")


def test_put_scaling_policy_target_tracking(fake):
    aas, servicer = fake
    response = aas.put_scaling_policy(
        PolicyName="tt", **TARGET, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 70.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleOutCooldown": 60, "ScaleInCooldown": 300, "DisableScaleIn": True})
    assert response["PolicyARN"] == "arn:policy/tt"
    assert response["Alarms"] == [{"AlarmName": f"TargetTracking-{RID}-AlarmHigh", "AlarmARN": "arn:high"},
                                  {"AlarmName": f"TargetTracking-{RID}-AlarmLow", "AlarmARN": "arn:low"}]
    request = servicer.requests["PutScalingPolicy"][-1]
    config = request.target_tracking_scaling_policy_configuration
    assert (request.policy_name, request.policy_type, request.resource_id) == ("tt", "TargetTrackingScaling", RID)
    assert (config.target_value, config.scale_out_cooldown, config.scale_in_cooldown) == (70.0, 60, 300)
    assert config.disable_scale_in and config.predefined_metric_specification.predefined_metric_type == (
        "SageMakerVariantInvocationsPerInstance")
    assert not config.HasField("customized_metric_specification")

    aas.put_scaling_policy(
        PolicyName="latency", **TARGET, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={"TargetValue": 2000, "CustomizedMetricSpecification": {
            "MetricName": "ModelLatency", "Namespace": "AWS/SageMaker", "Statistic": "Average", "Unit": "Microseconds",
            "Dimensions": [{"Name": "EndpointName", "Value": "ab"}, {"Name": "VariantName", "Value": "Variant2"}]}})
    custom = servicer.requests["PutScalingPolicy"][-1].target_tracking_scaling_policy_configuration.customized_metric_specification
    assert (custom.metric_name, custom.namespace, custom.statistic, custom.unit) == (
        "ModelLatency", "AWS/SageMaker", "Average", "Microseconds")
    assert [(d.name, d.value) for d in custom.dimensions] == [("EndpointName", "ab"), ("VariantName", "Variant2")]


def test_put_scaling_policy_step_scaling(fake):
    aas, servicer = fake
    response = aas.put_scaling_policy(
        PolicyName="step", **TARGET, PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity", "Cooldown": 120, "MetricAggregationType": "Maximum",
            "MinAdjustmentMagnitude": 1,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": 10, "ScalingAdjustment": 1},
                                {"MetricIntervalLowerBound": 10, "ScalingAdjustment": 2}]})
    assert response["PolicyARN"] == "arn:policy/step" and response["Alarms"] == []
    config = servicer.requests["PutScalingPolicy"][-1].step_scaling_policy_configuration
    assert (config.adjustment_type, config.cooldown, config.metric_aggregation_type, config.min_adjustment_magnitude) == (
        "ChangeInCapacity", 120, "Maximum", 1)
    first, second = config.step_adjustments
    assert (first.metric_interval_lower_bound, first.metric_interval_upper_bound, first.scaling_adjustment) == (0, 10, 1)
    assert second.HasField("metric_interval_lower_bound") and not second.HasField("metric_interval_upper_bound")


def test_describe_scaling_policies_shapes_and_paginator(fake):
    aas, servicer = fake
    pages = list(aas.get_paginator("describe_scaling_policies").paginate(
        ServiceNamespace=NS, ResourceId=RID, ScalableDimension=DIM, PolicyNames=["tt", "step"]))
    tracking, step = (p["ScalingPolicies"][0] for p in pages)
    request = servicer.requests["DescribeScalingPolicies"][-1]
    assert list(request.policy_names) == ["tt", "step"] and request.resource_id == RID and request.next_token == "1"
    assert tracking == {
        "PolicyARN": "arn:p0", "PolicyName": "tt", "ServiceNamespace": NS, "ResourceId": RID,
        "ScalableDimension": DIM, "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 70.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300, "DisableScaleIn": False},
        "Alarms": [{"AlarmName": "hi", "AlarmARN": "arn:hi"}], "CreationTime": T0}
    assert step["StepScalingPolicyConfiguration"] == {
        "AdjustmentType": "ChangeInCapacity",
        "StepAdjustments": [{"MetricIntervalUpperBound": 0.0, "ScalingAdjustment": -1},
                            {"MetricIntervalLowerBound": 10.0, "ScalingAdjustment": 2}],
        "Cooldown": 60, "MetricAggregationType": "Average"}
    assert "TargetTrackingScalingPolicyConfiguration" not in step and step["Alarms"] == []

    assert set(aas.delete_scaling_policy(PolicyName="tt", **TARGET)) == {"ResponseMetadata"}
    request = servicer.requests["DeleteScalingPolicy"][-1]
    assert (request.policy_name, request.service_namespace, request.resource_id, request.scalable_dimension) == (
        "tt", NS, RID, DIM)
    assert set(aas.deregister_scalable_target(**TARGET)) == {"ResponseMetadata"}


def test_describe_scaling_activities_shape_and_paginator(fake):
    aas, servicer = fake
    pages = list(aas.get_paginator("describe_scaling_activities").paginate(
        ServiceNamespace=NS, ResourceId=RID, ScalableDimension=DIM, PaginationConfig={"PageSize": 1}))
    done, running = (p["ScalingActivities"][0] for p in pages)
    assert done == {
        "ActivityId": "a0", "ServiceNamespace": NS, "ResourceId": RID, "ScalableDimension": DIM,
        "Description": "Setting desired instance count from 1 to 3.",
        "Cause": "monitor alarm hi in state ALARM triggered policy tt",
        "StartTime": T0, "EndTime": T0 + timedelta(seconds=30), "StatusCode": "Successful",
        "StatusMessage": "Successfully set desired instance count to 3."}
    assert "EndTime" not in running and "StatusMessage" not in running and "Details" not in running
    assert running["StartTime"] == T0 + timedelta(minutes=1) and running["StartTime"].tzinfo is timezone.utc
    request = servicer.requests["DescribeScalingActivities"][-1]
    assert (request.max_results, request.next_token, request.scalable_dimension) == (1, "1", DIM)
