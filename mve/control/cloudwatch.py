"""CloudWatch's read API and metric alarms as domain calls over the metric store and the alarm book.

`CloudWatchService` validates with CloudWatch's rules and error names (InvalidParameterValue,
MissingParameter, InvalidParameterCombination, InvalidNextToken, ResourceNotFound) and knows
nothing about protobuf; `cloudwatch_servicer` converts.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field

from mve.control.alarms import STATES, AlarmBook, AlarmDefinition, HistoryItem, check_dimensions, validate_definition
from mve.control.metric_catalog import STANDARD_UNITS
from mve.control.metric_query import (
    STATISTICS,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    check_period,
    check_range,
    check_statistic,
    datapoints,
    statistic_value,
)
from mve.control.metric_store import MetricStore
from mve.errors import ValidationError

QUERY_ID = re.compile(r"^[a-z][a-zA-Z0-9_]{0,254}$")
MAX_QUERIES = 500
DEFAULT_MAX_DATAPOINTS = 100_800
LIST_METRICS_PAGE = 500
HISTORY_ITEM_TYPES = ("ConfigurationUpdate", "StateUpdate", "Action")
SCAN_BY = ("TimestampDescending", "TimestampAscending")


class InvalidNextToken(ValidationError):
    """CloudWatch's InvalidNextToken."""

    reason = "InvalidNextToken"


def encode_token(kind: str, offset: int) -> str:
    """An opaque NextToken for `offset` items into a listing of `kind`."""
    return base64.urlsafe_b64encode(json.dumps({"k": kind, "o": offset}).encode()).decode()


def decode_token(token: str, kind: str) -> int:
    """The offset in a NextToken of `kind`; 0 for no token; InvalidNextToken for anything else."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = data["o"]
        if data["k"] != kind or not isinstance(offset, int) or offset < 0:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise InvalidNextToken("The NextToken is not valid for this call.") from None
    return offset


@dataclass
class StatisticsQuery:
    """GetMetricStatistics' parameters."""

    namespace: str
    metric_name: str
    dimensions: tuple[tuple[str, str], ...]
    start: float
    end: float
    period: int
    statistics: tuple[str, ...] = ()
    extended_statistics: tuple[str, ...] = ()
    unit: str = ""


@dataclass
class DataQuery:
    """One MetricDataQuery."""

    id: str
    namespace: str = ""
    metric_name: str = ""
    dimensions: tuple[tuple[str, str], ...] = ()
    period: int = 0
    stat: str = ""
    unit: str = ""
    expression: str = ""
    label: str = ""
    return_data: bool = True
    has_metric_stat: bool = True


@dataclass
class DataResult:
    """One MetricDataResult: timestamps and values in the asked order."""

    id: str
    label: str
    timestamps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    status_code: str = "Complete"


def _check_metric(namespace: str, metric_name: str, dimensions, unit: str) -> None:
    if not 1 <= len(namespace) <= 255:
        raise MissingParameter("The parameter Namespace must be 1-255 characters.")
    if not 1 <= len(metric_name) <= 255:
        raise MissingParameter("The parameter MetricName must be 1-255 characters.")
    check_dimensions(dimensions)
    if unit and unit not in STANDARD_UNITS:
        raise InvalidParameterValue(f"The parameter Unit {unit!r} is not a CloudWatch unit.")


