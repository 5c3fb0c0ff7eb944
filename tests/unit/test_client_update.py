"""update_endpoint with deployment guardrails through the SDK, against an in-test gRPC server.

What reaches the server for canary, linear, rolling and alarm configs; describe_endpoint's
LastDeploymentConfig and PendingDeploymentSummary; botocore-like ParamValidationError before any call.
"""

from __future__ import annotations

from concurrent import futures
from datetime import datetime, timezone

import grpc
import pytest
from google.protobuf import timestamp_pb2

import mve
from mve._proto import control_pb2 as pb
from mve._proto import control_pb2_grpc
from mve.sdk import ParamValidationError

STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
NOWHERE = "127.0.0.1:1"  # nothing listens: a call that got past validation fails to connect


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _summary(name: str, weight: float, status: str = "") -> pb.ProductionVariantSummary:
    return pb.ProductionVariantSummary(
        variant_name=name, current_weight=weight, desired_weight=weight, current_instance_count=1,
        desired_instance_count=1,
        variant_status=[pb.ProductionVariantStatus(status=status, start_time=_ts(STARTED))] if status else [])


CANARY_CONFIG = pb.DeploymentConfig(
    blue_green_update_policy=pb.BlueGreenUpdatePolicy(
        traffic_routing_configuration=pb.TrafficRoutingConfig(
            type="CANARY", wait_interval_in_seconds=60, canary_size=pb.CapacitySize(type="CAPACITY_PERCENT", value=10)),
        termination_wait_in_seconds=30),
    auto_rollback_configuration=pb.AutoRollbackConfig(alarms=[pb.AlarmName(alarm_name="ab-5xx")]),
)


class FakeControl(control_pb2_grpc.EndpointControlServicer):
    """Records UpdateEndpoint requests; DescribeEndpoint answers by endpoint name."""

    def __init__(self):
        self.updates: list[pb.UpdateEndpointRequest] = []

    def UpdateEndpoint(self, request, context):  # noqa: N802 - gRPC's name
        self.updates.append(request)
        return pb.UpdateEndpointResponse(endpoint_arn=f"arn:mve:sagemaker:local:endpoint/{request.endpoint_name}")

    def DescribeEndpoint(self, request, context):  # noqa: N802
        response = pb.DescribeEndpointResponse(
            endpoint_name=request.endpoint_name, endpoint_arn="arn:mve:sagemaker:local:endpoint/ab",
            endpoint_config_name="ab-config", endpoint_status="InService", creation_time=_ts(STARTED),
            last_modified_time=_ts(STARTED), production_variants=[_summary("Variant1", 1), _summary("Variant2", 1)])
        if request.endpoint_name == "updating":
            response.endpoint_status = "Updating"
            response.last_deployment_config.CopyFrom(CANARY_CONFIG)
            response.pending_deployment_summary.CopyFrom(pb.PendingDeploymentSummary(
                endpoint_config_name="ab-winner", start_time=_ts(STARTED),
                production_variants=[_summary("Variant2", 1, "Baking")]))
        elif request.endpoint_name == "rolling":
            response.last_deployment_config.rolling_update_policy.CopyFrom(pb.RollingUpdatePolicy(
                maximum_batch_size=pb.CapacitySize(type="INSTANCE_COUNT", value=2), wait_interval_in_seconds=5,
                maximum_execution_timeout_in_seconds=900))
        elif request.endpoint_name == "empty":
            # Present but empty messages read as absent.
            response.last_deployment_config.SetInParent()
            response.pending_deployment_summary.SetInParent()
        return response


