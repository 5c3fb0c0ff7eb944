"""mve.client("cloudwatch") against an in-test gRPC server: validation, requests, response shapes,
CloudWatch's error classes, paginators and the alarm_exists waiter."""

from __future__ import annotations

from concurrent import futures
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import timestamp_pb2

import mve
from mve._proto import metrics_pb2 as pb
from mve._proto import metrics_pb2_grpc
from mve.errors import ResourceLimitExceeded, ValidationError, to_status
from mve.sdk import ParamValidationError, WaiterError
from mve.sdk.cloudwatch_convert import build_request

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
NOWHERE = "127.0.0.1:1"  # nothing listens: a call that got past validation would fail to connect
DIMS = [{"Name": "EndpointName", "Value": "ab"}, {"Name": "VariantName", "Value": "Variant1"}]


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


class FakeCloudWatch(metrics_pb2_grpc.CloudWatchServicer):
    """Canned answers; pages are numbered by NextToken ("" -> 0 -> "1" -> "2" -> end)."""

    def __init__(self):
        self.requests: dict[str, list] = {}
        self.alarms_after = 0  # DescribeAlarms answers no alarm this many times first

    def _page(self, name: str, request) -> int:
        self.requests.setdefault(name, []).append(request)
        return int(request.next_token or 0) if hasattr(request, "next_token") else 0

    def GetMetricStatistics(self, request, context):  # noqa: N802 - gRPC's name
        self._page("GetMetricStatistics", request)
        if request.metric_name == "Bogus":
            context.abort_with_status(to_status(ValidationError(
                "The parameter MetricName must be a known metric.", reason="InvalidParameterValue")))
        return pb.GetMetricStatisticsResponse(label=request.metric_name, datapoints=[
            pb.Datapoint(timestamp=_ts(T0), sum=12.0, sample_count=12.0, unit="Count"),
            pb.Datapoint(timestamp=_ts(T0 + timedelta(minutes=1)), sum=3.0, sample_count=3.0, unit="Count",
                         extended_statistics={"p99": 4.5}),
        ])

    def GetMetricData(self, request, context):  # noqa: N802
        page = self._page("GetMetricData", request)
        if len(request.metric_data_queries) > 500:
            context.abort_with_status(to_status(ResourceLimitExceeded("too many queries", reason="LimitExceeded")))
        return pb.GetMetricDataResponse(
            metric_data_results=[pb.MetricDataResult(
                id=q.id, label=q.label or q.id, timestamps=[_ts(T0 + timedelta(seconds=page))],
                values=[float(page)], status_code="Complete" if page == 2 else "PartialData")
                for q in request.metric_data_queries],
            next_token=str(page + 1) if page < 2 else "",
        )

    def ListMetrics(self, request, context):  # noqa: N802
        page = self._page("ListMetrics", request)
        return pb.ListMetricsResponse(
            metrics=[pb.Metric(namespace="AWS/SageMaker", metric_name=f"M{page}",
                               dimensions=[pb.Dimension(name="EndpointName", value="ab")])],
            next_token=str(page + 1) if page < 2 else "")

    def PutMetricAlarm(self, request, context):  # noqa: N802
        self._page("PutMetricAlarm", request)
        return pb.PutMetricAlarmResponse()

    def DescribeAlarms(self, request, context):  # noqa: N802
        self._page("DescribeAlarms", request)
        if self.alarms_after > 0:
            self.alarms_after -= 1
            return pb.DescribeAlarmsResponse()
        return pb.DescribeAlarmsResponse(metric_alarms=[pb.MetricAlarm(
            alarm_name="high-latency", alarm_arn="arn:mve:cloudwatch:local:alarm:high-latency",
            actions_enabled=True, state_value="OK", state_reason="Threshold Crossed",
            state_updated_timestamp=_ts(T0), metric_name="ModelLatency", namespace="AWS/SageMaker",
            extended_statistic="p99", dimensions=[pb.Dimension(name="EndpointName", value="ab")], period=60,
            evaluation_periods=3, datapoints_to_alarm=2, threshold=250000.0,
            comparison_operator="GreaterThanThreshold", treat_missing_data="missing",
            alarm_configuration_updated_timestamp=_ts(T0))])

    def DeleteAlarms(self, request, context):  # noqa: N802
        self._page("DeleteAlarms", request)
        return pb.DeleteAlarmsResponse()

    def DescribeAlarmHistory(self, request, context):  # noqa: N802
        page = self._page("DescribeAlarmHistory", request)
        return pb.DescribeAlarmHistoryResponse(
            alarm_history_items=[pb.AlarmHistoryItem(
                alarm_name="high-latency", alarm_type="MetricAlarm", timestamp=_ts(T0),
                history_item_type="StateUpdate", history_summary=f"Alarm updated from OK to ALARM ({page})",
                history_data="{}")],
            next_token=str(page + 1) if page < 1 else "")


