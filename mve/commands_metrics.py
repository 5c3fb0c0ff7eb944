"""``mve metrics <verb>`` (the AWS CLI's ``cloudwatch`` verbs and flags) and ``mve top ENDPOINT``.

Each verb is one SDK call on ``mve.client("cloudwatch")``, following NextToken to the end for the
paginated ones (as the AWS CLI does) and printing the merged result: a table by default, the
boto3-shaped response with ``--json``. Times are ISO 8601 (no offset means UTC) or epoch seconds.
Errors print ``Code: message`` on stderr and exit 1 (2 for bad usage). Tables live in
`mve.commands_metrics_output`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mve.commands import UsageError, _guarded, _positive

STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")
COMPARISONS = ("GreaterThanOrEqualToThreshold", "GreaterThanThreshold", "LessThanThreshold",
               "LessThanOrEqualToThreshold")
TIME_HELP = "ISO 8601 (e.g. 2026-03-01T12:00:00Z; no offset means UTC) or epoch seconds"


def parse_time(text: str):
    """An ISO 8601 time or epoch seconds -> an aware datetime (argparse type)."""
    from mve.sdk.params import parse_timestamp

    value = parse_timestamp(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"must be {TIME_HELP}, got {text!r}")
    return value


def parse_dimensions(items: list[str] | None, *, filters: bool = False) -> list[dict]:
    """``["Name=EndpointName,Value=ab", ...]`` (or a JSON list) -> ``[{"Name": ..., "Value": ...}, ...]``.

    With `filters` (list-metrics) Value may be left out: any value matches.
    """
    out: list[dict] = []
    for item in items or ():
        if item.lstrip().startswith(("[", "{")):
            try:
                loaded = json.loads(item)
            except json.JSONDecodeError as error:
                raise UsageError(f"--dimensions {item!r} is not valid JSON: {error}") from None
            out.extend(loaded if isinstance(loaded, list) else [loaded])
            continue
        fields: dict[str, str] = {}
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in ("Name", "Value"):
                raise UsageError(f"--dimensions part {part!r} must be Name=NAME or Value=VALUE")
            fields[key.strip()] = value
        if "Name" not in fields or ("Value" not in fields and not filters):
            raise UsageError(f"--dimensions {item!r} needs Name=...,Value=...")
        out.append(fields)
    return out


def parse_queries(text: str) -> list[dict]:
    """--metric-data-queries: a JSON list, or ``file://PATH`` of one."""
    if text.startswith("file://"):
        text = Path(text[len("file://"):]).expanduser().read_text()
    try:
        queries = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--metric-data-queries is not valid JSON: {error}") from None
    if not isinstance(queries, list):
        raise UsageError("--metric-data-queries must be a JSON list of MetricDataQuery objects")
    return queries


def int_at_least(minimum: int):
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0.1 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 60 seconds, got {value:g}")
    return value


def _window(text: str) -> int:
    from mve.top import valid_window

    value = int_at_least(1)(text)
    if not valid_window(value):
        raise argparse.ArgumentTypeError(f"must be 1, 5, 10, 30 or a multiple of 60 seconds, got {value}")
    return value


def _clients(args, *services: str):
    from mve.sdk import client

    options = {"timeout": args.timeout} if args.timeout else {}
    return [client(service, address=args.control_plane, **options) for service in services]


def _given(**params) -> dict:
    """The parameters that were given (None and empty lists left out)."""
    return {key: value for key, value in params.items() if value is not None and value != []}


def all_pages(cw, method: str, params: dict) -> dict:
    """Every page of a paginated call merged, as the AWS CLI prints it (no NextToken).

    Lists of items are concatenated; get_metric_data's results are joined per query Id.
    """
    merged: dict = {}
    for page in cw.get_paginator(method).paginate(**params):
        for key, value in page.items():
            if key in ("NextToken", "ResponseMetadata"):
                continue
            if key == "MetricDataResults":
                by_id = {r["Id"]: r for r in merged.setdefault(key, [])}
                for result in value:
                    if result["Id"] in by_id:
                        known = by_id[result["Id"]]
                        known["Timestamps"] += result["Timestamps"]
                        known["Values"] += result["Values"]
                        known["StatusCode"] = result["StatusCode"]
                    else:
                        merged[key].append({**result, "Timestamps": list(result["Timestamps"]),
                                            "Values": list(result["Values"])})
            elif isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = value
    return merged


# ---------------------------------------------------------------- actions


