"""How ``mve metrics`` prints: rich tables for people, the boto3-shaped response (``--json``) for machines."""

from __future__ import annotations

from datetime import datetime

from rich.table import Table

from mve.commands_output import fresh_console, plain, print_json

_STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def dimensions_text(dimensions: list[dict]) -> str:
    """``[{"Name": "EndpointName", "Value": "ab"}]`` -> ``EndpointName=ab``."""
    return ", ".join(f"{d['Name']}={d.get('Value', '*')}" for d in dimensions)


def _print(columns: list[str], rows: list[list], title: str | None = None, empty: str = "nothing") -> None:
    if not rows:
        fresh_console().print(f"{title}: {empty}" if title else empty)
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    fresh_console().print(table)


def show_statistics(args, response: dict) -> int:
    """GetMetricStatistics: one row per datapoint, oldest first, a column per statistic returned."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    points = sorted(data["Datapoints"], key=lambda p: p["Timestamp"])
    stats = [s for s in _STATISTICS if any(s in p for p in points)]
    extended = sorted({k for p in points for k in p.get("ExtendedStatistics", {})},
                      key=lambda k: float(k[1:]) if k[1:].replace(".", "", 1).isdigit() else 0.0)
    units = {p["Unit"] for p in points if p.get("Unit")}
    title = data.get("Label", "") + (f" ({units.pop()})" if len(units) == 1 else "")
    rows = [[p["Timestamp"], *(p.get(s) for s in stats), *(p.get("ExtendedStatistics", {}).get(k) for k in extended)]
            for p in points]
    _print(["Timestamp", *stats, *extended], rows, title=title, empty="no datapoints")
    return 0


def show_metric_data(args, response: dict) -> int:
    """GetMetricData: one row per timestamp, one column per query (its Label, else its Id)."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    results = data.get("MetricDataResults", [])
    columns = [r.get("Label") or r["Id"] for r in results]
    by_time: dict = {}
    for index, result in enumerate(results):
        for when, value in zip(result["Timestamps"], result["Values"]):
            by_time.setdefault(when, [None] * len(results))[index] = value
    descending = getattr(args, "scan_by", None) != "TimestampAscending"
    rows = [[when, *values] for when, values in sorted(by_time.items(), reverse=descending)]
    _print(["Timestamp", *columns], rows, empty="no datapoints")
    partial = [r["Id"] for r in results if r.get("StatusCode") not in ("Complete", None)]
    if partial and rows:
        fresh_console().print(f"StatusCode PartialData: {', '.join(partial)}")
    return 0


def show_metrics(args, response: dict) -> int:
    """ListMetrics: namespace, metric name and dimensions."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    rows = [[m["Namespace"], m["MetricName"], dimensions_text(m.get("Dimensions", []))]
            for m in data.get("Metrics", [])]
    _print(["Namespace", "MetricName", "Dimensions"], rows, empty="no metrics")
    return 0


def show_alarms(args, response: dict) -> int:
    """DescribeAlarms: one row per metric alarm with its state and condition."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    rows = []
    for a in data.get("MetricAlarms", []):
        condition = (f"{a.get('Statistic') or a.get('ExtendedStatistic')}({a['MetricName']}) "
                     f"{_OPERATORS.get(a['ComparisonOperator'], a['ComparisonOperator'])} {a['Threshold']:g}")
        evaluation = f"{a.get('DatapointsToAlarm', a['EvaluationPeriods'])}/{a['EvaluationPeriods']} x {a['Period']}s"
        rows.append([a["AlarmName"], a["StateValue"], condition, dimensions_text(a.get("Dimensions", [])),
                     evaluation, a.get("StateUpdatedTimestamp")])
    _print(["AlarmName", "State", "Condition", "Dimensions", "Datapoints", "StateUpdated"], rows, empty="no alarms")
    return 0


_OPERATORS = {"GreaterThanOrEqualToThreshold": ">=", "GreaterThanThreshold": ">", "LessThanThreshold": "<",
              "LessThanOrEqualToThreshold": "<="}


def show_history(args, response: dict) -> int:
    """DescribeAlarmHistory: time, alarm, item type and summary."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    rows = [[i.get("Timestamp"), i["AlarmName"], i["HistoryItemType"], i["HistorySummary"]]
            for i in data.get("AlarmHistoryItems", [])]
    _print(["Timestamp", "AlarmName", "Type", "Summary"], rows, empty="no alarm history")
    return 0


def done(args, message: str) -> int:
    """A call with an empty response: a short confirmation (``{}`` with --json)."""
    if args.json:
        print_json({})
    else:
        fresh_console().print(message)
    return 0
