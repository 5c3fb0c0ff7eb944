"""Metric alarms as CloudWatch defines them, evaluated by the control plane.

An alarm watches one statistic of one series over `period`-second periods. Each evaluation looks
at the last `evaluation_periods` complete periods (a period is complete `settle_s` after it ends,
since proxies report once a second); when at least `datapoints_to_alarm` of them breach the
threshold the alarm is ALARM, else OK. Periods without data count as `treat_missing_data` says:
``missing`` (the default) skips them and, when all are missing, the state is INSUFFICIENT_DATA;
``ignore`` skips them and keeps the current state when all are missing; ``breaching`` and
``notBreaching`` count them as such. New alarms start in INSUFFICIENT_DATA.

Alarms and their history are kept in the metric store's database. Every state change is added to
the history and passed to the listeners (`subscribe`): safe updates roll back on ALARM and step
scaling acts on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

import grpc

from mve.control.metric_catalog import STANDARD_UNITS
from mve.control.metric_query import (
    STATISTICS,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    check_period,
    check_statistic,
    datapoints,
    statistic_value,
)
from mve.control.metric_store import MetricStore, where
from mve.errors import MveError

log = logging.getLogger(__name__)

OK, ALARM, INSUFFICIENT_DATA = "OK", "ALARM", "INSUFFICIENT_DATA"
STATES = (OK, ALARM, INSUFFICIENT_DATA)
OPERATORS = {
    "GreaterThanOrEqualToThreshold": (lambda v, t: v >= t, "greater than or equal to"),
    "GreaterThanThreshold": (lambda v, t: v > t, "greater than"),
    "LessThanThreshold": (lambda v, t: v < t, "less than"),
    "LessThanOrEqualToThreshold": (lambda v, t: v <= t, "less than or equal to"),
}
ANOMALY_OPERATORS = ("LessThanLowerOrGreaterThanUpperThreshold", "LessThanLowerThreshold", "GreaterThanUpperThreshold")
TREAT_MISSING = ("missing", "ignore", "breaching", "notBreaching")
ARN_PREFIX = "arn:mve:cloudwatch:local:000000000000:alarm:"
MAX_ALARMS = 5000
MAX_HISTORY_PER_ALARM = 1000
# A period is evaluated this long after it ends: proxies report each second's counts a second later.
DEFAULT_SETTLE_S = 2.0
NAME_LIMIT = 255

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alarm_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, alarm_name TEXT NOT NULL, ts REAL NOT NULL,
    item_type TEXT NOT NULL, summary TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alarm_history_by_name ON alarm_history (alarm_name, ts);
"""


class ResourceNotFound(MveError):
    """CloudWatch's ResourceNotFound (HTTP 404)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "ResourceNotFound"


class LimitExceeded(MveError):
    """CloudWatch's LimitExceeded."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "LimitExceeded"


@dataclass(frozen=True)
class AlarmDefinition:
    """What PutMetricAlarm sets: the metric, the statistic, the periods and the threshold."""

    name: str
    namespace: str
    metric_name: str
    dimensions: tuple[tuple[str, str], ...]
    period: int
    evaluation_periods: int
    threshold: float
    comparison_operator: str
    statistic: str = ""
    extended_statistic: str = ""
    datapoints_to_alarm: int = 0
    treat_missing_data: str = "missing"
    unit: str = ""
    description: str = ""
    actions_enabled: bool = True
    # Step scaling policies (their ARNs) this alarm drives while in ALARM.
    alarm_actions: tuple[str, ...] = ()

    @property
    def stat(self) -> str:
        """The statistic or the extended statistic, whichever is set."""
        return self.statistic or self.extended_statistic

    @property
    def arn(self) -> str:
        """The alarm's ARN."""
        return ARN_PREFIX + self.name


@dataclass
class AlarmState:
    """An alarm's current state and when it was set."""

    value: str = INSUFFICIENT_DATA
    reason: str = "Unchecked: Initial alarm creation"
    reason_data: str = ""
    updated: float = 0.0
    transitioned: float = 0.0
    configuration_updated: float = 0.0


@dataclass
class Alarm:
    """A definition with its state."""

    definition: AlarmDefinition
    state: AlarmState = field(default_factory=AlarmState)

    @property
    def name(self) -> str:
        """The alarm's name."""
        return self.definition.name


@dataclass(frozen=True)
class HistoryItem:
    """One entry of DescribeAlarmHistory."""

    alarm_name: str
    timestamp: float
    item_type: str
    summary: str
    data: str