@pytest.fixture(scope="module")
def fake():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    control = FakeControl()
    control_pb2_grpc.add_EndpointControlServicer_to_server(control, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with mve.client("sagemaker", address=f"127.0.0.1:{port}") as sm:
        yield sm, control
    server.stop(grace=None)


def test_canary_with_alarms_reaches_the_server(fake):
    sm, control = fake
    response = sm.update_endpoint(
        EndpointName="ab", EndpointConfigName="ab-winner",
        DeploymentConfig={
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 60,
                                                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
                "TerminationWaitInSeconds": 30, "MaximumExecutionTimeoutInSeconds": 1800},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "ab-5xx"}, {"AlarmName": "ab-latency"}]},
        },
    )
    assert response["EndpointArn"] == "arn:mve:sagemaker:local:endpoint/ab"
    request = control.updates[-1]
    assert (request.endpoint_name, request.endpoint_config_name) == ("ab", "ab-winner")
    policy = request.deployment_config.blue_green_update_policy
    routing = policy.traffic_routing_configuration
    assert (routing.type, routing.wait_interval_in_seconds) == ("CANARY", 60)
    assert (routing.canary_size.type, routing.canary_size.value) == ("CAPACITY_PERCENT", 10)
    assert not routing.HasField("linear_step_size")
    assert policy.termination_wait_in_seconds == 30 and policy.maximum_execution_timeout_in_seconds == 1800
    assert [a.alarm_name for a in request.deployment_config.auto_rollback_configuration.alarms] == [
        "ab-5xx", "ab-latency"]
    assert not request.deployment_config.HasField("rolling_update_policy")
    assert not request.retain_all_variant_properties and not request.retain_deployment_config


def test_linear_without_timeout_leaves_it_unset(fake):
    sm, control = fake
    sm.update_endpoint(EndpointName="ab", EndpointConfigName="c2", DeploymentConfig={
        "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
            "Type": "LINEAR", "WaitIntervalInSeconds": 0, "LinearStepSize": {"Type": "INSTANCE_COUNT", "Value": 1}}}})
    policy = control.updates[-1].deployment_config.blue_green_update_policy
    assert policy.traffic_routing_configuration.linear_step_size == pb.CapacitySize(type="INSTANCE_COUNT", value=1)
    assert not policy.HasField("maximum_execution_timeout_in_seconds")
    assert not control.updates[-1].deployment_config.HasField("auto_rollback_configuration")


def test_rolling_update_and_retained_properties_reach_the_server(fake):
    sm, control = fake
    sm.update_endpoint(
        EndpointName="ab", EndpointConfigName="c3", RetainAllVariantProperties=True,
        ExcludeRetainedVariantProperties=[{"VariantPropertyType": "DesiredWeight"},
                                          {"VariantPropertyType": "DataCaptureConfig"}],
        DeploymentConfig={"RollingUpdatePolicy": {
            "MaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": 50}, "WaitIntervalInSeconds": 30,
            "MaximumExecutionTimeoutInSeconds": 3600,
            "RollbackMaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 4}}},
        RetainDeploymentConfig=False,
    )
    request = control.updates[-1]
    assert request.retain_all_variant_properties
    assert [p.variant_property_type for p in request.exclude_retained_variant_properties] == [
        "DesiredWeight", "DataCaptureConfig"]
    rolling = request.deployment_config.rolling_update_policy
    assert rolling.maximum_batch_size == pb.CapacitySize(type="CAPACITY_PERCENT", value=50)
    assert rolling.wait_interval_in_seconds == 30 and rolling.maximum_execution_timeout_in_seconds == 3600
    assert rolling.rollback_maximum_batch_size == pb.CapacitySize(type="INSTANCE_COUNT", value=4)
    assert not request.deployment_config.HasField("blue_green_update_policy")


def test_plain_update_sends_no_deployment_config(fake):
    sm, control = fake
    sm.update_endpoint(EndpointName="ab", EndpointConfigName="c4", RetainDeploymentConfig=True)
    request = control.updates[-1]
    assert not request.HasField("deployment_config") and request.retain_deployment_config


def test_describe_shows_pending_deployment_and_last_config(fake):
    sm, _ = fake
    response = sm.describe_endpoint(EndpointName="updating")
    assert response["EndpointStatus"] == "Updating"
    assert response["PendingDeploymentSummary"] == {
        "EndpointConfigName": "ab-winner", "StartTime": STARTED,
        "ProductionVariants": [{
            "VariantName": "Variant2", "CurrentWeight": 1.0, "DesiredWeight": 1.0, "CurrentInstanceCount": 1,
            "DesiredInstanceCount": 1, "VariantStatus": [{"Status": "Baking", "StartTime": STARTED}]}],
    }
    assert response["LastDeploymentConfig"] == {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 60,
                                            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
            "TerminationWaitInSeconds": 30},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "ab-5xx"}]},
    }