@pytest.fixture(scope="module")
def fake():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = FakeCloudWatch()
    metrics_pb2_grpc.add_CloudWatchServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with mve.client("cloudwatch", address=f"127.0.0.1:{port}") as cw:
        yield cw, servicer
    server.stop(grace=None)


# ---------------------------------------------------------------- validation, before any call


def test_the_address_defaults_to_the_control_plane(monkeypatch):
    monkeypatch.setenv("MVE_CONTROL_PLANE", "127.0.0.1:7171")
    assert mve.client("cloudwatch").address == "127.0.0.1:7171"
    monkeypatch.delenv("MVE_CONTROL_PLANE")
    assert mve.client("cloudwatch").address == "127.0.0.1:7070"


def test_bad_parameters_are_all_reported_before_any_call():
    cw = mve.client("cloudwatch", address=NOWHERE)
    with pytest.raises(ParamValidationError) as caught:
        cw.get_metric_statistics(Namespace="AWS/SageMaker", MetricName="Invocations", StartTime="yesterday",
                                 EndTime=T0, Period=True, Dimensions=[{"Name": "EndpointName"}], Statistic=["Sum"])
    report = caught.value.report
    assert "Invalid type for parameter StartTime, value: 'yesterday'" in report
    assert "Invalid type for parameter Period, value: True" in report
    assert 'Missing required parameter in Dimensions[0]: "Value"' in report
    assert 'Unknown parameter in input: "Statistic"' in report
    with pytest.raises(ParamValidationError, match='Missing required parameter in MetricDataQueries\\[0\\]: "Id"'):
        cw.get_metric_data(MetricDataQueries=[{"Label": "x"}], StartTime=0, EndTime=60)
    with pytest.raises(ParamValidationError, match='Missing required parameter in input: "ComparisonOperator"'):
        cw.put_metric_alarm(AlarmName="a", EvaluationPeriods=1)
    with pytest.raises(ParamValidationError, match='Missing required parameter in input: "AlarmNames"'):
        cw.delete_alarms()


@pytest.mark.parametrize("start", [
    datetime(2026, 3, 1, 12, 0, 0),  # naive: UTC, as botocore reads it
    datetime(2026, 3, 1, 13, 0, 0, tzinfo=timezone(timedelta(hours=1))),
    T0.timestamp(), int(T0.timestamp()), str(int(T0.timestamp())),
    "2026-03-01T12:00:00Z", "2026-03-01T12:00:00", "2026-03-01T14:00:00+02:00",
], ids=repr)
def test_timestamps_in_every_botocore_form_are_the_same_instant(start):
    request = build_request("GetMetricStatistics", {
        "Namespace": "AWS/SageMaker", "MetricName": "Invocations", "StartTime": start, "EndTime": start,
        "Period": 60})
    assert request.start_time.ToDatetime(tzinfo=timezone.utc) == T0


# ---------------------------------------------------------------- calls


