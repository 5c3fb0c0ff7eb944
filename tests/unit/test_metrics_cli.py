"""``mve metrics`` and ``mve top``: the figures of top without a server, the CLI against an in-test server."""

from __future__ import annotations

import json
import re
from concurrent import futures
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import timestamp_pb2

from mve._proto import control_pb2, control_pb2_grpc, metrics_pb2, metrics_pb2_grpc
from mve.cli import main
from mve.commands import UsageError
from mve.commands_metrics import all_pages, parse_dimensions
from mve.errors import ValidationError, to_status
from mve.top import top_figures, top_queries, window_bounds

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


# ---------------------------------------------------------------- top, pure


def _result(query_id: str, *values: float) -> dict:
    return {"Id": query_id, "Label": query_id, "StatusCode": "Complete", "Values": list(values),
            "Timestamps": [T0 + timedelta(seconds=10 * i) for i in range(len(values))]}


DESCRIPTION = {"EndpointName": "ab", "EndpointStatus": "InService", "ProductionVariants": [
    {"VariantName": "Variant1", "CurrentWeight": 3.0, "CurrentInstanceCount": 2},
    {"VariantName": "Variant2", "CurrentWeight": 1.0, "CurrentInstanceCount": 1},
    {"VariantName": "Idle", "CurrentWeight": 0.0, "CurrentInstanceCount": 1},
]}


def test_top_figures_from_responses():
    data = {"MetricDataResults": [
        _result("v0_inv", 150.0), _result("v0_e4", 2.0), _result("v0_e5", 0.0),
        _result("v0_p50", 1500.0), _result("v0_p99", 9000.0),
        # a window that crossed a period: counts add up, percentiles come from the newest datapoint
        _result("v1_inv", 30.0, 20.0), _result("v1_e4", 0.0, 0.0), _result("v1_e5", 1.0, 0.0),
        _result("v1_p50", 800.0, 2500.0), _result("v1_p99", 1000.0, 4000.0),
        # Idle: CloudWatch answers no datapoint for a period without samples
        _result("v2_inv"), _result("v2_p50"), _result("v2_p99"),
    ]}
    figures = top_figures(DESCRIPTION, data, window=10)
    assert figures["EndpointName"] == "ab" and figures["WindowSeconds"] == 10
    v1, v2, idle = figures["Variants"]
    assert v1 == {"VariantName": "Variant1", "Invocations": 150.0, "RequestsPerSecond": 15.0,
                  "ModelLatencyP50Ms": 1.5, "ModelLatencyP99Ms": 9.0, "Invocation4XXErrors": 2.0,
                  "Invocation5XXErrors": 0.0, "CurrentWeight": 3.0, "WeightShare": 0.75,
                  "CurrentInstanceCount": 2, "TrafficShare": 0.75}
    assert (v2["Invocations"], v2["RequestsPerSecond"], v2["TrafficShare"]) == (50.0, 5.0, 0.25)
    assert (v2["ModelLatencyP50Ms"], v2["ModelLatencyP99Ms"], v2["Invocation5XXErrors"]) == (2.5, 4.0, 1.0)
    assert idle["Invocations"] == 0.0 and idle["TrafficShare"] == 0.0 and idle["WeightShare"] == 0.0
    assert idle["ModelLatencyP50Ms"] is None and idle["Invocation4XXErrors"] == 0.0


def test_top_figures_without_traffic_or_weights():
    description = {"EndpointName": "ab", "EndpointStatus": "Creating",
                   "ProductionVariants": [{"VariantName": "V", "CurrentWeight": 0.0, "CurrentInstanceCount": 0}]}
    (row,) = top_figures(description, {"MetricDataResults": []}, window=5)["Variants"]
    assert row["TrafficShare"] is None and row["WeightShare"] is None and row["RequestsPerSecond"] == 0.0


def test_window_ends_two_seconds_back_on_a_multiple_of_the_window():
    now = T0.timestamp() + 7.5
    assert window_bounds(now, 10) == (T0 - timedelta(seconds=10), T0)
    assert window_bounds(now + 5, 10) == (T0, T0 + timedelta(seconds=10))
    assert window_bounds(now, 1) == (T0 + timedelta(seconds=4), T0 + timedelta(seconds=5))
    start, end = window_bounds(T0.timestamp() + 130, 60)
    assert (start, end) == (T0 + timedelta(seconds=60), T0 + timedelta(seconds=120))