def test_describe_rolling_last_config(fake):
    sm, _ = fake
    response = sm.describe_endpoint(EndpointName="rolling")
    assert response["LastDeploymentConfig"] == {"RollingUpdatePolicy": {
        "MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 2}, "WaitIntervalInSeconds": 5,
        "MaximumExecutionTimeoutInSeconds": 900}}
    assert "PendingDeploymentSummary" not in response


@pytest.mark.parametrize("endpoint", ["ab", "empty"])
def test_describe_without_deployment_has_neither_key(fake, endpoint):
    sm, _ = fake
    response = sm.describe_endpoint(EndpointName=endpoint)
    assert "LastDeploymentConfig" not in response and "PendingDeploymentSummary" not in response


def _problems(**params) -> str:
    sm = mve.client("sagemaker", address=NOWHERE)
    with pytest.raises(ParamValidationError) as caught:
        sm.update_endpoint(EndpointName="ab", EndpointConfigName="c", **params)
    return caught.value.report


def test_wrong_types_and_unknown_keys_are_refused():
    report = _problems(
        RetainAllVariantProperties="yes",
        ExcludeRetainedVariantProperties=[{"Property": "DesiredWeight"}],
        DeploymentConfig={"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": "60",
                                            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10.5}},
            "TerminationWait": 5}},
    )
    assert "Invalid type for parameter RetainAllVariantProperties, value: 'yes'" in report
    assert 'Missing required parameter in ExcludeRetainedVariantProperties[0]: "VariantPropertyType"' in report
    assert 'Unknown parameter in ExcludeRetainedVariantProperties[0]: "Property"' in report
    assert ("Invalid type for parameter "
            "DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration.WaitIntervalInSeconds") in report
    assert "DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration.CanarySize.Value, value: 10.5" in report
    assert ('Unknown parameter in DeploymentConfig.BlueGreenUpdatePolicy: "TerminationWait", must be one of: '
            "TrafficRoutingConfiguration, TerminationWaitInSeconds, MaximumExecutionTimeoutInSeconds") in report


def test_required_members_of_each_policy():
    report = _problems(DeploymentConfig={
        "BlueGreenUpdatePolicy": {"TerminationWaitInSeconds": 0},
        "RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "INSTANCE_COUNT"}},
    })
    assert 'Missing required parameter in DeploymentConfig.BlueGreenUpdatePolicy: "TrafficRoutingConfiguration"' in report
    assert 'Missing required parameter in DeploymentConfig.RollingUpdatePolicy: "WaitIntervalInSeconds"' in report
    assert 'Missing required parameter in DeploymentConfig.RollingUpdatePolicy.MaximumBatchSize: "Value"' in report


def test_minimums_botocore_checks():
    report = _problems(DeploymentConfig={
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": -1,
                                            "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 0}},
            "TerminationWaitInSeconds": -5, "MaximumExecutionTimeoutInSeconds": 599},
        "AutoRollbackConfiguration": {"Alarms": []},
    })
    path = "DeploymentConfig.BlueGreenUpdatePolicy"
    assert (f"Invalid value for parameter {path}.TrafficRoutingConfiguration.WaitIntervalInSeconds, value: -1, "
            "valid min value: 0") in report
    assert f"Invalid value for parameter {path}.TrafficRoutingConfiguration.CanarySize.Value, value: 0, " in report
    assert f"Invalid value for parameter {path}.TerminationWaitInSeconds, value: -5, valid min value: 0" in report
    assert f"Invalid value for parameter {path}.MaximumExecutionTimeoutInSeconds, value: 599, valid min value: 600" in report
    assert ("Invalid length for parameter DeploymentConfig.AutoRollbackConfiguration.Alarms, value: 0, "
            "valid min length: 1") in report
    assert "Invalid length for parameter DeploymentConfig.AutoRollbackConfiguration.Alarms[0].AlarmName" in _problems(
        DeploymentConfig={"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": ""}]}})


def test_maximums_and_enum_values_are_left_to_the_server():
    # botocore checks neither (SageMaker answers ValidationException); a call that passes
    # validation here fails only because nothing listens.
    sm = mve.client("sagemaker", address=NOWHERE)
    with pytest.raises(mve.sdk.EndpointConnectionError):
        sm.update_endpoint(EndpointName="ab", EndpointConfigName="c", DeploymentConfig={
            "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
                "Type": "SOMETIMES", "WaitIntervalInSeconds": 7200}, "MaximumExecutionTimeoutInSeconds": 99999}})
