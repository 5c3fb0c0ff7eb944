"""``mve.v1.CloudWatch`` over gRPC: protobuf in, `CloudWatchService` calls, protobuf out."""

from __future__ import annotations

from dataclasses import replace

from google.protobuf import timestamp_pb2

from mve._proto import metrics_pb2 as pb
from mve._proto import metrics_pb2_grpc
from mve.control.alarms import Alarm, AlarmDefinition
from mve.control.cloudwatch import CloudWatchService, DataQuery, StatisticsQuery
from mve.control.metric_query import InvalidParameterValue, MissingParameter


def _seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _required_time(request, name: str) -> float:
    if not request.HasField(name):
        label = "".join(part.capitalize() for part in name.split("_"))
        raise MissingParameter(f"The parameter {label} must be specified.")
    return _seconds(getattr(request, name))


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(round(seconds * 1e9)))
    return stamp


def _dimensions(items) -> tuple[tuple[str, str], ...]:
    return tuple((d.name, d.value) for d in items)


def _dimension_messages(dimensions) -> list[pb.Dimension]:
    return [pb.Dimension(name=name, value=value) for name, value in dimensions]


def alarm_message(alarm: Alarm) -> pb.MetricAlarm:
    """An alarm as DescribeAlarms answers it."""
    d, s = alarm.definition, alarm.state
    return pb.MetricAlarm(
        alarm_name=d.name,
        alarm_arn=d.arn,
        alarm_description=d.description,
        alarm_configuration_updated_timestamp=_stamp(s.configuration_updated),
        actions_enabled=d.actions_enabled,
        alarm_actions=list(d.alarm_actions),
        state_value=s.value,
        state_reason=s.reason,
        state_reason_data=s.reason_data,
        state_updated_timestamp=_stamp(s.updated),
        state_transitioned_timestamp=_stamp(s.transitioned),
        metric_name=d.metric_name,
        namespace=d.namespace,
        statistic=d.statistic,
        extended_statistic=d.extended_statistic,
        dimensions=_dimension_messages(d.dimensions),
        period=d.period,
        unit=d.unit,
        evaluation_periods=d.evaluation_periods,
        datapoints_to_alarm=d.datapoints_to_alarm,
        threshold=d.threshold,
        comparison_operator=d.comparison_operator,
        treat_missing_data=d.treat_missing_data,
    )


