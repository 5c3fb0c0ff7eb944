"""CloudWatch's parameter shapes, and conversion between boto3-shaped dicts and mve.v1 metrics messages.

The shapes are the subset of boto3's CloudWatch parameters that ``mve.v1.CloudWatch`` serves; a
parameter outside it is refused before any call (``Unknown parameter``), as botocore refuses one.
Timestamps go in as datetimes (naive means UTC), epoch seconds or ISO 8601 strings, and come back
as UTC datetimes. Responses leave out what the server left unset, as boto3 does.
"""

from __future__ import annotations

from datetime import timezone

from google.protobuf import timestamp_pb2

from mve._proto import metrics_pb2 as pb
from mve.sdk.convert import put_time, with_token
from mve.sdk.params import BOOLEAN, DOUBLE, INTEGER, STRING, TIMESTAMP, ListOf, Structure, parse_timestamp, struct

# ---------------------------------------------------------------- shapes

DIMENSIONS = ListOf(struct(("Name", "Value"), Name=STRING, Value=STRING))
METRIC = struct(Namespace=STRING, MetricName=STRING, Dimensions=DIMENSIONS)
METRIC_DATA_QUERY = struct(
    ("Id",),
    Id=STRING,
    MetricStat=struct(("Metric", "Period", "Stat"), Metric=METRIC, Period=INTEGER, Stat=STRING, Unit=STRING),
    Expression=STRING,
    Label=STRING,
    ReturnData=BOOLEAN,
    Period=INTEGER,
)

OPERATIONS: dict[str, Structure] = {
    "GetMetricStatistics": struct(
        ("Namespace", "MetricName", "StartTime", "EndTime", "Period"),
        Namespace=STRING,
        MetricName=STRING,
        Dimensions=DIMENSIONS,
        StartTime=TIMESTAMP,
        EndTime=TIMESTAMP,
        Period=INTEGER,
        Statistics=ListOf(STRING),
        ExtendedStatistics=ListOf(STRING),
        Unit=STRING,
    ),
    "GetMetricData": struct(
        ("MetricDataQueries", "StartTime", "EndTime"),
        MetricDataQueries=ListOf(METRIC_DATA_QUERY),
        StartTime=TIMESTAMP,
        EndTime=TIMESTAMP,
        NextToken=STRING,
        ScanBy=STRING,
        MaxDatapoints=INTEGER,
    ),
    "ListMetrics": struct(
        Namespace=STRING,
        MetricName=STRING,
        Dimensions=ListOf(struct(("Name",), Name=STRING, Value=STRING)),
        NextToken=STRING,
        RecentlyActive=STRING,
    ),
    "PutMetricAlarm": struct(
        ("AlarmName", "EvaluationPeriods", "ComparisonOperator"),
        AlarmName=STRING,
        AlarmDescription=STRING,
        ActionsEnabled=BOOLEAN,
        OKActions=ListOf(STRING),
        AlarmActions=ListOf(STRING),
        InsufficientDataActions=ListOf(STRING),
        MetricName=STRING,
        Namespace=STRING,
        Statistic=STRING,
        ExtendedStatistic=STRING,
        Dimensions=DIMENSIONS,
        Period=INTEGER,
        Unit=STRING,
        EvaluationPeriods=INTEGER,
        DatapointsToAlarm=INTEGER,
        Threshold=DOUBLE,
        ComparisonOperator=STRING,
        TreatMissingData=STRING,
    ),
    "DescribeAlarms": struct(
        AlarmNames=ListOf(STRING), AlarmNamePrefix=STRING, StateValue=STRING, MaxRecords=INTEGER, NextToken=STRING
    ),
    "DeleteAlarms": struct(("AlarmNames",), AlarmNames=ListOf(STRING)),
    "DescribeAlarmHistory": struct(
        AlarmName=STRING,
        HistoryItemType=STRING,
        StartDate=TIMESTAMP,
        EndDate=TIMESTAMP,
        MaxRecords=INTEGER,
        NextToken=STRING,
        ScanBy=STRING,
    ),
}

# ---------------------------------------------------------------- requests


def timestamp(value) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp from an already validated datetime, epoch number or ISO string."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(parse_timestamp(value).astimezone(timezone.utc))
    return stamp


def _dimensions(specs) -> list[pb.Dimension]:
    return [pb.Dimension(name=d["Name"], value=d["Value"]) for d in specs or ()]


def _metric(spec: dict) -> pb.Metric:
    return pb.Metric(
        namespace=spec.get("Namespace", ""),
        metric_name=spec.get("MetricName", ""),
        dimensions=_dimensions(spec.get("Dimensions")),
    )