def test_top_queries_have_valid_ids_and_the_variant_dimensions():
    queries = top_queries("ab", ["Variant-1", "v2"], 10)
    assert len(queries) == 10 and len({q["Id"] for q in queries}) == 10
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9_]*", q["Id"]) for q in queries)
    p99 = next(q for q in queries if q["Id"] == "v0_p99")["MetricStat"]
    assert p99 == {"Metric": {"Namespace": "AWS/SageMaker", "MetricName": "ModelLatency", "Dimensions": [
        {"Name": "EndpointName", "Value": "ab"}, {"Name": "VariantName", "Value": "Variant-1"}]},
        "Period": 10, "Stat": "p99"}


# ---------------------------------------------------------------- argument parsing


def test_dimensions_shorthand_and_json():
    assert parse_dimensions(["Name=EndpointName,Value=ab", "Name=VariantName,Value=v=1"]) == [
        {"Name": "EndpointName", "Value": "ab"}, {"Name": "VariantName", "Value": "v=1"}]
    assert parse_dimensions(['[{"Name": "EndpointName", "Value": "ab"}]']) == [{"Name": "EndpointName", "Value": "ab"}]
    assert parse_dimensions(["Name=VariantName"], filters=True) == [{"Name": "VariantName"}]
    for bad in ("Name=VariantName", "EndpointName=ab", "Name=a,Colour=red"):
        with pytest.raises(UsageError):
            parse_dimensions([bad])


@pytest.mark.parametrize("argv", [
    ["top", "ab", "--interval", "0"], ["top", "ab", "--window", "7"], ["top", "ab", "--window", "x"],
    ["metrics", "get-metric-statistics", "--namespace", "n", "--metric-name", "m", "--start-time", "yesterday",
     "--end-time", "0", "--period", "60"],
])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "error: argument" in capsys.readouterr().err


# ---------------------------------------------------------------- against an in-test server


class FakeControl(control_pb2_grpc.EndpointControlServicer):
    def DescribeEndpoint(self, request, context):  # noqa: N802 - gRPC's name
        return control_pb2.DescribeEndpointResponse(
            endpoint_name=request.endpoint_name, endpoint_status="InService", production_variants=[
                control_pb2.ProductionVariantSummary(variant_name="Variant1", current_weight=1.0,
                                                     current_instance_count=1),
                control_pb2.ProductionVariantSummary(variant_name="Variant2", current_weight=1.0,
                                                     current_instance_count=2)])


class FakeCloudWatch(metrics_pb2_grpc.CloudWatchServicer):
    def __init__(self):
        self.requests: list = []

    def GetMetricData(self, request, context):  # noqa: N802
        self.requests.append(request)
        page = int(request.next_token or 0)
        values = {"inv": 30.0, "p50": 2000.0, "p99": 5000.0, "e4": 1.0, "e5": 0.0}
        results = [metrics_pb2.MetricDataResult(
            id=q.id, label=q.label, timestamps=[_ts(T0 + timedelta(minutes=page))],
            values=[values.get(q.id.split("_")[-1], float(page))], status_code="Complete")
            for q in request.metric_data_queries]
        return metrics_pb2.GetMetricDataResponse(metric_data_results=results,
                                                 next_token="1" if page == 0 and len(results) == 1 else "")

    def GetMetricStatistics(self, request, context):  # noqa: N802
        context.abort_with_status(to_status(ValidationError(
            "The parameter Period must be 1, 5, 10, 30 or a multiple of 60; got 7.", reason="InvalidParameterValue")))

    def DescribeAlarms(self, request, context):  # noqa: N802
        return metrics_pb2.DescribeAlarmsResponse(metric_alarms=[metrics_pb2.MetricAlarm(
            alarm_name="high-5xx", state_value="ALARM", metric_name="Invocation5XXErrors", namespace="AWS/SageMaker",
            statistic="Sum", period=60, evaluation_periods=3, datapoints_to_alarm=2, threshold=5.0,
            comparison_operator="GreaterThanThreshold", state_updated_timestamp=_ts(T0))])


