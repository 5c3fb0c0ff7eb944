"""``mve autoscaling``, and the autoscaling parts of ``mve endpoint describe`` and ``mve top``: the pure
parts without a server, the CLI against in-test servers (one with ApplicationAutoScaling, one without)."""

from __future__ import annotations

import argparse
import json
from concurrent import futures
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import timestamp_pb2

from mve._proto import autoscaling_pb2 as pb
from mve._proto import autoscaling_pb2_grpc, control_pb2, control_pb2_grpc, metrics_pb2, metrics_pb2_grpc
from mve.cli import main
from mve.commands import UsageError
from mve.commands_autoscaling import filters_of, parse_suspended_state, scaling_policy_params, target_of
from mve.commands_autoscaling_output import policy_summary
from mve.errors import ValidationError, to_status
from mve.scaling_view import activity_rows, change_text, target_rows, variant_of
from mve.top import render

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
NS, DIM = "sagemaker", "sagemaker:variant:DesiredInstanceCount"


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _activity(resource: str, minutes: int, description: str, status: str = "Successful") -> dict:
    return {"ActivityId": f"{resource}-{minutes}", "ServiceNamespace": NS, "ResourceId": resource,
            "ScalableDimension": DIM, "Description": description, "Cause": f"cause {minutes}",
            "StartTime": T0 + timedelta(minutes=minutes), "StatusCode": status}


# ---------------------------------------------------------------- pure


def test_variant_and_change_text():
    assert variant_of("endpoint/ab/variant/Variant2") == "Variant2"
    assert variant_of("endpoint/a/variant/b/variant/c") == "c" and variant_of("table/x") == "table/x"
    assert change_text("Setting desired instance count from 1 to 3.") == "1→3"
    assert change_text("Setting desired instance count to 2.") == "→2"
    assert change_text("Nothing to say") == "Nothing to say"


def test_activity_rows_are_the_newest_first_and_limited():
    activities = [_activity("endpoint/ab/variant/V1", 1, "from 1 to 2"),
                  _activity("endpoint/ab/variant/V2", 5, "from 3 to 2", "InProgress"),
                  _activity("endpoint/ab/variant/V1", 3, "to 4")]
    assert activity_rows(activities, 2) == [
        [T0 + timedelta(minutes=5), "V2", "3→2", "InProgress", "cause 5"],
        [T0 + timedelta(minutes=3), "V1", "→4", "Successful", "cause 3"]]
    targets = [{"ResourceId": "endpoint/ab/variant/V2", "MinCapacity": 1, "MaxCapacity": 3,
                "SuspendedState": {"DynamicScalingInSuspended": True, "ScheduledScalingSuspended": True}},
               {"ResourceId": "endpoint/ab/variant/V1", "MinCapacity": 2, "MaxCapacity": 4, "SuspendedState": {}}]
    assert target_rows(targets) == [["V1", 2, 4, "-"], ["V2", 1, 3, "scale-in, scheduled"]]


