"""Per-variant counters kept by the proxy, and the reporter that sends them to the control plane.

Counters follow SageMaker's metric names: Invocations, Invocation4XXErrors, Invocation5XXErrors,
InvocationModelErrors, InvocationsPerInstance (each request counts 1 / the variant's instance
count), ModelLatency and OverheadLatency in microseconds; for batched variants BatchSize (rows per
batch) and QueueTime (microseconds a request waited for its batch). Latencies, batch sizes and
queue times go into `_fastroute.LatencyHistogram`s, whose count, sum, min, max and buckets travel
to the control plane so that it can answer percentiles.

`StatsBook` keeps the counts of the current report interval (`drain` hands them over) and the
totals since the proxy started (`snapshot`, read by the Prometheus exporter). `StatsReporter`
sends each interval once: a report carries the proxy's incarnation and a sequence number, and an
unacknowledged report is resent as it was, so the control plane counts it exactly once. Each
report also names, per variant, the instances the proxy holds out of rotation as outliers at the
interval's end (``ejected_instance_ids``), so an interval with no request is still reported while
an instance is ejected: the control plane replaces an instance that stays ejected.
Reporting never runs on the request path and its failures are only logged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from dataclasses import dataclass, field

import grpc
from google.protobuf import timestamp_pb2

from mve._fastroute import LatencyHistogram
from mve._proto import control_pb2
from mve.errors import ModelError, ModelNotReady, ResourceNotFound, ValidationError

log = logging.getLogger(__name__)

@dataclass
class VariantCounters:
    """Counts and histograms for one (endpoint, variant): one report interval, or a running total."""

    invocations: int = 0
    invocation_4xx_errors: int = 0
    invocation_5xx_errors: int = 0
    invocation_model_errors: int = 0
    # InvocationsPerInstance: the sum of 1 / instance count over the requests, and the fewest and
    # most instances the variant had when a request was routed.
    per_instance_sum: float = 0.0
    min_instances: int = 0
    max_instances: int = 0
    model_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    overhead_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    batch_size: LatencyHistogram = field(default_factory=LatencyHistogram)
    queue_time: LatencyHistogram = field(default_factory=LatencyHistogram)

    def count_request(self, instances: int) -> None:
        """One more request routed to a variant of `instances` instances."""
        instances = max(instances, 1)
        self.invocations += 1
        self.per_instance_sum += 1.0 / instances
        if self.min_instances == 0 or instances < self.min_instances:
            self.min_instances = instances
        if instances > self.max_instances:
            self.max_instances = instances

    def add(self, other: "VariantCounters") -> None:
        """Add another interval's counts into this one."""
        self.invocations += other.invocations
        self.invocation_4xx_errors += other.invocation_4xx_errors
        self.invocation_5xx_errors += other.invocation_5xx_errors
        self.invocation_model_errors += other.invocation_model_errors
        self.per_instance_sum += other.per_instance_sum
        if other.min_instances and (self.min_instances == 0 or other.min_instances < self.min_instances):
            self.min_instances = other.min_instances
        self.max_instances = max(self.max_instances, other.max_instances)
        self.model_latency.merge(other.model_latency)
        self.overhead_latency.merge(other.overhead_latency)
        self.batch_size.merge(other.batch_size)
        self.queue_time.merge(other.queue_time)

    def copy(self) -> "VariantCounters":
        """An independent copy (histograms included)."""
        twin = VariantCounters()
        twin.add(self)
        return twin


def error_classes(error: BaseException) -> tuple[bool, bool, bool]:
    """(4xx, 5xx, model error) for a failed invocation, as SageMaker's metrics count it.

    A model's own failure is an InvocationModelError and a 4xx or 5xx by the status the model
    server answered; a refused request (bad input, no ready instance) is a 4xx; any other
    failure of mve's own is a 5xx.
    """
    if isinstance(error, ModelError):
        status = error.original_status_code  # the HTTP status the model answered (None: unknown)
        client_side = status is not None and 400 <= status < 500
        return client_side, not client_side, True
    if isinstance(error, (ValidationError, ResourceNotFound, ModelNotReady)):
        return True, False, False
    return False, True, False


