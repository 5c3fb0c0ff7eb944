"""``mve endpoint update``: flags to UpdateEndpoint parameters, --wait's outcome, describe's pending deployment."""

from __future__ import annotations

import json
from concurrent import futures
from functools import lru_cache
from datetime import datetime, timezone

import grpc
import pytest
from google.protobuf import timestamp_pb2

from mve import commands_update
from mve._proto import control_pb2 as pb
from mve._proto import control_pb2_grpc
from mve.cli import build_parser, main
from mve.commands import UsageError
from mve.commands_output import deployment_text

STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@lru_cache(maxsize=1)
def _parser():
    return build_parser()  # building it imports every command module: once is enough


def _params(*flags: str) -> dict:
    return commands_update.update_params(_parser().parse_args(["endpoint", "update", "ab", *flags]))


def _blue_green(routing: dict, **policy) -> dict:
    return {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing, **policy}}


# ---------------------------------------------------------------- flags -> request


def test_no_policy_flag_sends_no_deployment_config():
    assert _params("--config", "c2") == {"EndpointName": "ab", "EndpointConfigName": "c2"}


def test_canary_percent_with_bake_and_alarms():
    params = _params("--config", "c2", "--canary", "10%", "--bake", "60", "--termination-wait", "30",
                     "--max-time", "1800", "--rollback-alarm", "ab-5xx", "--rollback-alarm", "ab-p99")
    assert params["DeploymentConfig"] == {
        **_blue_green({"Type": "CANARY", "WaitIntervalInSeconds": 60,
                       "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
                      TerminationWaitInSeconds=30, MaximumExecutionTimeoutInSeconds=1800),
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "ab-5xx"}, {"AlarmName": "ab-p99"}]},
    }


def test_canary_and_linear_instance_counts():
    assert _params("--config", "c", "--canary", "2")["DeploymentConfig"] == _blue_green(
        {"Type": "CANARY", "WaitIntervalInSeconds": 0, "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 2}})
    assert _params("--config", "c", "--linear", "25%", "--bake", "5")["DeploymentConfig"] == _blue_green(
        {"Type": "LINEAR", "WaitIntervalInSeconds": 5, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25}})


def test_alarm_alone_is_all_at_once_blue_green():
    assert _params("--config", "c", "--rollback-alarm", "a")["DeploymentConfig"] == {
        **_blue_green({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}),
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "a"}]}}
    assert _params("--config", "c", "--bake", "120")["DeploymentConfig"] == _blue_green(
        {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 120})


def test_rolling_with_rollback_batch():
    params = _params("--config", "c", "--rolling", "50%", "--bake", "30", "--rollback-batch", "1",
                     "--max-time", "3600", "--rollback-alarm", "a")
    assert params["DeploymentConfig"] == {
        "RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": 50}, "WaitIntervalInSeconds": 30,
                                "MaximumExecutionTimeoutInSeconds": 3600,
                                "RollbackMaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1}},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "a"}]}}


def test_retained_properties_and_deployment_config():
    params = _params("--config", "c", "--retain-all-variant-properties", "--exclude-retained", "DesiredWeight",
                     "--exclude-retained", "DataCaptureConfig", "--retain-deployment-config")
    assert params == {"EndpointName": "ab", "EndpointConfigName": "c", "RetainAllVariantProperties": True,
                      "ExcludeRetainedVariantProperties": [{"VariantPropertyType": "DesiredWeight"},
                                                           {"VariantPropertyType": "DataCaptureConfig"}],
                      "RetainDeploymentConfig": True}


@pytest.mark.parametrize("flags", [
    ["--canary", "10%", "--linear", "10%"], ["--canary", "1", "--rolling", "1"], ["--linear", "1", "--rolling", "1"],
    ["--canary", "0"], ["--canary", "150%"], ["--canary", "ten"], ["--rolling", "2.5"], ["--bake", "-1"],
    ["--exclude-retained", "InstanceType"],
])
def test_bad_flags_are_argparse_errors(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["endpoint", "update", "ab", "--config", "c", *flags])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--rollback-batch", "1"], "--rollback-batch needs --rolling"),
    (["--rolling", "1", "--termination-wait", "10"], "--termination-wait is for blue/green"),
])
def test_flags_that_do_not_fit_the_policy(flags, message):
    with pytest.raises(UsageError, match=message):
        _params("--config", "c", *flags)


def test_deployment_text():
    assert deployment_text({**_blue_green({"Type": "CANARY", "WaitIntervalInSeconds": 60,
                                           "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
                                          TerminationWaitInSeconds=0),
                            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "ab-5xx"}]}}) == (
        "blue/green CANARY 10%, bake 60s, termination wait 0s; rollback alarms: ab-5xx")
    assert deployment_text({"RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1},
                                                    "WaitIntervalInSeconds": 5}}) == (
        "rolling, batches of 1 instance, bake 5s")


# ---------------------------------------------------------------- against an in-test server


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _variant(name: str, status: str = "") -> pb.ProductionVariantSummary:
    return pb.ProductionVariantSummary(
        variant_name=name, current_weight=1, desired_weight=1, current_instance_count=1, desired_instance_count=1,
        variant_status=[pb.ProductionVariantStatus(status=status)] if status else [])