def validate_definition(
    d: AlarmDefinition, *, other_actions: bool = False, action_exists: Callable[[str], bool] = lambda arn: False
) -> AlarmDefinition:
    """The definition with defaults filled in; CloudWatch's errors for anything out of range."""
    if not 1 <= len(d.name) <= NAME_LIMIT:
        raise MissingParameter("The parameter AlarmName must be 1-255 characters.")
    if not d.namespace or len(d.namespace) > NAME_LIMIT:
        raise MissingParameter("The parameter Namespace must be 1-255 characters (metric math alarms are not supported).")
    if not d.metric_name or len(d.metric_name) > NAME_LIMIT:
        raise MissingParameter("The parameter MetricName must be 1-255 characters.")
    if len(d.description) > 1024:
        raise InvalidParameterValue("The parameter AlarmDescription must be at most 1024 characters.")
    check_dimensions(d.dimensions)
    if bool(d.statistic) == bool(d.extended_statistic):
        raise InvalidParameterCombination("Exactly one of Statistic and ExtendedStatistic must be specified.")
    if d.statistic and d.statistic not in STATISTICS:
        raise InvalidParameterValue(f"The parameter Statistic must be one of {', '.join(STATISTICS)}.")
    if d.extended_statistic:
        check_statistic(d.extended_statistic, "ExtendedStatistic")
        if d.extended_statistic in STATISTICS:
            raise InvalidParameterValue("The parameter ExtendedStatistic must be a percentile such as p99.")
    check_period(d.period)
    if d.evaluation_periods < 1:
        raise InvalidParameterValue("The parameter EvaluationPeriods must be at least 1.")
    if d.period * d.evaluation_periods > 86400:
        raise InvalidParameterCombination(
            "The product of EvaluationPeriods and Period must not exceed 86400 seconds (one day)."
        )
    datapoints_to_alarm = d.datapoints_to_alarm or d.evaluation_periods
    if not 1 <= datapoints_to_alarm <= d.evaluation_periods:
        raise InvalidParameterValue("The parameter DatapointsToAlarm must be between 1 and EvaluationPeriods.")
    if d.comparison_operator in ANOMALY_OPERATORS:
        raise InvalidParameterValue(
            f"ComparisonOperator {d.comparison_operator} needs an anomaly detection band, which mve does not support."
        )
    if d.comparison_operator not in OPERATORS:
        raise InvalidParameterValue(f"The parameter ComparisonOperator must be one of {', '.join(OPERATORS)}.")
    treat = d.treat_missing_data or "missing"
    if treat not in TREAT_MISSING:
        raise InvalidParameterValue(f"The parameter TreatMissingData must be one of {', '.join(TREAT_MISSING)}.")
    if d.unit and d.unit not in STANDARD_UNITS:
        raise InvalidParameterValue(f"The parameter Unit {d.unit!r} is not a CloudWatch unit.")
    if not _finite(d.threshold):
        raise InvalidParameterValue("The parameter Threshold must be a finite number.")
    if other_actions:
        raise InvalidParameterValue(
            "OKActions and InsufficientDataActions are not supported: mve has no notification service. Watch the "
            "state with DescribeAlarms or name the alarm in a deployment."
        )
    if len(d.alarm_actions) > 5:
        raise InvalidParameterValue("AlarmActions may name at most 5 actions.")
    for action in d.alarm_actions:
        if not action_exists(action):
            raise InvalidParameterValue(
                f"AlarmActions {action!r} is not a step scaling policy of mve (PutScalingPolicy gives its ARN); "
                "other actions are not supported: mve has no notification service."
            )
    return replace(d, datapoints_to_alarm=datapoints_to_alarm, treat_missing_data=treat)


