"""CloudWatch's statistics over the stored points: per-period aggregates and their validation.

`datapoints` answers one (series, start, end, period) with one `Aggregate` per period that has
samples; `statistic_value` turns an aggregate into SampleCount, Sum, Average, Minimum, Maximum or
a percentile (``p99``, ``p99.9``), percentiles from the merged `_fastroute.LatencyHistogram`
buckets (within a bucket's width, 1/64 of the value, of the exact order statistic).

Periods start at StartTime rounded down to a multiple of the period (of a minute for periods of
a minute or more), so the same query always sees the same buckets.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mve._fastroute import LatencyHistogram
from mve.control.metric_store import ROLLUP_RESOLUTION_S, MetricStore, decode_histogram, merge_histograms
from mve.errors import ValidationError

STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")
PERCENTILE = re.compile(r"^p(\d{1,2}(\.\d{1,10})?|100(\.0{1,10})?)$")
HIGH_RESOLUTION_PERIODS = (1, 5, 10, 30)
MAX_DATAPOINTS = 1440


class InvalidParameterValue(ValidationError):
    """CloudWatch's InvalidParameterValue (HTTP 400)."""

    reason = "InvalidParameterValue"


class MissingParameter(ValidationError):
    """CloudWatch's MissingParameter (HTTP 400)."""

    reason = "MissingParameter"


class InvalidParameterCombination(ValidationError):
    """CloudWatch's InvalidParameterCombination (HTTP 400)."""

    reason = "InvalidParameterCombination"


@dataclass
class Aggregate:
    """Samples of one period: count, sum, min, max and the histogram blob (None without one)."""

    timestamp: int
    count: float
    sum: float
    min: float
    max: float
    hist: bytes | None


def check_period(period: int, field: str = "Period") -> None:
    """CloudWatch's rule: 1, 5, 10, 30 or a multiple of 60 seconds."""
    if period <= 0:
        raise MissingParameter(f"The parameter {field} must be specified and greater than 0.")
    if period not in HIGH_RESOLUTION_PERIODS and period % 60:
        raise InvalidParameterValue(
            f"The parameter {field} must be 1, 5, 10, 30 or a multiple of 60; got {period}."
        )


def check_statistic(stat: str, field: str) -> None:
    """A basic statistic name or a percentile pNN[.NN] between p0 and p100."""
    if stat in STATISTICS:
        return
    if not PERCENTILE.match(stat):
        raise InvalidParameterValue(
            f"The value {stat!r} for parameter {field} is not valid: use one of {', '.join(STATISTICS)} "
            "or a percentile p0 to p100 such as p99 or p99.9."
        )


def percentile_of(stat: str) -> float | None:
    """99.9 for ``p99.9``; None for a basic statistic."""
    return float(stat[1:]) if stat.startswith("p") else None


def aligned_start(start: float, period: int) -> int:
    """StartTime rounded down to the grid the periods start on."""
    grid = period if period < ROLLUP_RESOLUTION_S else ROLLUP_RESOLUTION_S
    return int(math.floor(start / grid) * grid)


def check_range(start: float, end: float, period: int) -> None:
    """StartTime before EndTime, and at most 1440 periods between them (CloudWatch's limit)."""
    if not start < end:
        raise InvalidParameterValue("The parameter StartTime must be less than the parameter EndTime.")
    requested = math.ceil((end - aligned_start(start, period)) / period)
    if requested > MAX_DATAPOINTS:
        raise InvalidParameterCombination(
            f"You have requested up to {requested} datapoints, which exceeds the limit of {MAX_DATAPOINTS}. "
            "You may reduce the datapoints requested by increasing Period, or decreasing the time range."
        )


def datapoints(store: MetricStore, series_id: int, start: float, end: float, period: int) -> list[Aggregate]:
    """One aggregate per period in [start, end) that has samples, oldest first."""
    first = aligned_start(start, period)
    buckets: dict[int, Aggregate] = {}
    blobs: dict[int, list[bytes]] = {}
    for point in store.points(series_id, first, end):
        k = first + (point.ts - first) // period * period
        agg = buckets.get(k)
        if agg is None:
            buckets[k] = Aggregate(k, point.count, point.sum, point.min, point.max, None)
            blobs[k] = [point.hist] if point.hist else []
            continue
        agg.count += point.count
        agg.sum += point.sum
        agg.min = min(agg.min, point.min)
        agg.max = max(agg.max, point.max)
        if point.hist:
            blobs[k].append(point.hist)
    for k, agg in buckets.items():
        agg.hist = merge_histograms(blobs[k])
    return [buckets[k] for k in sorted(buckets)]


def statistic_value(agg: Aggregate, stat: str) -> float | None:
    """The statistic of one period; None when it cannot be answered (a percentile without buckets)."""
    if stat == "SampleCount":
        return agg.count
    if stat == "Sum":
        return agg.sum
    if stat == "Average":
        return agg.sum / agg.count if agg.count else None
    if stat == "Minimum":
        return agg.min
    if stat == "Maximum":
        return agg.max
    q = percentile_of(stat)
    if agg.hist is None:
        # Every sample has the same value (Invocations' ones): any percentile is that value.
        return agg.min if agg.min == agg.max else None
    histogram = LatencyHistogram()
    index, counts = decode_histogram(agg.hist)
    histogram.add_sparse(index, counts, agg.sum, agg.min, agg.max)
    return histogram.percentile(q)
