"""``mve top ENDPOINT``: each variant's live traffic share, req/s, latency, errors, weight and instances.

One refresh is one ``describe_endpoint`` (weights, instance counts) and one ``get_metric_data``
(Invocations, Invocation4XXErrors, Invocation5XXErrors as Sum; ModelLatency p50 and p99; per
variant, namespace AWS/SageMaker) over the newest complete window, and, given an
application-autoscaling client, one ``describe_scaling_activities`` per variant for the endpoint's
`SCALING_ACTIVITIES` newest scaling activities (left out when the control plane has none or the
call fails). The pure part, responses -> figures, is `top_figures`; `render` turns figures into
rich tables; `run_top` loops.

Proxies report to the control plane once a second, so the newest seconds may be incomplete: the
window ends `LAG_S` seconds before now, rounded down to a multiple of the window, because the
control plane's periods start on multiples of the period. The figures are therefore those of the
last complete window: they change every `window` seconds, while weights and instance counts change
at every refresh.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone

NAMESPACE = "AWS/SageMaker"
LAG_S = 2
# Scaling activities shown under the variants.
SCALING_ACTIVITIES = 3
# CloudWatch's periods: 1, 5, 10, 30 or a multiple of 60 seconds.
HIGH_RESOLUTION_PERIODS = (1, 5, 10, 30)

# query id suffix -> (metric name, stat)
QUERIES = {
    "inv": ("Invocations", "Sum"),
    "e4": ("Invocation4XXErrors", "Sum"),
    "e5": ("Invocation5XXErrors", "Sum"),
    "p50": ("ModelLatency", "p50"),
    "p99": ("ModelLatency", "p99"),
}


def valid_window(window: int) -> bool:
    """Whether `window` seconds is a period the control plane accepts (1, 5, 10, 30, 60·n)."""
    return window in HIGH_RESOLUTION_PERIODS or (window > 0 and window % 60 == 0)


def window_bounds(now: float, window: int, lag: float = LAG_S) -> tuple[datetime, datetime]:
    """(start, end) of the newest complete window: end `lag` s before `now`, on a multiple of `window`."""
    end = math.floor((now - lag) / window) * window
    return (datetime.fromtimestamp(end - window, tz=timezone.utc), datetime.fromtimestamp(end, tz=timezone.utc))


def top_queries(endpoint: str, variant_names: list[str], window: int) -> list[dict]:
    """The MetricDataQueries of one refresh: five per variant, ids ``v<index>_<suffix>``."""
    queries = []
    for index, variant in enumerate(variant_names):
        dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
        for suffix, (metric, stat) in QUERIES.items():
            queries.append({
                "Id": f"v{index}_{suffix}",
                "Label": f"{variant} {metric} {stat}",
                "MetricStat": {"Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dimensions},
                               "Period": window, "Stat": stat},
            })
    return queries


def _value(result: dict | None, *, total: bool) -> float | None:
    """A query's figure: the sum of its values (counts), or its newest value (percentiles); None if none."""
    if not result or not result.get("Values"):
        return None
    if total:
        return float(sum(result["Values"]))
    newest = max(range(len(result["Values"])), key=lambda i: result["Timestamps"][i])
    return float(result["Values"][newest])