class CloudWatchService:
    """GetMetricStatistics, GetMetricData, ListMetrics and the alarm calls."""

    def __init__(self, metrics: MetricStore, alarms: AlarmBook, *, clock=time.time, action_exists=lambda arn: False):
        self.metrics = metrics
        self.alarms = alarms
        self._clock = clock
        self.action_exists = action_exists

    # ------------------------------------------------------------ metrics

    def get_metric_statistics(self, q: StatisticsQuery) -> tuple[str, list[dict]]:
        """(label, datapoints): each a dict with Timestamp, Unit and the asked statistics."""
        _check_metric(q.namespace, q.metric_name, q.dimensions, q.unit)
        check_period(q.period)
        if not q.statistics and not q.extended_statistics:
            raise MissingParameter("At least one of the parameters Statistics and ExtendedStatistics must be specified.")
        if len(q.statistics) > 5:
            raise InvalidParameterValue("The parameter Statistics may hold at most 5 values.")
        if len(q.extended_statistics) > 10:
            raise InvalidParameterValue("The parameter ExtendedStatistics may hold at most 10 values.")
        for stat in q.statistics:
            if stat not in STATISTICS:
                raise InvalidParameterValue(
                    f"The value {stat!r} for parameter Statistics is not valid: use {', '.join(STATISTICS)}."
                )
        for stat in q.extended_statistics:
            check_statistic(stat, "ExtendedStatistics")
            if stat in STATISTICS:
                raise InvalidParameterValue(f"{stat} belongs in Statistics; ExtendedStatistics takes percentiles.")
        check_range(q.start, q.end, q.period)
        series = self.metrics.find_series(q.namespace, q.metric_name, q.dimensions)
        if series is None or (q.unit and q.unit != series.unit):
            return q.metric_name, []
        out = []
        for agg in datapoints(self.metrics, series.id, q.start, q.end, q.period):
            point: dict = {"Timestamp": agg.timestamp, "Unit": series.unit}
            for stat in q.statistics:
                point[stat] = statistic_value(agg, stat)
            extended = {}
            for stat in q.extended_statistics:
                value = statistic_value(agg, stat)
                if value is not None:
                    extended[stat] = value
            if q.extended_statistics:
                point["ExtendedStatistics"] = extended
            out.append(point)
        return q.metric_name, out

    def get_metric_data(
        self, queries: list[DataQuery], start: float, end: float, *, scan_by: str = "", max_datapoints: int = 0, next_token: str = ""
    ) -> tuple[list[DataResult], str]:
        """(results, next token): one result per query with ReturnData, up to MaxDatapoints values in all."""
        if not queries:
            raise MissingParameter("The parameter MetricDataQueries must hold at least one query.")
        if len(queries) > MAX_QUERIES:
            raise InvalidParameterValue(f"The parameter MetricDataQueries may hold at most {MAX_QUERIES} queries.")
        scan_by = scan_by or "TimestampDescending"
        if scan_by not in SCAN_BY:
            raise InvalidParameterValue(f"The parameter ScanBy must be one of {', '.join(SCAN_BY)}.")
        if max_datapoints < 0:
            raise InvalidParameterValue("The parameter MaxDatapoints must be positive.")
        limit = max_datapoints or DEFAULT_MAX_DATAPOINTS
        offset = decode_token(next_token, "metric-data")
        seen = set()
        for q in queries:
            if not QUERY_ID.match(q.id):
                raise InvalidParameterValue(
                    f"The Id {q.id!r} must start with a lower-case letter and hold only letters, digits and underscores."
                )
            if q.id in seen:
                raise InvalidParameterValue(f"The Id {q.id} is used by more than one query.")
            seen.add(q.id)
            if q.expression:
                raise InvalidParameterValue(
                    f"Query {q.id}: metric math expressions are not supported by mve; use MetricStat queries."
                )
            if not q.has_metric_stat:
                raise MissingParameter(f"Query {q.id} must have a MetricStat.")
            _check_metric(q.namespace, q.metric_name, q.dimensions, q.unit)
            check_period(q.period, f"MetricStat.Period of query {q.id}")
            check_statistic(q.stat, f"MetricStat.Stat of query {q.id}")
            check_range(start, end, q.period)
        results = []
        for q in queries:
            if not q.return_data:
                continue
            result = DataResult(q.id, q.label or q.metric_name)
            series = self.metrics.find_series(q.namespace, q.metric_name, q.dimensions)
            if series is not None and (not q.unit or q.unit == series.unit):
                for agg in datapoints(self.metrics, series.id, start, end, q.period):
                    value = statistic_value(agg, q.stat)
                    if value is not None:
                        result.timestamps.append(agg.timestamp)
                        result.values.append(value)
            if scan_by == "TimestampDescending":
                result.timestamps.reverse()
                result.values.reverse()
            results.append(result)
        # Page through the values of all results in order: skip `offset`, keep `limit`.
        position, truncated = 0, False
        for result in results:
            n = len(result.values)
            lo = min(max(offset - position, 0), n)
            hi = min(max(offset + limit - position, lo), n)
            if lo > 0 or hi < n:
                result.timestamps, result.values = result.timestamps[lo:hi], result.values[lo:hi]
            if hi < n:
                result.status_code = "PartialData"
                truncated = True
            position += n
        return results, encode_token("metric-data", offset + limit) if truncated else ""

    def list_metrics(
        self, namespace: str = "", metric_name: str = "", dimension_filters=(), recently_active: str = "", next_token: str = ""
    ) -> tuple[list[tuple[str, str, tuple]], str]:
        """(metrics as (namespace, name, dimensions), next token), 500 a page."""
        if len(dimension_filters) > 10:
            raise InvalidParameterValue("At most 10 dimension filters are allowed.")
        for name, value in dimension_filters:
            if not 1 <= len(name) <= 255 or len(value) > 1024:
                raise InvalidParameterValue("A dimension filter needs a Name of 1-255 and a Value of at most 1024 characters.")
        if recently_active not in ("", "PT3H"):
            raise InvalidParameterValue("The parameter RecentlyActive must be PT3H.")
        active_since = self._clock() - 3 * 3600 if recently_active else None
        offset = decode_token(next_token, "metrics")
        found = []
        for series in self.metrics.list_series(namespace, metric_name, active_since):
            dims = dict(series.dimensions)
            if all(name in dims and (not value or dims[name] == value) for name, value in dimension_filters):
                found.append((series.namespace, series.metric_name, series.dimensions))
        page = found[offset : offset + LIST_METRICS_PAGE]
        more = offset + LIST_METRICS_PAGE < len(found)
        return page, encode_token("metrics", offset + LIST_METRICS_PAGE) if more else ""

    # ------------------------------------------------------------ alarms

    def put_metric_alarm(self, definition: AlarmDefinition, *, other_actions: bool = False) -> None:
        """Create or update an alarm; AlarmActions may name step scaling policies only."""
        self.alarms.put(validate_definition(definition, other_actions=other_actions, action_exists=self.action_exists))

    def describe_alarms(
        self, names=(), prefix: str = "", state_value: str = "", max_records: int = 0, next_token: str = ""
    ) -> tuple[list, str]:
        """(alarms, next token), by name."""
        if names and prefix:
            raise InvalidParameterCombination("AlarmNames and AlarmNamePrefix cannot be used together.")
        if len(names) > 100:
            raise InvalidParameterValue("The parameter AlarmNames may hold at most 100 names.")
        if state_value and state_value not in STATES:
            raise InvalidParameterValue(f"The parameter StateValue must be one of {', '.join(STATES)}.")
        if not 0 <= max_records <= 100:
            raise InvalidParameterValue("The parameter MaxRecords must be between 1 and 100.")
        limit = max_records or 50
        offset = decode_token(next_token, "alarms")
        wanted = set(names)
        found = [
            a
            for a in self.alarms.list_alarms()
            if (not wanted or a.name in wanted)
            and a.name.startswith(prefix)
            and (not state_value or a.state.value == state_value)
        ]
        page = found[offset : offset + limit]
        return page, encode_token("alarms", offset + limit) if offset + limit < len(found) else ""

    def delete_alarms(self, names: list[str]) -> None:
        """Delete alarms by name (all exist, or ResourceNotFound and none is deleted)."""
        if not names:
            raise MissingParameter("The parameter AlarmNames must hold at least one name.")
        if len(names) > 100:
            raise InvalidParameterValue("The parameter AlarmNames may hold at most 100 names.")
        self.alarms.delete(list(dict.fromkeys(names)))

    def describe_alarm_history(
        self,
        name: str = "",
        item_type: str = "",
        start: float | None = None,
        end: float | None = None,
        max_records: int = 0,
        next_token: str = "",
        scan_by: str = "",
    ) -> tuple[list[HistoryItem], str]:
        """(history items, next token), newest first unless ScanBy is TimestampAscending."""
        if item_type and item_type not in HISTORY_ITEM_TYPES:
            raise InvalidParameterValue(f"The parameter HistoryItemType must be one of {', '.join(HISTORY_ITEM_TYPES)}.")
        if not 0 <= max_records <= 100:
            raise InvalidParameterValue("The parameter MaxRecords must be between 1 and 100.")
        scan_by = scan_by or "TimestampDescending"
        if scan_by not in SCAN_BY:
            raise InvalidParameterValue(f"The parameter ScanBy must be one of {', '.join(SCAN_BY)}.")
        if start is not None and end is not None and not start < end:
            raise InvalidParameterValue("The parameter StartDate must be less than EndDate.")
        limit = max_records or 100
        offset = decode_token(next_token, "history")
        items = self.alarms.history(name, item_type, start, end)
        if scan_by == "TimestampAscending":
            items.reverse()
        page = items[offset : offset + limit]
        return page, encode_token("history", offset + limit) if offset + limit < len(items) else ""