class StatsBook:
    """Per (endpoint, variant) counters of the current interval, and totals since the start."""

    def __init__(self):
        self._counters: dict[tuple[str, str], VariantCounters] = {}
        self._totals: dict[tuple[str, str], VariantCounters] = {}

    def _entry(self, endpoint: str, variant: str) -> VariantCounters:
        key = (endpoint, variant)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = VariantCounters()
        return counters

    def record_success(
        self, endpoint: str, variant: str, model_latency_us: float, overhead_latency_us: float, instances: int = 1
    ) -> None:
        """One invocation the variant answered, routed while it had `instances` instances."""
        counters = self._entry(endpoint, variant)
        counters.count_request(instances)
        counters.model_latency.record(model_latency_us)
        counters.overhead_latency.record(overhead_latency_us)

    def record_error(self, endpoint: str, variant: str, error: BaseException, instances: int = 1) -> None:
        """One invocation routed to the variant that failed with `error`."""
        counters = self._entry(endpoint, variant)
        counters.count_request(instances)
        client_side, server_side, model = error_classes(error)
        counters.invocation_4xx_errors += client_side
        counters.invocation_5xx_errors += server_side
        counters.invocation_model_errors += model

    def record_batch(self, endpoint: str, variant: str, rows: int, requests: int, queue_times_us) -> None:
        """One batch sent to the variant: its rows, its requests and how long each request waited
        (`queue_times_us`: floats, one per request; no array is made for them)."""
        counters = self._entry(endpoint, variant)
        counters.batch_size.record(rows)
        record = counters.queue_time.record
        for queue_us in queue_times_us:
            record(queue_us)

    def drain(self) -> dict[tuple[str, str], VariantCounters]:
        """The counts since the previous drain (added to the totals); the interval starts again."""
        counters, self._counters = self._counters, {}
        for key, value in counters.items():
            total = self._totals.get(key)
            if total is None:
                total = self._totals[key] = VariantCounters()
            total.add(value)
        return counters

    def snapshot(self) -> dict[tuple[str, str], VariantCounters]:
        """Totals since the proxy started, the current interval included (independent copies)."""
        out = {key: value.copy() for key, value in self._totals.items()}
        for key, value in self._counters.items():
            out.setdefault(key, VariantCounters()).add(value)
        return out


def _sample_set(histogram: LatencyHistogram) -> control_pb2.SampleSet:
    if histogram.count == 0:
        return control_pb2.SampleSet()
    index, counts = histogram.sparse()
    return control_pb2.SampleSet(
        count=histogram.count,
        sum=histogram.sum,
        min=histogram.min,
        max=histogram.max,
        histogram=control_pb2.HistogramBuckets(index=index.tolist(), count=counts.tolist()),
    )


def _per_instance(c: VariantCounters) -> control_pb2.SampleSet:
    if c.invocations == 0:
        return control_pb2.SampleSet()
    return control_pb2.SampleSet(
        count=c.invocations, sum=c.per_instance_sum, min=1.0 / c.max_instances, max=1.0 / c.min_instances
    )


def variant_stats(
    endpoint: str, variant: str, c: VariantCounters, ejected_instance_ids: list[str] | tuple[str, ...] = ()
) -> control_pb2.VariantStats:
    """One variant's interval as the ``VariantStats`` of a report."""
    return control_pb2.VariantStats(
        endpoint_name=endpoint,
        variant_name=variant,
        invocations=c.invocations,
        invocation_4xx_errors=c.invocation_4xx_errors,
        invocation_5xx_errors=c.invocation_5xx_errors,
        invocation_model_errors=c.invocation_model_errors,
        model_latency_us=_sample_set(c.model_latency),
        overhead_latency_us=_sample_set(c.overhead_latency),
        invocations_per_instance=_per_instance(c),
        batch_size=_sample_set(c.batch_size),
        queue_time_us=_sample_set(c.queue_time),
        ejected_instance_ids=ejected_instance_ids,
    )