def top_figures(description: dict, metric_data: dict, window: int) -> dict:
    """Figures per production variant from a describe_endpoint and a get_metric_data response.

    Counts are sums over the window (0 when the window has no sample), latencies are in
    milliseconds (None when there was no request), TrafficShare is the variant's part of the
    endpoint's invocations (None when there were none) and WeightShare its part of the weights.
    Several datapoints per query (a window that crossed a period) are summed for counts; the newest
    is taken for percentiles.
    """
    results = {r["Id"]: r for r in metric_data.get("MetricDataResults", [])}
    variants = description.get("ProductionVariants", [])
    total_weight = sum(v.get("CurrentWeight", 0.0) for v in variants)
    rows = []
    for index, variant in enumerate(variants):
        def get(suffix: str, total: bool = True):
            return _value(results.get(f"v{index}_{suffix}"), total=total)

        invocations = get("inv") or 0.0
        p50, p99 = get("p50", False), get("p99", False)
        rows.append({
            "VariantName": variant["VariantName"],
            "Invocations": invocations,
            "RequestsPerSecond": invocations / window,
            "ModelLatencyP50Ms": None if p50 is None else p50 / 1000.0,
            "ModelLatencyP99Ms": None if p99 is None else p99 / 1000.0,
            "Invocation4XXErrors": get("e4") or 0.0,
            "Invocation5XXErrors": get("e5") or 0.0,
            "CurrentWeight": variant.get("CurrentWeight", 0.0),
            "WeightShare": variant.get("CurrentWeight", 0.0) / total_weight if total_weight > 0 else None,
            "CurrentInstanceCount": variant.get("CurrentInstanceCount", 0),
        })
    total = sum(row["Invocations"] for row in rows)
    for row in rows:
        row["TrafficShare"] = row["Invocations"] / total if total > 0 else None
    return {
        "EndpointName": description.get("EndpointName", ""),
        "EndpointStatus": description.get("EndpointStatus", ""),
        "WindowSeconds": window,
        "Variants": rows,
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(figures: dict, start: datetime, end: datetime, error: str | None = None):
    """A rich Table of `figures` for the window [start, end), with `error` (a failed refresh) as caption;
    under it the newest scaling activities when `figures` has any (``ScalingActivities``)."""
    table = _variants_table(figures, start, end, error)
    activities = figures.get("ScalingActivities")
    if not activities:
        return table
    from rich.console import Group

    from mve.scaling_view import activities_table

    return Group(table, activities_table(activities, SCALING_ACTIVITIES, title="Recent scaling activities"))


def _variants_table(figures: dict, start: datetime, end: datetime, error: str | None):
    from rich.table import Table

    window = f"{start.astimezone():%H:%M:%S}-{end.astimezone():%H:%M:%S}"
    table = Table(title=f"{figures['EndpointName']} ({figures['EndpointStatus']})  window {window}",
                  title_justify="left", caption=error, caption_style="red")
    for column in ("variant", "traffic", "req/s", "p50 ms", "p99 ms", "4xx", "5xx", "weight", "instances"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in figures["Variants"]:
        table.add_row(
            row["VariantName"], _percent(row["TrafficShare"]), f"{row['RequestsPerSecond']:.1f}",
            _ms(row["ModelLatencyP50Ms"]), _ms(row["ModelLatencyP99Ms"]), f"{row['Invocation4XXErrors']:g}",
            f"{row['Invocation5XXErrors']:g}", f"{row['CurrentWeight']:g} ({_percent(row['WeightShare'])})",
            str(row["CurrentInstanceCount"]))
    return table


def fetch(sm, cw, endpoint: str, window: int, now: float | None = None, aas=None) -> tuple[dict, datetime, datetime]:
    """One refresh: describe the endpoint, read its variants' metrics and (with `aas`, an
    application-autoscaling client) its newest scaling activities; (figures, start, end)."""
    description = sm.describe_endpoint(EndpointName=endpoint)
    start, end = window_bounds(time.time() if now is None else now, window)
    names = [v["VariantName"] for v in description.get("ProductionVariants", [])]
    data = {"MetricDataResults": []}
    if names:
        data = cw.get_metric_data(MetricDataQueries=top_queries(endpoint, names, window), StartTime=start,
                                  EndTime=end)
    figures = top_figures(description, data, window)
    if aas is not None and names:
        from mve.scaling_view import recent_activities

        activities = recent_activities(aas, endpoint, names, SCALING_ACTIVITIES)
        if activities:
            figures["ScalingActivities"] = activities
    return figures, start, end


def run_top(sm, cw, endpoint: str, *, window: int, interval: float, once: bool, as_json: bool, console=None,
            sleep=time.sleep, aas=None) -> int:
    """Show the table until Ctrl-C (or one frame with `once`). Errors of the first refresh propagate;
    later ones are shown under the last good figures and the view keeps refreshing. `aas` (an
    application-autoscaling client) adds the endpoint's newest scaling activities under the variants."""
    from rich.console import Console
    from rich.live import Live

    from mve.sdk.exceptions import ClientError, SDKError

    console = console or Console()
    figures, start, end = fetch(sm, cw, endpoint, window, aas=aas)
    if once:
        if as_json:
            from mve.commands_output import print_json

            print_json({**figures, "StartTime": start, "EndTime": end})
        else:
            console.print(render(figures, start, end))
        return 0
    with Live(render(figures, start, end), console=console, auto_refresh=False) as live:
        while True:
            sleep(interval)
            error = None
            try:
                figures, start, end = fetch(sm, cw, endpoint, window, aas=aas)
            except (ClientError, SDKError) as caught:
                error = f"refresh failed: {caught}"
            live.update(render(figures, start, end, error), refresh=True)