@pytest.fixture(scope="module")
def control_plane():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    control_pb2_grpc.add_EndpointControlServicer_to_server(FakeControl(), server)
    cloudwatch = FakeCloudWatch()
    metrics_pb2_grpc.add_CloudWatchServicer_to_server(cloudwatch, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", cloudwatch
    server.stop(grace=None)


def test_top_once_json(control_plane, capsys):
    address, cloudwatch = control_plane
    assert main(["top", "ab", "--once", "--json", "--window", "5", "--control-plane", address]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert [v["VariantName"] for v in figures["Variants"]] == ["Variant1", "Variant2"]
    assert figures["Variants"][0]["RequestsPerSecond"] == 6.0 and figures["Variants"][0]["TrafficShare"] == 0.5
    assert figures["Variants"][1]["ModelLatencyP99Ms"] == 5.0 and figures["Variants"][1]["CurrentInstanceCount"] == 2
    start, end = (datetime.fromisoformat(figures[k]) for k in ("StartTime", "EndTime"))
    assert end - start == timedelta(seconds=5) and end.timestamp() % 5 == 0
    request = cloudwatch.requests[-1]
    assert len(request.metric_data_queries) == 10 and request.metric_data_queries[0].metric_stat.period == 5


def test_top_once_table(control_plane, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    address, _ = control_plane
    assert main(["top", "ab", "--once", "--control-plane", address]) == 0
    out = capsys.readouterr().out
    assert "ab (InService)" in out and "Variant2" in out and "50.0%" in out


def test_get_metric_data_json_follows_every_page(control_plane, tmp_path, capsys):
    address, _ = control_plane
    queries = tmp_path / "q.json"
    queries.write_text(json.dumps([{"Id": "x", "MetricStat": {"Metric": {"Namespace": "AWS/SageMaker",
                                                                         "MetricName": "Invocations"},
                                                              "Period": 60, "Stat": "Sum"}}]))
    argv = ["metrics", "get-metric-data", "--metric-data-queries", f"file://{queries}", "--start-time",
            "2026-03-01T12:00:00Z", "--end-time", "1772370000", "--control-plane", address]
    assert main([*argv, "--json"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["MetricDataResults"] == [{"Id": "x", "Label": "", "StatusCode": "Complete", "Values": [0.0, 1.0],
                                              "Timestamps": ["2026-03-01T12:00:00+00:00", "2026-03-01T12:01:00+00:00"]}]
    assert response["Messages"] == [] and "NextToken" not in response
    assert main(argv) == 0
    assert "Timestamp" in capsys.readouterr().out


def test_describe_alarms_table_and_json(control_plane, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    address, _ = control_plane
    assert main(["metrics", "describe-alarms", "--control-plane", address]) == 0
    out = capsys.readouterr().out
    assert "high-5xx" in out and "Sum(Invocation5XXErrors) > 5" in out and "2/3 x 60s" in out
    assert main(["metrics", "describe-alarms", "--json", "--control-plane", address]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["MetricAlarms"][0]["StateValue"] == "ALARM" and response["CompositeAlarms"] == []


def test_service_error_prints_the_code_and_exits_1(control_plane, capsys):
    address, _ = control_plane
    argv = ["metrics", "get-metric-statistics", "--namespace", "AWS/SageMaker", "--metric-name", "Invocations",
            "--start-time", "0", "--end-time", "60", "--period", "7", "--statistics", "Sum", "--control-plane", address]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("InvalidParameterValue: The parameter Period must be")


def test_all_pages_joins_metric_data_per_id():
    class Pages:
        def get_paginator(self, name):
            return self

        def paginate(self, **params):
            yield {"MetricDataResults": [_result("a", 1.0)], "NextToken": "t", "Messages": []}
            yield {"MetricDataResults": [_result("a", 2.0), _result("b", 3.0)], "Messages": []}

    merged = all_pages(Pages(), "get_metric_data", {})
    assert [(r["Id"], r["Values"]) for r in merged["MetricDataResults"]] == [("a", [1.0, 2.0]), ("b", [3.0])]
    assert "NextToken" not in merged and merged["Messages"] == []


def test_live_view_refreshes_and_shows_a_failed_refresh_under_the_last_figures():
    import io as _io

    from rich.console import Console

    import mve.top
    from mve.sdk import EndpointConnectionError

    class Fakes:
        calls = 0

        def describe_endpoint(self, EndpointName):  # noqa: N803 - boto3's name
            self.calls += 1
            if self.calls == 3:
                raise EndpointConnectionError("127.0.0.1:7070")
            return DESCRIPTION

        def get_metric_data(self, **params):
            return {"MetricDataResults": [_result("v0_inv", 10.0)]}

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    fakes, screen = Fakes(), _io.StringIO()
    console = Console(file=screen, width=200, force_terminal=False)
    with pytest.raises(KeyboardInterrupt):
        mve.top.run_top(fakes, fakes, "ab", window=10, interval=0.5, once=False, as_json=False, console=console,
                        sleep=sleep)
    assert sleeps == [0.5, 0.5, 0.5] and fakes.calls == 3
    text = screen.getvalue()
    assert "refresh failed: Could not connect" in text and "Variant1" in text