def test_get_metric_statistics_request_and_response_shape(fake):
    cw, servicer = fake
    response = cw.get_metric_statistics(
        Namespace="AWS/SageMaker", MetricName="Invocations", Dimensions=DIMS, StartTime=T0,
        EndTime=T0 + timedelta(minutes=2), Period=60, Statistics=["Sum", "SampleCount"],
        ExtendedStatistics=["p99"], Unit="Count")
    request = servicer.requests["GetMetricStatistics"][-1]
    assert (request.namespace, request.metric_name, request.period, request.unit) == (
        "AWS/SageMaker", "Invocations", 60, "Count")
    assert [(d.name, d.value) for d in request.dimensions] == [("EndpointName", "ab"), ("VariantName", "Variant1")]
    assert list(request.statistics) == ["Sum", "SampleCount"] and list(request.extended_statistics) == ["p99"]
    assert request.end_time.ToDatetime(tzinfo=timezone.utc) == T0 + timedelta(minutes=2)
    assert response["Label"] == "Invocations"
    assert response["Datapoints"] == [
        {"Timestamp": T0, "SampleCount": 12.0, "Sum": 12.0, "Unit": "Count"},
        {"Timestamp": T0 + timedelta(minutes=1), "SampleCount": 3.0, "Sum": 3.0, "Unit": "Count",
         "ExtendedStatistics": {"p99": 4.5}},
    ]
    assert response["Datapoints"][0]["Timestamp"].tzinfo is timezone.utc
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_service_errors_are_cloudwatchs_exception_classes(fake):
    cw, _ = fake
    with pytest.raises(cw.exceptions.InvalidParameterValueException) as caught:
        cw.get_metric_statistics(Namespace="AWS/SageMaker", MetricName="Bogus", StartTime=0, EndTime=60, Period=60)
    assert caught.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert isinstance(caught.value, cw.exceptions.ClientError)
    assert "when calling the GetMetricStatistics operation: The parameter MetricName" in str(caught.value)
    queries = [{"Id": f"q{i}", "MetricStat": {"Metric": {"Namespace": "n", "MetricName": "m"}, "Period": 60,
                                              "Stat": "Sum"}} for i in range(501)]
    with pytest.raises(cw.exceptions.LimitExceededFault):
        cw.get_metric_data(MetricDataQueries=queries, StartTime=0, EndTime=60)


def test_get_metric_data_request_response_and_paginator(fake):
    cw, servicer = fake
    query = {"Id": "inv", "Label": "Invocations",
             "MetricStat": {"Metric": {"Namespace": "AWS/SageMaker", "MetricName": "Invocations", "Dimensions": DIMS},
                            "Period": 10, "Stat": "Sum"}}
    response = cw.get_metric_data(MetricDataQueries=[query, {"Id": "lat", "ReturnData": False,
                                                             "MetricStat": {**query["MetricStat"], "Stat": "p99"}}],
                                  StartTime=T0, EndTime=T0 + timedelta(seconds=60), ScanBy="TimestampAscending")
    request = servicer.requests["GetMetricData"][-1]
    first, second = request.metric_data_queries
    assert (first.id, first.label, first.metric_stat.period, first.metric_stat.stat) == ("inv", "Invocations", 10, "Sum")
    assert first.metric_stat.metric.dimensions[1].value == "Variant1" and not first.HasField("return_data")
    assert second.HasField("return_data") and second.return_data is False
    assert request.scan_by == "TimestampAscending"
    assert response["MetricDataResults"][0] == {"Id": "inv", "Label": "Invocations", "Timestamps": [T0],
                                                "Values": [0.0], "StatusCode": "PartialData"}
    assert response["NextToken"] == "1" and response["Messages"] == []

    pages = list(cw.get_paginator("get_metric_data").paginate(
        MetricDataQueries=[query], StartTime=T0, EndTime=T0 + timedelta(seconds=60),
        PaginationConfig={"PageSize": 100}))
    assert [p["MetricDataResults"][0]["Values"] for p in pages] == [[0.0], [1.0], [2.0]]
    assert "NextToken" not in pages[-1]
    assert [r.max_datapoints for r in servicer.requests["GetMetricData"][-3:]] == [100, 100, 100]
    assert [r.next_token for r in servicer.requests["GetMetricData"][-3:]] == ["", "1", "2"]


def test_list_metrics_paginator_and_dimension_filters(fake):
    cw, servicer = fake
    assert cw.can_paginate("list_metrics") and not cw.can_paginate("put_metric_alarm")
    pages = list(cw.get_paginator("list_metrics").paginate(
        Namespace="AWS/SageMaker", Dimensions=[{"Name": "EndpointName", "Value": "ab"}, {"Name": "VariantName"}]))
    assert [p["Metrics"][0]["MetricName"] for p in pages] == ["M0", "M1", "M2"]
    assert pages[0]["Metrics"][0] == {"Namespace": "AWS/SageMaker", "MetricName": "M0",
                                      "Dimensions": [{"Name": "EndpointName", "Value": "ab"}]}
    filters = servicer.requests["ListMetrics"][-1].dimensions
    assert [(f.name, f.value) for f in filters] == [("EndpointName", "ab"), ("VariantName", "")]
    with pytest.raises(ValueError, match="PageSize parameter is not supported"):
        next(iter(cw.get_paginator("list_metrics").paginate(PaginationConfig={"PageSize": 5})))
    with pytest.raises(ValueError, match="no paginator"):
        cw.get_paginator("put_metric_alarm")