def stats_request(
    proxy_id: str,
    counters: dict[tuple[str, str], VariantCounters],
    *,
    incarnation: str = "",
    sequence: int = 0,
    interval_end: float | None = None,
    ejected: dict[tuple[str, str], list[str]] | None = None,
) -> control_pb2.ReportStatsRequest:
    """A ``ReportStatsRequest`` carrying `counters` and the `ejected` instance ids per (endpoint,
    variant), stamped `interval_end` (default now). A variant with ejections and no counts is
    reported with zero counts."""
    stamp = timestamp_pb2.Timestamp()
    if interval_end is None:
        stamp.GetCurrentTime()
    else:
        stamp.FromNanoseconds(int(interval_end * 1e9))
    ejected = ejected or {}
    keys = sorted(counters.keys() | ejected.keys())
    return control_pb2.ReportStatsRequest(
        proxy_id=proxy_id,
        interval_end=stamp,
        incarnation=incarnation,
        sequence=sequence,
        variants=[
            variant_stats(endpoint, variant, counters.get((endpoint, variant)) or VariantCounters(),
                          ejected.get((endpoint, variant), ()))
            for endpoint, variant in keys
        ],
    )


class StatsReporter:
    """Sends the book's intervals to the control plane, each exactly once.

    Every `interval_s` the book is drained into a report numbered 1, 2, 3, ... under this
    process's random incarnation. Reports wait in order until acknowledged and are resent
    unchanged, so the control plane, which remembers the last sequence applied per incarnation,
    ignores a report it has already counted. At most `max_pending` wait; older ones are dropped
    and counted in ``dropped_reports`` (the control plane was away for that long).

    `ejected` (the router's `ejected_instances`) names the instances out of rotation when an
    interval is taken; an interval with ejections is reported even when no request came.
    """

    def __init__(
        self, book: StatsBook, stub, proxy_id: str, interval_s: float, *, max_pending: int = 600, clock=time.time,
        ejected=None,
    ):
        self.book = book
        self.stub = stub
        self.proxy_id = proxy_id
        self.interval_s = interval_s
        self.incarnation = uuid.uuid4().hex
        self.pending: collections.deque[control_pb2.ReportStatsRequest] = collections.deque(maxlen=max_pending)
        self.dropped_reports = 0
        self._sequence = 0
        self._clock = clock
        self._ejected = ejected

    def take_interval(self) -> None:
        """Drain the book into a new pending report (nothing when the interval was empty and no
        instance is ejected)."""
        counters = self.book.drain()
        ejected = self._ejected() if self._ejected is not None else {}
        if not counters and not ejected:
            return
        if len(self.pending) == self.pending.maxlen:
            self.dropped_reports += 1
            log.warning("event=stats_report_dropped proxy=%s pending=%d", self.proxy_id, len(self.pending))
        self._sequence += 1
        self.pending.append(
            stats_request(
                self.proxy_id, counters, incarnation=self.incarnation, sequence=self._sequence,
                interval_end=self._clock(), ejected=ejected,
            )
        )

    async def send_pending(self) -> bool:
        """Send waiting reports in order; True when none is left waiting."""
        while self.pending:
            try:
                await self.stub.ReportStats(self.pending[0], timeout=max(self.interval_s, 1.0))
            except grpc.aio.AioRpcError as error:
                log.debug("event=report_stats_failed code=%s message=%r", error.code().name, error.details())
                return False
            self.pending.popleft()
        return True

    async def run_forever(self) -> None:
        """Every `interval_s`, report the interval that just ended."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.take_interval()
                await self.send_pending()
            except Exception:  # noqa: BLE001 - reporting must never stop; the reports wait for the next try
                log.exception("event=report_stats_failed")