def _query(spec: dict) -> pb.MetricDataQuery:
    query = pb.MetricDataQuery(
        id=spec["Id"], expression=spec.get("Expression", ""), label=spec.get("Label", ""), period=spec.get("Period", 0)
    )
    if "MetricStat" in spec:
        stat = spec["MetricStat"]
        query.metric_stat.CopyFrom(
            pb.MetricStat(metric=_metric(stat["Metric"]), period=stat["Period"], stat=stat["Stat"],
                          unit=stat.get("Unit", ""))
        )
    if "ReturnData" in spec:
        query.return_data = spec["ReturnData"]
    return query


def _times(params: dict, **names: str) -> dict:
    return {field: timestamp(params[key]) for field, key in names.items() if key in params}


def _get_metric_statistics(p: dict) -> pb.GetMetricStatisticsRequest:
    return pb.GetMetricStatisticsRequest(
        namespace=p["Namespace"],
        metric_name=p["MetricName"],
        dimensions=_dimensions(p.get("Dimensions")),
        period=p["Period"],
        statistics=p.get("Statistics", ()),
        extended_statistics=p.get("ExtendedStatistics", ()),
        unit=p.get("Unit", ""),
        **_times(p, start_time="StartTime", end_time="EndTime"),
    )


def _get_metric_data(p: dict) -> pb.GetMetricDataRequest:
    return pb.GetMetricDataRequest(
        metric_data_queries=[_query(q) for q in p["MetricDataQueries"]],
        next_token=p.get("NextToken", ""),
        scan_by=p.get("ScanBy", ""),
        max_datapoints=p.get("MaxDatapoints", 0),
        **_times(p, start_time="StartTime", end_time="EndTime"),
    )


def _put_metric_alarm(p: dict) -> pb.PutMetricAlarmRequest:
    request = pb.PutMetricAlarmRequest(
        alarm_name=p["AlarmName"],
        alarm_description=p.get("AlarmDescription", ""),
        ok_actions=p.get("OKActions", ()),
        alarm_actions=p.get("AlarmActions", ()),
        insufficient_data_actions=p.get("InsufficientDataActions", ()),
        metric_name=p.get("MetricName", ""),
        namespace=p.get("Namespace", ""),
        statistic=p.get("Statistic", ""),
        extended_statistic=p.get("ExtendedStatistic", ""),
        dimensions=_dimensions(p.get("Dimensions")),
        period=p.get("Period", 0),
        unit=p.get("Unit", ""),
        evaluation_periods=p["EvaluationPeriods"],
        threshold=float(p.get("Threshold", 0.0)),
        comparison_operator=p["ComparisonOperator"],
        treat_missing_data=p.get("TreatMissingData", ""),
    )
    if "ActionsEnabled" in p:
        request.actions_enabled = p["ActionsEnabled"]
    if "DatapointsToAlarm" in p:
        request.datapoints_to_alarm = p["DatapointsToAlarm"]
    return request


REQUEST_BUILDERS = {
    "GetMetricStatistics": _get_metric_statistics,
    "GetMetricData": _get_metric_data,
    "ListMetrics": lambda p: pb.ListMetricsRequest(
        namespace=p.get("Namespace", ""),
        metric_name=p.get("MetricName", ""),
        dimensions=[pb.DimensionFilter(name=d["Name"], value=d.get("Value", "")) for d in p.get("Dimensions", ())],
        next_token=p.get("NextToken", ""),
        recently_active=p.get("RecentlyActive", ""),
    ),
    "PutMetricAlarm": _put_metric_alarm,
    "DescribeAlarms": lambda p: pb.DescribeAlarmsRequest(
        alarm_names=p.get("AlarmNames", ()),
        alarm_name_prefix=p.get("AlarmNamePrefix", ""),
        state_value=p.get("StateValue", ""),
        max_records=p.get("MaxRecords", 0),
        next_token=p.get("NextToken", ""),
    ),
    "DeleteAlarms": lambda p: pb.DeleteAlarmsRequest(alarm_names=p["AlarmNames"]),
    "DescribeAlarmHistory": lambda p: pb.DescribeAlarmHistoryRequest(
        alarm_name=p.get("AlarmName", ""),
        history_item_type=p.get("HistoryItemType", ""),
        max_records=p.get("MaxRecords", 0),
        next_token=p.get("NextToken", ""),
        scan_by=p.get("ScanBy", ""),
        **_times(p, start_date="StartDate", end_date="EndDate"),
    ),
}


def build_request(operation: str, params: dict):
    """The protobuf request of `operation` for already validated `params`."""
    return REQUEST_BUILDERS[operation](params)


# ---------------------------------------------------------------- responses