def test_policy_summary():
    assert policy_summary({"TargetTrackingScalingPolicyConfiguration": {
        "TargetValue": 70.0, "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "ScaleOutCooldown": 60, "ScaleInCooldown": 300, "DisableScaleIn": True}}) == (
        "SageMakerVariantInvocationsPerInstance = 70; out 60s, in 300s; scale-in disabled")
    assert policy_summary({"TargetTrackingScalingPolicyConfiguration": {
        "TargetValue": 2000.0, "CustomizedMetricSpecification": {"MetricName": "ModelLatency", "Statistic": "Average"},
        "DisableScaleIn": False}}) == "Average(ModelLatency) = 2000"
    assert policy_summary({"StepScalingPolicyConfiguration": {
        "AdjustmentType": "ChangeInCapacity", "Cooldown": 60, "StepAdjustments": [
            {"MetricIntervalUpperBound": 0.0, "ScalingAdjustment": -1},
            {"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 10.0, "ScalingAdjustment": 1},
            {"MetricIntervalLowerBound": 10.0, "ScalingAdjustment": 2}]}}) == (
        "ChangeInCapacity: [-inf, 0) -1, [0, 10) +1, [10, +inf) +2; cooldown 60s")
    assert policy_summary({}) == "-"


def _args(**given) -> argparse.Namespace:
    defaults = dict(resource_id=None, resource_ids=None, endpoint=None, variant=None,
                    target_tracking_scaling_policy_configuration=None, step_scaling_policy_configuration=None,
                    target_value=None, predefined_metric=None, scale_in_cooldown=None, scale_out_cooldown=None,
                    disable_scale_in=False, policy_type=None)
    return argparse.Namespace(**{**defaults, **given})


def test_resource_shortcuts():
    assert target_of(_args(endpoint="ab", variant=["Variant2"])) == "endpoint/ab/variant/Variant2"
    assert target_of(_args(resource_id="endpoint/x/variant/y")) == "endpoint/x/variant/y"
    for bad in (_args(), _args(endpoint="ab"), _args(resource_id="r", endpoint="ab", variant=["V"])):
        with pytest.raises(UsageError):
            target_of(bad)
    assert filters_of(_args(endpoint="ab", variant=["V1", "V2"])) == (
        ["endpoint/ab/variant/V1", "endpoint/ab/variant/V2"], None)
    assert filters_of(_args(endpoint="ab")) == ([], "endpoint/ab/variant/")
    assert filters_of(_args(resource_ids=["r1", "r2"])) == (["r1", "r2"], None)
    assert filters_of(_args()) == ([], None)
    with pytest.raises(UsageError):
        filters_of(_args(variant=["V1"]))


def test_scaling_policy_params_from_flags_or_json(tmp_path):
    assert scaling_policy_params(_args(target_value=70.0, scale_in_cooldown=300, scale_out_cooldown=60)) == {
        "PolicyType": "TargetTrackingScaling", "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 70.0, "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleOutCooldown": 60, "ScaleInCooldown": 300}}
    step = {"AdjustmentType": "ChangeInCapacity", "StepAdjustments": [{"MetricIntervalLowerBound": 0,
                                                                        "ScalingAdjustment": 1}]}
    path = tmp_path / "step.json"
    path.write_text(json.dumps(step))
    assert scaling_policy_params(_args(step_scaling_policy_configuration=f"file://{path}")) == {
        "PolicyType": "StepScaling", "StepScalingPolicyConfiguration": step}
    for bad in (_args(), _args(scale_in_cooldown=5), _args(target_value=1.0, step_scaling_policy_configuration="{}"),
                _args(target_tracking_scaling_policy_configuration="[1]"),
                _args(target_tracking_scaling_policy_configuration="{", policy_type="StepScaling"),
                _args(target_tracking_scaling_policy_configuration='{"TargetValue": 1}',
                      step_scaling_policy_configuration="{}")):
        with pytest.raises(UsageError):
            scaling_policy_params(bad)
    assert parse_suspended_state("DynamicScalingInSuspended=true,ScheduledScalingSuspended=False") == {
        "DynamicScalingInSuspended": True, "ScheduledScalingSuspended": False}
    assert parse_suspended_state('{"DynamicScalingOutSuspended": true}') == {"DynamicScalingOutSuspended": True}
    with pytest.raises(UsageError):
        parse_suspended_state("DynamicScalingInSuspended=yes")


def test_top_renders_activities_under_the_variants_only_when_there_are_some():
    from io import StringIO

    from rich.console import Console

    figures = {"EndpointName": "ab", "EndpointStatus": "InService", "WindowSeconds": 10, "Variants": []}

    def text(value) -> str:
        screen = StringIO()
        Console(file=screen, width=200).print(value)
        return screen.getvalue()

    assert "scaling" not in text(render(figures, T0, T0 + timedelta(seconds=10)))
    figures["ScalingActivities"] = [_activity("endpoint/ab/variant/V1", m, f"from {m} to {m + 1}") for m in range(5)]
    out = text(render(figures, T0, T0 + timedelta(seconds=10)))
    assert "Recent scaling activities" in out and "4→5" in out and "2→3" in out and "1→2" not in out


# ---------------------------------------------------------------- against in-test servers


class FakeControl(control_pb2_grpc.EndpointControlServicer):
    def DescribeEndpoint(self, request, context):  # noqa: N802 - gRPC's name
        return control_pb2.DescribeEndpointResponse(
            endpoint_name=request.endpoint_name, endpoint_status="InService", production_variants=[
                control_pb2.ProductionVariantSummary(variant_name="V1", current_weight=1.0, current_instance_count=1),
                control_pb2.ProductionVariantSummary(variant_name="V2", current_weight=1.0, current_instance_count=3)])


class FakeCloudWatch(metrics_pb2_grpc.CloudWatchServicer):
    def GetMetricData(self, request, context):  # noqa: N802
        return metrics_pb2.GetMetricDataResponse()


class FakeAutoScaling(autoscaling_pb2_grpc.ApplicationAutoScalingServicer):
    """Targets and activities of endpoint ab (V1, V2) and of another endpoint; describes in pages of one."""

    def __init__(self):
        self.requests: dict[str, list] = {}

    def _log(self, name: str, request) -> int:
        self.requests.setdefault(name, []).append(request)
        return int(getattr(request, "next_token", "") or 0)

    def RegisterScalableTarget(self, request, context):  # noqa: N802
        self._log("RegisterScalableTarget", request)
        if request.resource_id.startswith("endpoint/nope/"):
            context.abort_with_status(to_status(ValidationError(
                "Could not find endpoint nope", reason="ValidationException")))
        return pb.RegisterScalableTargetResponse(scalable_target_arn=f"arn:{request.resource_id}")

    def DeregisterScalableTarget(self, request, context):  # noqa: N802
        self._log("DeregisterScalableTarget", request)
        return pb.DeregisterScalableTargetResponse()

    def PutScalingPolicy(self, request, context):  # noqa: N802
        self._log("PutScalingPolicy", request)
        return pb.PutScalingPolicyResponse(policy_arn=f"arn:policy/{request.policy_name}",
                                           alarms=[pb.Alarm(alarm_name="TargetTracking-AlarmHigh", alarm_arn="a")])

    def DeleteScalingPolicy(self, request, context):  # noqa: N802
        self._log("DeleteScalingPolicy", request)
        return pb.DeleteScalingPolicyResponse()

    def DescribeScalableTargets(self, request, context):  # noqa: N802
        page = self._log("DescribeScalableTargets", request)
        ids = list(request.resource_ids) or ["endpoint/ab/variant/V1", "endpoint/other/variant/X",
                                             "endpoint/ab/variant/V2"]
        targets = [pb.ScalableTarget(service_namespace=NS, resource_id=rid, scalable_dimension=DIM, min_capacity=1,
                                     max_capacity=3 + i, creation_time=_ts(T0)) for i, rid in enumerate(ids)]
        return pb.DescribeScalableTargetsResponse(scalable_targets=targets[page:page + 1],
                                                  next_token=str(page + 1) if page + 1 < len(targets) else "")

    def DescribeScalingPolicies(self, request, context):  # noqa: N802
        self._log("DescribeScalingPolicies", request)
        return pb.DescribeScalingPoliciesResponse(scaling_policies=[pb.ScalingPolicy(
            policy_arn="arn:p", policy_name="tt", service_namespace=NS, resource_id="endpoint/ab/variant/V2",
            scalable_dimension=DIM, policy_type="TargetTrackingScaling",
            target_tracking_scaling_policy_configuration=pb.TargetTrackingScalingPolicyConfiguration(
                target_value=70.0, scale_out_cooldown=60, scale_in_cooldown=300,
                predefined_metric_specification=pb.PredefinedMetricSpecification(
                    predefined_metric_type="SageMakerVariantInvocationsPerInstance")),
            creation_time=_ts(T0))])

    def DescribeScalingActivities(self, request, context):  # noqa: N802
        page = self._log("DescribeScalingActivities", request)
        if request.resource_id:
            # V2 scaled at minutes 10..16, V1 at 0..6: newest first, as Application Auto Scaling answers
            base = 10 if request.resource_id.endswith("V2") else 0
            count = min(request.max_results or 7, 7)
            return pb.DescribeScalingActivitiesResponse(scaling_activities=[pb.ScalingActivity(
                activity_id=f"{request.resource_id}-{m}", service_namespace=NS, resource_id=request.resource_id,
                scalable_dimension=DIM, description=f"Setting desired instance count from {m} to {m + 1}.",
                cause=f"alarm {m}", start_time=_ts(T0 + timedelta(minutes=base + m)), status_code="Successful")
                for m in range(6, 6 - count, -1)])
        resources = ["endpoint/ab/variant/V1", "endpoint/other/variant/X"]
        return pb.DescribeScalingActivitiesResponse(scaling_activities=[pb.ScalingActivity(
            activity_id=str(page), service_namespace=NS, resource_id=resources[page], scalable_dimension=DIM,
            description="Setting desired instance count to 2.", cause="c", start_time=_ts(T0),
            end_time=_ts(T0 + timedelta(seconds=20)), status_code="Successful")],
            next_token="1" if page == 0 else "")


def _serve(*, autoscaling: bool):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    control_pb2_grpc.add_EndpointControlServicer_to_server(FakeControl(), server)
    metrics_pb2_grpc.add_CloudWatchServicer_to_server(FakeCloudWatch(), server)
    fake = FakeAutoScaling()
    if autoscaling:
        autoscaling_pb2_grpc.add_ApplicationAutoScalingServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}", fake


@pytest.fixture(scope="module")
def control_plane():
    server, address, fake = _serve(autoscaling=True)
    yield address, fake
    server.stop(grace=None)


@pytest.fixture(scope="module")
def old_control_plane():
    server, address, _ = _serve(autoscaling=False)
    yield address
    server.stop(grace=None)


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")


def test_register_with_the_endpoint_shortcut_and_defaults(control_plane, capsys):
    address, fake = control_plane
    assert main(["autoscaling", "register-scalable-target", "--endpoint", "ab", "--variant", "Variant2",
                 "--min-capacity", "1", "--max-capacity", "3", "--control-plane", address]) == 0
    request = fake.requests["RegisterScalableTarget"][-1]
    assert (request.service_namespace, request.resource_id, request.scalable_dimension) == (
        NS, "endpoint/ab/variant/Variant2", DIM)
    assert (request.min_capacity, request.max_capacity) == (1, 3) and not request.HasField("suspended_state")
    assert "registered endpoint/ab/variant/Variant2 (min 1, max 3): arn:endpoint/ab/variant/Variant2" in (
        capsys.readouterr().out)

    assert main(["application-autoscaling", "register-scalable-target", "--resource-id", "endpoint/ab/variant/V1",
                 "--max-capacity", "5", "--suspended-state", "DynamicScalingInSuspended=true", "--json",
                 "--control-plane", address]) == 0
    request = fake.requests["RegisterScalableTarget"][-1]
    assert not request.HasField("min_capacity") and request.max_capacity == 5
    assert request.suspended_state.dynamic_scaling_in_suspended
    assert json.loads(capsys.readouterr().out) == {"ScalableTargetARN": "arn:endpoint/ab/variant/V1"}


def test_put_scaling_policy_shortcut_and_step_json(control_plane, capsys):
    address, fake = control_plane
    assert main(["autoscaling", "put-scaling-policy", "--policy-name", "tt", "--endpoint", "ab", "--variant", "V2",
                 "--target-value", "70", "--scale-in-cooldown", "300", "--scale-out-cooldown", "60",
                 "--control-plane", address]) == 0
    request = fake.requests["PutScalingPolicy"][-1]
    config = request.target_tracking_scaling_policy_configuration
    assert (request.policy_name, request.policy_type, request.resource_id) == (
        "tt", "TargetTrackingScaling", "endpoint/ab/variant/V2")
    assert (config.target_value, config.scale_in_cooldown, config.scale_out_cooldown) == (70.0, 300, 60)
    assert config.predefined_metric_specification.predefined_metric_type == "SageMakerVariantInvocationsPerInstance"
    assert not request.HasField("step_scaling_policy_configuration")
    out = capsys.readouterr().out
    assert "put scaling policy tt: arn:policy/tt" in out and "TargetTracking-AlarmHigh" in out

    step = '{"AdjustmentType": "ChangeInCapacity", "StepAdjustments": [{"MetricIntervalLowerBound": 0, ' \
           '"ScalingAdjustment": 1}], "Cooldown": 120}'
    assert main(["autoscaling", "put-scaling-policy", "--policy-name", "step", "--resource-id",
                 "endpoint/ab/variant/V1", "--step-scaling-policy-configuration", step, "--json",
                 "--control-plane", address]) == 0
    request = fake.requests["PutScalingPolicy"][-1]
    config = request.step_scaling_policy_configuration
    assert request.policy_type == "StepScaling" and config.cooldown == 120 and not config.HasField(
        "min_adjustment_magnitude")
    assert not config.step_adjustments[0].HasField("metric_interval_upper_bound")
    assert json.loads(capsys.readouterr().out)["PolicyARN"] == "arn:policy/step"


def test_describe_scalable_targets_filters(control_plane, capsys):
    address, fake = control_plane
    assert main(["autoscaling", "describe-scalable-targets", "--endpoint", "ab", "--variant", "V1", "V2", "--json",
                 "--control-plane", address]) == 0
    request = fake.requests["DescribeScalableTargets"][-1]
    assert list(request.resource_ids) == ["endpoint/ab/variant/V1", "endpoint/ab/variant/V2"]
    assert request.scalable_dimension == DIM and request.service_namespace == NS
    response = json.loads(capsys.readouterr().out)
    assert [t["ResourceId"] for t in response["ScalableTargets"]] == ["endpoint/ab/variant/V1",
                                                                      "endpoint/ab/variant/V2"]
    assert "NextToken" not in response and response["ScalableTargets"][0]["CreationTime"] == "2026-03-01T12:00:00+00:00"

    # --endpoint alone: the whole namespace, no dimension filter (it needs a ResourceId), kept to the endpoint
    assert main(["autoscaling", "describe-scalable-targets", "--endpoint", "ab", "--control-plane", address]) == 0
    request = fake.requests["DescribeScalableTargets"][-1]
    assert list(request.resource_ids) == [] and request.scalable_dimension == ""
    out = capsys.readouterr().out
    assert "endpoint/ab/variant/V2" in out and "endpoint/other" not in out


def test_describe_policies_and_activities(control_plane, capsys):
    address, fake = control_plane
    assert main(["autoscaling", "describe-scaling-policies", "--endpoint", "ab", "--variant", "V2",
                 "--policy-names", "tt", "--control-plane", address]) == 0
    request = fake.requests["DescribeScalingPolicies"][-1]
    assert (request.resource_id, request.scalable_dimension, list(request.policy_names)) == (
        "endpoint/ab/variant/V2", DIM, ["tt"])
    assert "SageMakerVariantInvocationsPerInstance = 70; out 60s, in 300s" in capsys.readouterr().out

    assert main(["autoscaling", "describe-scaling-activities", "--json", "--control-plane", address]) == 0
    response = json.loads(capsys.readouterr().out)
    assert [a["ActivityId"] for a in response["ScalingActivities"]] == ["0", "1"] and "NextToken" not in response
    assert main(["autoscaling", "describe-scaling-activities", "--endpoint", "ab", "--control-plane", address]) == 0
    out = capsys.readouterr().out
    assert "→2" in out and "endpoint/ab/variant/V1" in out and "endpoint/other" not in out


def test_deregister_and_delete_policy(control_plane, capsys):
    address, fake = control_plane
    assert main(["autoscaling", "deregister-scalable-target", "--endpoint", "ab", "--variant", "V1",
                 "--control-plane", address]) == 0
    assert fake.requests["DeregisterScalableTarget"][-1].resource_id == "endpoint/ab/variant/V1"
    assert main(["autoscaling", "delete-scaling-policy", "--policy-name", "tt", "--endpoint", "ab", "--variant", "V2",
                 "--scalable-dimension", "sagemaker:variant:DesiredProvisionedConcurrency", "--json",
                 "--control-plane", address]) == 0
    request = fake.requests["DeleteScalingPolicy"][-1]
    assert (request.policy_name, request.scalable_dimension) == ("tt", "sagemaker:variant:DesiredProvisionedConcurrency")
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == {}


@pytest.mark.parametrize("argv", [
    ["register-scalable-target", "--endpoint", "ab"],
    ["register-scalable-target", "--resource-id", "r", "--endpoint", "ab", "--variant", "V"],
    ["put-scaling-policy", "--policy-name", "p", "--endpoint", "ab", "--variant", "V"],
    ["put-scaling-policy", "--policy-name", "p", "--endpoint", "ab", "--variant", "V", "--target-value", "1",
     "--step-scaling-policy-configuration", "{}"],
    ["describe-scaling-policies", "--variant", "V"],
])
def test_usage_errors_exit_2_before_any_call(argv, capsys):
    assert main(["autoscaling", *argv, "--control-plane", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.startswith("UsageError: ")


@pytest.mark.parametrize("argv", [
    ["register-scalable-target", "--min-capacity", "-1"],
    ["describe-scalable-targets", "--max-results", "0"],
    ["put-scaling-policy", "--target-value", "x", "--policy-name", "p"],
    ["delete-scaling-policy"],
])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["autoscaling", *argv])
    assert caught.value.code == 2


def test_service_error_prints_the_code_and_exits_1(control_plane, capsys):
    address, _ = control_plane
    assert main(["autoscaling", "register-scalable-target", "--endpoint", "nope", "--variant", "V",
                 "--min-capacity", "1", "--max-capacity", "2", "--control-plane", address]) == 1
    assert capsys.readouterr().err.startswith("ValidationException: Could not find endpoint nope")


def test_endpoint_describe_shows_targets_and_the_newest_activities(control_plane, capsys):
    address, fake = control_plane
    assert main(["endpoint", "describe", "ab", "--control-plane", address]) == 0
    out = capsys.readouterr().out
    assert "Scalable targets" in out and "Scaling activities" in out
    requests = fake.requests["DescribeScalingActivities"][-2:]
    assert [(r.resource_id, r.max_results) for r in requests] == [("endpoint/ab/variant/V1", 5),
                                                                  ("endpoint/ab/variant/V2", 5)]
    assert list(fake.requests["DescribeScalableTargets"][-1].resource_ids) == [
        "endpoint/ab/variant/V1", "endpoint/ab/variant/V2"]
    activities = out.split("Scaling activities", 1)[1]
    # the five newest over both variants: all V2's (minutes 16..12), none of V1's
    assert "6→7" in activities and "2→3" in activities and "1→2" not in activities and " V1 " not in activities

    assert main(["endpoint", "describe", "ab", "--json", "--control-plane", address]) == 0
    assert "ScalableTargets" not in json.loads(capsys.readouterr().out)


def test_endpoint_describe_without_autoscaling_on_the_control_plane(old_control_plane, capsys):
    assert main(["endpoint", "describe", "ab", "--control-plane", old_control_plane]) == 0
    captured = capsys.readouterr()
    assert "InService" in captured.out and "Scalable targets" not in captured.out and captured.err == ""


def test_top_shows_the_three_newest_activities(control_plane, old_control_plane, capsys):
    address, fake = control_plane
    assert main(["top", "ab", "--once", "--json", "--control-plane", address]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert [a["ActivityId"] for a in figures["ScalingActivities"]] == [
        "endpoint/ab/variant/V2-6", "endpoint/ab/variant/V2-5", "endpoint/ab/variant/V2-4"]
    assert [r.max_results for r in fake.requests["DescribeScalingActivities"][-2:]] == [3, 3]
    assert main(["top", "ab", "--once", "--control-plane", address]) == 0
    out = capsys.readouterr().out
    assert "Recent scaling activities" in out and "6→7" in out and "3→4" not in out

    assert main(["top", "ab", "--once", "--json", "--control-plane", old_control_plane]) == 0
    assert "ScalingActivities" not in json.loads(capsys.readouterr().out)