def _metrics(args) -> int:
    from mve import commands_metrics_output as out

    (cw,) = _clients(args, "cloudwatch")
    verb = args.verb
    if verb == "get-metric-statistics":
        response = cw.get_metric_statistics(**_given(
            Namespace=args.namespace, MetricName=args.metric_name, Dimensions=parse_dimensions(args.dimensions),
            StartTime=args.start_time, EndTime=args.end_time, Period=args.period, Statistics=args.statistics,
            ExtendedStatistics=args.extended_statistics, Unit=args.unit))
        return out.show_statistics(args, response)
    if verb == "get-metric-data":
        response = all_pages(cw, "get_metric_data", _given(
            MetricDataQueries=parse_queries(args.metric_data_queries), StartTime=args.start_time,
            EndTime=args.end_time, ScanBy=args.scan_by, MaxDatapoints=args.max_datapoints))
        return out.show_metric_data(args, response)
    if verb == "list-metrics":
        response = all_pages(cw, "list_metrics", _given(
            Namespace=args.namespace, MetricName=args.metric_name,
            Dimensions=parse_dimensions(args.dimensions, filters=True), RecentlyActive=args.recently_active))
        return out.show_metrics(args, response)
    if verb == "put-metric-alarm":
        cw.put_metric_alarm(**_given(
            AlarmName=args.alarm_name, AlarmDescription=args.alarm_description, ActionsEnabled=args.actions_enabled,
            MetricName=args.metric_name, Namespace=args.namespace, Statistic=args.statistic,
            ExtendedStatistic=args.extended_statistic, Dimensions=parse_dimensions(args.dimensions),
            Period=args.period, Unit=args.unit, EvaluationPeriods=args.evaluation_periods,
            DatapointsToAlarm=args.datapoints_to_alarm, Threshold=args.threshold,
            ComparisonOperator=args.comparison_operator, TreatMissingData=args.treat_missing_data))
        return out.done(args, f"put alarm {args.alarm_name}")
    if verb == "describe-alarms":
        response = all_pages(cw, "describe_alarms", _given(
            AlarmNames=args.alarm_names, AlarmNamePrefix=args.alarm_name_prefix, StateValue=args.state_value,
            MaxRecords=args.max_records))
        return out.show_alarms(args, response)
    if verb == "delete-alarms":
        cw.delete_alarms(AlarmNames=args.alarm_names)
        return out.done(args, f"deleted {len(args.alarm_names)} alarm(s): {', '.join(args.alarm_names)}")
    response = all_pages(cw, "describe_alarm_history", _given(
        AlarmName=args.alarm_name, HistoryItemType=args.history_item_type, StartDate=args.start_date,
        EndDate=args.end_date, MaxRecords=args.max_records, ScanBy=args.scan_by))
    return out.show_history(args, response)


def _top(args) -> int:
    from mve.top import run_top

    if args.json and not args.once:
        raise UsageError("--json needs --once (the live view is for a terminal)")
    sm, cw, aas = _clients(args, "sagemaker", "cloudwatch", "application-autoscaling")
    return run_top(sm, cw, args.endpoint, window=args.window, interval=args.interval, once=args.once,
                   as_json=args.json, aas=aas)


# ---------------------------------------------------------------- parsers


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control-plane", metavar="HOST:PORT", default=None,
                        help="control plane address (default $MVE_CONTROL_PLANE or 127.0.0.1:7070)")
    common.add_argument("--json", action="store_true", help="print the boto3-shaped response as JSON")
    common.add_argument("--timeout", type=_positive, default=None, help="deadline of each call in seconds (> 0)")
    return common


def _metric_flags(parser, *, required: bool, filters: bool = False) -> None:
    parser.add_argument("--namespace", required=required, help="e.g. AWS/SageMaker")
    parser.add_argument("--metric-name", required=required, help="e.g. Invocations, ModelLatency")
    parser.add_argument("--dimensions", nargs="+", metavar="Name=N,Value=V",
                        help="e.g. Name=EndpointName,Value=ab Name=VariantName,Value=Variant1"
                             + (" (Value may be left out: any value)" if filters else "") + "; or a JSON list")