def test_put_describe_and_delete_alarms(fake):
    cw, servicer = fake
    response = cw.put_metric_alarm(
        AlarmName="high-latency", Namespace="AWS/SageMaker", MetricName="ModelLatency", Dimensions=DIMS[:1],
        ExtendedStatistic="p99", Period=60, EvaluationPeriods=3, Threshold=250000,
        ComparisonOperator="GreaterThanThreshold")
    assert set(response) == {"ResponseMetadata"}
    request = servicer.requests["PutMetricAlarm"][-1]
    assert (request.alarm_name, request.extended_statistic, request.threshold, request.evaluation_periods) == (
        "high-latency", "p99", 250000.0, 3)
    assert not request.HasField("datapoints_to_alarm") and not request.HasField("actions_enabled")
    cw.put_metric_alarm(AlarmName="a", EvaluationPeriods=5, DatapointsToAlarm=3, ActionsEnabled=False,
                        ComparisonOperator="LessThanThreshold", Statistic="Sum")
    request = servicer.requests["PutMetricAlarm"][-1]
    assert request.datapoints_to_alarm == 3 and request.HasField("actions_enabled") and not request.actions_enabled

    described = cw.describe_alarms(AlarmNames=["high-latency"], StateValue="OK", MaxRecords=10)
    assert described["CompositeAlarms"] == [] and "NextToken" not in described
    alarm = described["MetricAlarms"][0]
    assert alarm["AlarmName"] == "high-latency" and alarm["ExtendedStatistic"] == "p99" and "Statistic" not in alarm
    assert alarm["OKActions"] == [] and alarm["StateUpdatedTimestamp"] == T0 and alarm["DatapointsToAlarm"] == 2
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": "ab"}] and alarm["Threshold"] == 250000.0
    assert "AlarmDescription" not in alarm and "Unit" not in alarm
    request = servicer.requests["DescribeAlarms"][-1]
    assert list(request.alarm_names) == ["high-latency"] and request.max_records == 10

    assert set(cw.delete_alarms(AlarmNames=["a", "b"])) == {"ResponseMetadata"}
    assert list(servicer.requests["DeleteAlarms"][-1].alarm_names) == ["a", "b"]


def test_describe_alarm_history_paginator(fake):
    cw, servicer = fake
    pages = list(cw.get_paginator("describe_alarm_history").paginate(
        AlarmName="high-latency", StartDate=T0, EndDate="2026-03-02T00:00:00Z", PaginationConfig={"PageSize": 1}))
    assert [p["AlarmHistoryItems"][0]["HistorySummary"][-3:] for p in pages] == ["(0)", "(1)"]
    assert pages[0]["AlarmHistoryItems"][0]["Timestamp"] == T0
    request = servicer.requests["DescribeAlarmHistory"][-1]
    assert request.max_records == 1 and request.end_date.ToDatetime(tzinfo=timezone.utc) == T0 + timedelta(hours=12)


def test_alarm_exists_waits_as_botocore_does(fake):
    cw, servicer = fake
    servicer.alarms_after = 2
    waiter = cw.get_waiter("alarm_exists")
    sleeps: list[float] = []
    waiter._sleep = sleeps.append
    waiter.wait(AlarmNames=["high-latency"])
    assert sleeps == [5.0, 5.0]  # botocore's delay; 40 attempts
    servicer.alarms_after = 10**6
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        waiter.wait(AlarmNames=["nope"], WaiterConfig={"Delay": 0, "MaxAttempts": 3})
    servicer.alarms_after = 0
    with pytest.raises(ValueError, match="Waiter does not exist"):
        cw.get_waiter("composite_alarm_exists")


def test_alarm_exists_gives_up_after_40_attempts():
    cw = mve.client("cloudwatch", address=NOWHERE)
    waiter = cw.get_waiter("alarm_exists")
    calls: list = []
    waiter._describe = lambda **kw: calls.append(kw) or {"MetricAlarms": [], "CompositeAlarms": []}
    waiter._sleep = lambda s: None
    with pytest.raises(WaiterError, match="AlarmExists failed: Max attempts exceeded"):
        waiter.wait(AlarmNamePrefix="x")
    assert len(calls) == 40