class CloudWatchServicer(metrics_pb2_grpc.CloudWatchServicer):
    """The gRPC face of `CloudWatchService`; errors are mapped by the server's interceptor."""

    def __init__(self, service: CloudWatchService):
        self._service = service

    async def GetMetricStatistics(self, request, context):
        label, points = self._service.get_metric_statistics(
            StatisticsQuery(
                namespace=request.namespace,
                metric_name=request.metric_name,
                dimensions=_dimensions(request.dimensions),
                start=_required_time(request, "start_time"),
                end=_required_time(request, "end_time"),
                period=request.period,
                statistics=tuple(request.statistics),
                extended_statistics=tuple(request.extended_statistics),
                unit=request.unit,
            )
        )
        response = pb.GetMetricStatisticsResponse(label=label)
        for point in points:
            datapoint = response.datapoints.add(timestamp=_stamp(point["Timestamp"]), unit=point["Unit"])
            for stat, field in (
                ("SampleCount", "sample_count"), ("Average", "average"), ("Sum", "sum"),
                ("Minimum", "minimum"), ("Maximum", "maximum"),
            ):
                if point.get(stat) is not None:
                    setattr(datapoint, field, point[stat])
            for stat, value in point.get("ExtendedStatistics", {}).items():
                datapoint.extended_statistics[stat] = value
        return response

    async def GetMetricData(self, request, context):
        queries = []
        for q in request.metric_data_queries:
            stat = q.metric_stat
            queries.append(
                DataQuery(
                    id=q.id,
                    namespace=stat.metric.namespace,
                    metric_name=stat.metric.metric_name,
                    dimensions=_dimensions(stat.metric.dimensions),
                    period=stat.period or q.period,
                    stat=stat.stat,
                    unit=stat.unit,
                    expression=q.expression,
                    label=q.label,
                    return_data=q.return_data if q.HasField("return_data") else True,
                    has_metric_stat=q.HasField("metric_stat"),
                )
            )
        results, token = self._service.get_metric_data(
            queries,
            _required_time(request, "start_time"),
            _required_time(request, "end_time"),
            scan_by=request.scan_by,
            max_datapoints=request.max_datapoints,
            next_token=request.next_token,
        )
        return pb.GetMetricDataResponse(
            next_token=token,
            metric_data_results=[
                pb.MetricDataResult(
                    id=r.id,
                    label=r.label,
                    timestamps=[_stamp(t) for t in r.timestamps],
                    values=r.values,
                    status_code=r.status_code,
                )
                for r in results
            ],
        )

    async def ListMetrics(self, request, context):
        metrics, token = self._service.list_metrics(
            request.namespace,
            request.metric_name,
            tuple((f.name, f.value) for f in request.dimensions),
            request.recently_active,
            request.next_token,
        )
        return pb.ListMetricsResponse(
            next_token=token,
            metrics=[
                pb.Metric(namespace=ns, metric_name=name, dimensions=_dimension_messages(dims))
                for ns, name, dims in metrics
            ],
        )

    async def PutMetricAlarm(self, request, context):
        definition = AlarmDefinition(
            name=request.alarm_name,
            namespace=request.namespace,
            metric_name=request.metric_name,
            dimensions=_dimensions(request.dimensions),
            period=request.period,
            evaluation_periods=request.evaluation_periods,
            threshold=request.threshold,
            comparison_operator=request.comparison_operator,
            statistic=request.statistic,
            extended_statistic=request.extended_statistic,
            datapoints_to_alarm=request.datapoints_to_alarm if request.HasField("datapoints_to_alarm") else 0,
            treat_missing_data=request.treat_missing_data,
            unit=request.unit,
            description=request.alarm_description,
            actions_enabled=request.actions_enabled if request.HasField("actions_enabled") else True,
        )
        if request.HasField("datapoints_to_alarm") and request.datapoints_to_alarm < 1:
            raise InvalidParameterValue("The parameter DatapointsToAlarm must be between 1 and EvaluationPeriods.")
        definition = replace(definition, alarm_actions=tuple(request.alarm_actions))
        self._service.put_metric_alarm(definition, other_actions=bool(request.ok_actions or request.insufficient_data_actions))
        return pb.PutMetricAlarmResponse()

    async def DescribeAlarms(self, request, context):
        alarms, token = self._service.describe_alarms(
            tuple(request.alarm_names), request.alarm_name_prefix, request.state_value, request.max_records, request.next_token
        )
        return pb.DescribeAlarmsResponse(metric_alarms=[alarm_message(a) for a in alarms], next_token=token)

    async def DeleteAlarms(self, request, context):
        self._service.delete_alarms(list(request.alarm_names))
        return pb.DeleteAlarmsResponse()

    async def DescribeAlarmHistory(self, request, context):
        items, token = self._service.describe_alarm_history(
            request.alarm_name,
            request.history_item_type,
            _seconds(request.start_date) if request.HasField("start_date") else None,
            _seconds(request.end_date) if request.HasField("end_date") else None,
            request.max_records,
            request.next_token,
            request.scan_by,
        )
        return pb.DescribeAlarmHistoryResponse(
            next_token=token,
            alarm_history_items=[
                pb.AlarmHistoryItem(
                    alarm_name=i.alarm_name,
                    alarm_type="MetricAlarm",
                    timestamp=_stamp(i.timestamp),
                    history_item_type=i.item_type,
                    history_summary=i.summary,
                    history_data=i.data,
                )
                for i in items
            ],
        )