def _description(name: str, status: str, config: str, pending: str = "", reason: str = "", modified: int = 0):
    response = pb.DescribeEndpointResponse(
        endpoint_name=name, endpoint_arn=f"arn:mve:sagemaker:local:endpoint/{name}", endpoint_config_name=config,
        endpoint_status=status, failure_reason=reason, creation_time=_ts(STARTED),
        last_modified_time=_ts(STARTED.replace(minute=modified)),
        production_variants=[_variant("Variant1"), _variant("Variant2")])
    if pending:
        response.pending_deployment_summary.CopyFrom(pb.PendingDeploymentSummary(
            endpoint_config_name="ab-winner", start_time=_ts(STARTED), production_variants=[_variant("Variant2", pending)]))
    return response


# Each endpoint's DescribeEndpoint answers in turn (the last repeats); the first is the one before the update.
SCRIPTS = {
    "good": [_description("good", "InService", "ab-config"),
             _description("good", "Updating", "ab-config", pending="Creating", modified=1),
             _description("good", "Updating", "ab-config", pending="Baking", modified=1),
             _description("good", "InService", "ab-winner", modified=2)],
    "bad": [_description("bad", "InService", "ab-config"),
            _description("bad", "Updating", "ab-config", pending="Baking", modified=1),
            _description("bad", "RollingBack", "ab-config", modified=1),
            _description("bad", "InService", "ab-config", reason="Alarm ab-5xx went into ALARM; rolled back",
                         modified=2)],
    "stuck": [_description("stuck", "InService", "ab-config"),
              _description("stuck", "UpdateRollbackFailed", "ab-config", reason="could not restore", modified=1)],
}


class FakeControl(control_pb2_grpc.EndpointControlServicer):
    def __init__(self):
        self.updates: list = []
        self.calls: dict[str, int] = {}

    def UpdateEndpoint(self, request, context):  # noqa: N802 - gRPC's name
        self.updates.append(request)
        return pb.UpdateEndpointResponse(endpoint_arn=f"arn:mve:sagemaker:local:endpoint/{request.endpoint_name}")

    def DescribeEndpoint(self, request, context):  # noqa: N802
        script = SCRIPTS.get(request.endpoint_name) or [SCRIPTS["good"][2]]
        index = self.calls.get(request.endpoint_name, 0)
        self.calls[request.endpoint_name] = index + 1
        return script[min(index, len(script) - 1)]


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setattr(commands_update, "POLL_INTERVAL_S", 0.0)
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    control = FakeControl()
    control_pb2_grpc.add_EndpointControlServicer_to_server(control, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield f"127.0.0.1:{port}", control
    grpc_server.stop(grace=None)


def test_update_sends_the_request_and_prints_the_arn(server, capsys):
    address, control = server
    assert main(["endpoint", "update", "ab", "--config", "ab-winner", "--canary", "10%", "--bake", "60",
                 "--rollback-alarm", "ab-5xx", "--control-plane", address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"EndpointArn": "arn:mve:sagemaker:local:endpoint/ab"}
    request = control.updates[-1]
    routing = request.deployment_config.blue_green_update_policy.traffic_routing_configuration
    assert (routing.type, routing.canary_size.type, routing.canary_size.value) == ("CANARY", "CAPACITY_PERCENT", 10)
    assert [a.alarm_name for a in request.deployment_config.auto_rollback_configuration.alarms] == ["ab-5xx"]


def test_wait_ends_in_service_on_the_new_config(server, capsys):
    address, _ = server
    assert main(["endpoint", "update", "good", "--config", "ab-winner", "--wait", "--control-plane", address,
                 "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert (description["EndpointStatus"], description["EndpointConfigName"]) == ("InService", "ab-winner")


@pytest.mark.parametrize(("endpoint", "message"), [
    ("bad", "rolled back to ab-config: Alarm ab-5xx went into ALARM"),
    ("stuck", "is UpdateRollbackFailed: could not restore"),
])
def test_wait_exits_1_when_the_update_did_not_land(server, capsys, endpoint, message):
    address, _ = server
    assert main(["endpoint", "update", endpoint, "--config", "ab-winner", "--wait", "--control-plane", address]) == 1
    assert message in capsys.readouterr().err


def test_describe_shows_the_pending_deployment(server, capsys):
    address, _ = server
    assert main(["endpoint", "describe", "updating", "--control-plane", address]) == 0
    out = capsys.readouterr().out
    assert "PendingDeploymentSummary" in out and "updating to ab-winner" in out and "Baking" in out


def test_progress_line_names_each_new_variant():
    from mve.commands_output import progress_line

    description = {"EndpointStatus": "Updating", "PendingDeploymentSummary": {
        "EndpointConfigName": "ab-winner", "ProductionVariants": [
            {"VariantName": "Variant2", "CurrentInstanceCount": 1, "DesiredInstanceCount": 2,
             "VariantStatus": [{"Status": "ActivatingTraffic"}]}]}}
    assert progress_line(description) == "Updating; new ab-winner: Variant2 ActivatingTraffic 1/2"