def register(subparsers) -> None:
    """Add ``metrics`` (get-metric-statistics, get-metric-data, list-metrics, put-metric-alarm,
    describe-alarms, delete-alarms, describe-alarm-history) and ``top``."""
    common = _common()
    group = subparsers.add_parser("metrics", help="read metrics and manage alarms (CloudWatch's API)",
                                  description="CloudWatch's verbs against the control plane (mve.v1.CloudWatch). "
                                              f"Times: {TIME_HELP}.")
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)

    def add(verb: str, help_line: str):
        sub = verbs.add_parser(verb, parents=[common], help=help_line, description=help_line)
        sub.set_defaults(func=_guarded(_metrics))
        return sub

    stats = add("get-metric-statistics", "statistics of one metric per period (GetMetricStatistics)")
    _metric_flags(stats, required=True)
    stats.add_argument("--start-time", type=parse_time, required=True, help=TIME_HELP)
    stats.add_argument("--end-time", type=parse_time, required=True, help=TIME_HELP)
    stats.add_argument("--period", type=int_at_least(1), required=True, help="seconds: 1, 5, 10, 30 or 60·n")
    stats.add_argument("--statistics", nargs="+", choices=STATISTICS)
    stats.add_argument("--extended-statistics", nargs="+", metavar="pNN", help="percentiles, e.g. p50 p99 p99.9")
    stats.add_argument("--unit", help="must be the metric's unit when given")

    data = add("get-metric-data", "several metrics at once (GetMetricData), all pages")
    data.add_argument("--metric-data-queries", required=True, metavar="JSON",
                      help='JSON list of MetricDataQuery, or file://PATH: [{"Id": "inv", "MetricStat": {"Metric": '
                           '{"Namespace": "AWS/SageMaker", "MetricName": "Invocations", "Dimensions": [...]}, '
                           '"Period": 60, "Stat": "Sum"}}]')
    data.add_argument("--start-time", type=parse_time, required=True, help=TIME_HELP)
    data.add_argument("--end-time", type=parse_time, required=True, help=TIME_HELP)
    data.add_argument("--scan-by", choices=("TimestampDescending", "TimestampAscending"))
    data.add_argument("--max-datapoints", type=int_at_least(1), help="datapoints per page")

    listing = add("list-metrics", "metrics that have data (ListMetrics), all pages")
    _metric_flags(listing, required=False, filters=True)
    listing.add_argument("--recently-active", choices=("PT3H",))

    alarm = add("put-metric-alarm", "create or replace a metric alarm (PutMetricAlarm)")
    alarm.add_argument("--alarm-name", required=True)
    alarm.add_argument("--alarm-description")
    _metric_flags(alarm, required=True)
    stat = alarm.add_mutually_exclusive_group(required=True)
    stat.add_argument("--statistic", choices=STATISTICS)
    stat.add_argument("--extended-statistic", metavar="pNN", help="a percentile, e.g. p99")
    alarm.add_argument("--period", type=int_at_least(1), required=True, help="seconds: 10, 30 or 60·n")
    alarm.add_argument("--unit")
    alarm.add_argument("--evaluation-periods", type=int_at_least(1), required=True)
    alarm.add_argument("--datapoints-to-alarm", type=int_at_least(1), help="default: --evaluation-periods")
    alarm.add_argument("--threshold", type=float, required=True)
    alarm.add_argument("--comparison-operator", choices=COMPARISONS, required=True)
    alarm.add_argument("--treat-missing-data", choices=("breaching", "notBreaching", "ignore", "missing"))
    enabled = alarm.add_mutually_exclusive_group()
    enabled.add_argument("--actions-enabled", dest="actions_enabled", action="store_true", default=None)
    enabled.add_argument("--no-actions-enabled", dest="actions_enabled", action="store_false")

    describe = add("describe-alarms", "metric alarms and their state (DescribeAlarms), all pages")
    describe.add_argument("--alarm-names", nargs="+", metavar="NAME")
    describe.add_argument("--alarm-name-prefix")
    describe.add_argument("--state-value", choices=("OK", "ALARM", "INSUFFICIENT_DATA"))
    describe.add_argument("--max-records", type=int_at_least(1), help="alarms per page")

    delete = add("delete-alarms", "delete alarms (DeleteAlarms)")
    delete.add_argument("--alarm-names", nargs="+", metavar="NAME", required=True)

    history = add("describe-alarm-history", "alarm configuration and state changes (DescribeAlarmHistory)")
    history.add_argument("--alarm-name")
    history.add_argument("--history-item-type", choices=("ConfigurationUpdate", "StateUpdate", "Action"))
    history.add_argument("--start-date", type=parse_time, help=TIME_HELP)
    history.add_argument("--end-date", type=parse_time, help=TIME_HELP)
    history.add_argument("--max-records", type=int_at_least(1), help="items per page")
    history.add_argument("--scan-by", choices=("TimestampDescending", "TimestampAscending"))

    top_help = ("live view of an endpoint's variants: traffic share, req/s, p50/p99 ModelLatency, 4xx/5xx, "
                "weight and instances, and its last scaling activities")
    top = subparsers.add_parser(
        "top", parents=[common], help=top_help,
        description=f"{top_help}. Metrics reach the control plane once a second from each proxy, so the "
                    "figures are those of the last complete window ending at least 2 s before now (on a "
                    "multiple of --window); they change once per window, weights and instances at every "
                    "refresh. Ctrl-C to stop.")
    top.add_argument("endpoint", metavar="ENDPOINT")
    top.add_argument("--interval", type=_interval, default=1.0, help="seconds between refreshes, 0.1-60 (default 1)")
    top.add_argument("--window", type=_window, default=10,
                     help="seconds of traffic per figure: 1, 5, 10, 30 or 60·n (default 10)")
    top.add_argument("--once", action="store_true", help="print one frame and exit (--json: the figures as JSON)")
    top.set_defaults(func=_guarded(_top))