def _dt(stamp: timestamp_pb2.Timestamp):
    return stamp.ToDatetime(tzinfo=timezone.utc)




def _dimension_dicts(dimensions) -> list[dict]:
    return [{"Name": d.name, "Value": d.value} for d in dimensions]


_STATISTICS = (("SampleCount", "sample_count"), ("Average", "average"), ("Sum", "sum"),
               ("Minimum", "minimum"), ("Maximum", "maximum"))


def _datapoint(point: pb.Datapoint) -> dict:
    out: dict = {}
    put_time(out, "Timestamp", point, "timestamp")
    for key, field in _STATISTICS:
        if point.HasField(field):
            out[key] = getattr(point, field)
    if point.unit:
        out["Unit"] = point.unit
    if point.extended_statistics:
        out["ExtendedStatistics"] = dict(point.extended_statistics)
    return out


def _metric_data_result(result: pb.MetricDataResult) -> dict:
    return {
        "Id": result.id,
        "Label": result.label,
        "Timestamps": [_dt(t) for t in result.timestamps],
        "Values": list(result.values),
        "StatusCode": result.status_code,
    }


def _alarm(alarm: pb.MetricAlarm) -> dict:
    out: dict = {"AlarmName": alarm.alarm_name, "AlarmArn": alarm.alarm_arn}
    if alarm.alarm_description:
        out["AlarmDescription"] = alarm.alarm_description
    put_time(out, "AlarmConfigurationUpdatedTimestamp", alarm, "alarm_configuration_updated_timestamp")
    out.update({
        "ActionsEnabled": alarm.actions_enabled,
        "OKActions": list(alarm.ok_actions),
        "AlarmActions": list(alarm.alarm_actions),
        "InsufficientDataActions": list(alarm.insufficient_data_actions),
        "StateValue": alarm.state_value,
        "StateReason": alarm.state_reason,
    })
    if alarm.state_reason_data:
        out["StateReasonData"] = alarm.state_reason_data
    put_time(out, "StateUpdatedTimestamp", alarm, "state_updated_timestamp")
    out.update({"MetricName": alarm.metric_name, "Namespace": alarm.namespace})
    if alarm.statistic:
        out["Statistic"] = alarm.statistic
    if alarm.extended_statistic:
        out["ExtendedStatistic"] = alarm.extended_statistic
    out.update({"Dimensions": _dimension_dicts(alarm.dimensions), "Period": alarm.period})
    if alarm.unit:
        out["Unit"] = alarm.unit
    out["EvaluationPeriods"] = alarm.evaluation_periods
    if alarm.datapoints_to_alarm:
        out["DatapointsToAlarm"] = alarm.datapoints_to_alarm
    out.update({"Threshold": alarm.threshold, "ComparisonOperator": alarm.comparison_operator})
    if alarm.treat_missing_data:
        out["TreatMissingData"] = alarm.treat_missing_data
    put_time(out, "StateTransitionedTimestamp", alarm, "state_transitioned_timestamp")
    return out


def _history_item(item: pb.AlarmHistoryItem) -> dict:
    out: dict = {"AlarmName": item.alarm_name, "AlarmType": item.alarm_type or "MetricAlarm"}
    put_time(out, "Timestamp", item, "timestamp")
    out.update({"HistoryItemType": item.history_item_type, "HistorySummary": item.history_summary,
                "HistoryData": item.history_data})
    return out




RESPONSE_CONVERTERS = {
    "GetMetricStatistics": lambda r: {"Label": r.label, "Datapoints": [_datapoint(p) for p in r.datapoints]},
    "GetMetricData": lambda r: {
        "MetricDataResults": [_metric_data_result(m) for m in r.metric_data_results],
        **with_token({}, r.next_token),
        "Messages": [],
    },
    "ListMetrics": lambda r: with_token(
        {"Metrics": [{"Namespace": m.namespace, "MetricName": m.metric_name,
                      "Dimensions": _dimension_dicts(m.dimensions)} for m in r.metrics]},
        r.next_token,
    ),
    "PutMetricAlarm": lambda r: {},
    "DescribeAlarms": lambda r: with_token(
        {"MetricAlarms": [_alarm(a) for a in r.metric_alarms], "CompositeAlarms": []}, r.next_token
    ),
    "DeleteAlarms": lambda r: {},
    "DescribeAlarmHistory": lambda r: with_token(
        {"AlarmHistoryItems": [_history_item(i) for i in r.alarm_history_items]}, r.next_token
    ),
}


def convert_response(operation: str, response) -> dict:
    """The boto3-shaped dict of `operation`'s protobuf `response`."""
    return RESPONSE_CONVERTERS[operation](response)


__all__ = ["OPERATIONS", "build_request", "convert_response", "timestamp"]