def check_dimensions(dimensions) -> None:
    """At most 30 dimensions, names 1-255 and values 1-1024 characters, no name twice."""
    if len(dimensions) > 30:
        raise InvalidParameterValue("At most 30 dimensions are allowed.")
    names = set()
    for name, value in dimensions:
        if not 1 <= len(name) <= NAME_LIMIT:
            raise InvalidParameterValue("A dimension Name must be 1-255 characters.")
        if not 1 <= len(value) <= 1024:
            raise InvalidParameterValue(f"The value of dimension {name} must be 1-1024 characters.")
        if name in names:
            raise InvalidParameterValue(f"The dimension {name} is given more than once.")
        names.add(name)


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def _short(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%d/%m/%y %H:%M:%S")


def evaluate(
    definition: AlarmDefinition, values: list[tuple[int, float | None]], current: str, now: float
) -> tuple[str, str, str]:
    """The new (state, reason, reason data) from the evaluated periods' values (None: no data).

    `values` holds the last `evaluation_periods` periods, oldest first.
    """
    compare, words = OPERATORS[definition.comparison_operator]
    threshold = definition.threshold
    treat = definition.treat_missing_data
    present = [(ts, v) for ts, v in values if v is not None]
    breaching = [(ts, v) for ts, v in present if compare(v, threshold)]
    missing = len(values) - len(present)
    breach_count = len(breaching) + (missing if treat == "breaching" else 0)
    data = {
        "version": "1.0",
        "queryDate": _stamp(now),
        "startDate": _stamp(values[0][0]) if values else _stamp(now),
        "statistic": definition.stat,
        "period": definition.period,
        "recentDatapoints": [v for _, v in reversed(present)],
        "threshold": threshold,
        "evaluatedDatapoints": [{"timestamp": _stamp(ts), "value": v} for ts, v in reversed(present)],
    }
    if not present and treat in ("missing", "ignore"):
        if treat == "ignore" and current != INSUFFICIENT_DATA:
            return current, "", ""
        reason = f"Insufficient Data: {len(values)} datapoints were unknown."
        return INSUFFICIENT_DATA, reason, json.dumps(data)
    points = ", ".join(f"{v:g} ({_short(ts)})" for ts, v in reversed(present)) or "missing"
    if breach_count >= definition.datapoints_to_alarm:
        shown = ", ".join(f"{v:g} ({_short(ts)})" for ts, v in reversed(breaching)) or "missing"
        count = breach_count
        reason = (
            f"Threshold Crossed: {count} out of the last {len(values)} datapoints [{shown}] "
            f"{'was' if count == 1 else 'were'} {words} the threshold ({threshold:g}) "
            f"(minimum {definition.datapoints_to_alarm} datapoint{'s' if definition.datapoints_to_alarm != 1 else ''} "
            "for OK -> ALARM transition)."
        )
        return ALARM, reason, json.dumps(data)
    reason = (
        f"Threshold Crossed: no more than {definition.datapoints_to_alarm - 1} of the last {len(values)} "
        f"datapoints [{points}] {'was' if breach_count == 1 else 'were'} {words} the threshold ({threshold:g})."
    )
    return OK, reason, json.dumps(data)


Listener = Callable[[Alarm, str, str], None]


class AlarmBook:
    """The alarms, their persistence and history, and their evaluation against the metric store."""

    def __init__(self, metrics: MetricStore, *, clock=time.time, settle_s: float = DEFAULT_SETTLE_S):
        self.metrics = metrics
        self.db = metrics.db
        self._clock = clock
        self.settle_s = settle_s
        self.db.executescript(_SCHEMA)
        self._alarms: dict[str, Alarm] = {}
        self._listeners: list[Listener] = []
        for (body,) in self.db.execute("SELECT body FROM alarms ORDER BY name").fetchall():
            alarm = _alarm_from_json(body)
            self._alarms[alarm.name] = alarm

    # ------------------------------------------------------------ API

    def put(self, definition: AlarmDefinition) -> Alarm:
        """Create an alarm (INSUFFICIENT_DATA) or replace the configuration of an existing one."""
        now = self._clock()
        existing = self._alarms.get(definition.name)
        if existing is None and len(self._alarms) >= MAX_ALARMS:
            raise LimitExceeded(f"The maximum number of alarms ({MAX_ALARMS}) was reached.")
        if existing is None:
            alarm = Alarm(definition, AlarmState(updated=now, transitioned=now, configuration_updated=now))
            summary = f'Alarm "{definition.name}" created'
        else:
            alarm = Alarm(definition, replace(existing.state, configuration_updated=now))
            summary = f'Alarm "{definition.name}" updated'
        self._alarms[definition.name] = alarm
        self._save(alarm)
        self._history(definition.name, now, "ConfigurationUpdate", summary, {"type": "Create" if existing is None else "Update", "updatedAlarm": _definition_json(definition)})
        self.evaluate(alarm, now)
        return alarm

    def get(self, name: str) -> Alarm | None:
        """The alarm by name, or None."""
        return self._alarms.get(name)

    def list_alarms(self) -> list[Alarm]:
        """Every alarm, by name (a copy of the list: safe to read from another thread)."""
        return [self._alarms[name] for name in sorted(self._alarms)]

    def delete(self, names: list[str]) -> None:
        """Delete alarms; ResourceNotFound (and nothing deleted) when any does not exist."""
        missing = [n for n in names if n not in self._alarms]
        if missing:
            raise ResourceNotFound(f"The following alarms were not found: {', '.join(missing)}")
        with self.metrics._transaction():
            for name in names:
                self.db.execute("DELETE FROM alarms WHERE name=?", (name,))
                self.db.execute("DELETE FROM alarm_history WHERE alarm_name=?", (name,))
        for name in names:
            del self._alarms[name]

    def history(self, name: str = "", item_type: str = "", start: float | None = None, end: float | None = None) -> list[HistoryItem]:
        """History items, newest first."""
        clause, args = where(("alarm_name=?", name), ("item_type=?", item_type), ("ts>=?", start), ("ts<?", end))
        query = f"SELECT alarm_name, ts, item_type, summary, data FROM alarm_history{clause} ORDER BY ts DESC, id DESC"
        return [HistoryItem(*row) for row in self.db.execute(query, args).fetchall()]

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(alarm, old_state, new_state)`` on every state change."""
        self._listeners.append(listener)

    # ------------------------------------------------------------ evaluation

    def values(self, definition: AlarmDefinition, now: float) -> list[tuple[int, float | None]]:
        """The statistic of each of the last `evaluation_periods` complete periods (None: no data)."""
        p = definition.period
        end = int((now - self.settle_s) // p * p)
        start = end - definition.evaluation_periods * p
        series = self.metrics.find_series(definition.namespace, definition.metric_name, definition.dimensions)
        found = {}
        if series is not None and (not definition.unit or definition.unit == series.unit):
            for agg in datapoints(self.metrics, series.id, start, end, p):
                found[agg.timestamp] = statistic_value(agg, definition.stat)
        return [(ts, found.get(ts)) for ts in range(start, end, p)]

    def evaluate(self, alarm: Alarm, now: float | None = None) -> bool:
        """Evaluate one alarm now; True when its state changed."""
        now = self._clock() if now is None else now
        old = alarm.state.value
        new, reason, data = evaluate(alarm.definition, self.values(alarm.definition, now), old, now)
        if new == old:
            return False
        alarm.state = replace(alarm.state, value=new, reason=reason, reason_data=data, updated=now, transitioned=now)
        self._save(alarm)
        self._history(
            alarm.name, now, "StateUpdate", f"Alarm updated from {old} to {new}",
            {
                "version": "1.0",
                "oldState": {"stateValue": old},
                "newState": {"stateValue": new, "stateReason": reason, "stateReasonData": json.loads(data) if data else {}},
            },
        )
        log.info("event=alarm_state alarm=%s from=%s to=%s reason=%r", alarm.name, old, new, reason)
        for listener in list(self._listeners):
            try:
                listener(alarm, old, new)
            except Exception:  # noqa: BLE001 - one listener's bug must not stop evaluation
                log.exception("event=alarm_listener_failed alarm=%s", alarm.name)
        return True

    def evaluate_all(self, now: float | None = None) -> int:
        """Evaluate every alarm; the number whose state changed."""
        now = self._clock() if now is None else now
        return sum(self.evaluate(alarm, now) for alarm in list(self._alarms.values()))

    async def run_forever(self, interval_s: float = 1.0) -> None:
        """Evaluate every alarm each `interval_s`, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.evaluate_all()
            except Exception:  # noqa: BLE001 - evaluation goes on; the error is logged
                log.exception("event=alarm_evaluation_failed")

    # ------------------------------------------------------------ persistence

    def _save(self, alarm: Alarm) -> None:
        body = json.dumps({"definition": _definition_json(alarm.definition), "state": asdict(alarm.state)})
        self.db.execute("INSERT OR REPLACE INTO alarms (name, body) VALUES (?, ?)", (alarm.name, body))

    def _history(self, name: str, ts: float, item_type: str, summary: str, data: dict) -> None:
        self.db.execute(
            "INSERT INTO alarm_history (alarm_name, ts, item_type, summary, data) VALUES (?, ?, ?, ?, ?)",
            (name, ts, item_type, summary, json.dumps(data)),
        )
        self.db.execute(
            "DELETE FROM alarm_history WHERE alarm_name=? AND id NOT IN "
            "(SELECT id FROM alarm_history WHERE alarm_name=? ORDER BY id DESC LIMIT ?)",
            (name, name, MAX_HISTORY_PER_ALARM),
        )


def _definition_json(d: AlarmDefinition) -> dict:
    data = asdict(d)
    data["dimensions"] = [list(x) for x in d.dimensions]
    data["alarm_actions"] = list(d.alarm_actions)
    return data


def _alarm_from_json(body: str) -> Alarm:
    data = json.loads(body)
    definition = data["definition"]
    definition["dimensions"] = tuple(tuple(x) for x in definition["dimensions"])
    definition["alarm_actions"] = tuple(definition.get("alarm_actions", ()))
    return Alarm(AlarmDefinition(**definition), AlarmState(**data["state"]))

