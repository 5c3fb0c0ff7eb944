"""Per-variant counters kept by the proxy, and the task that reports them every second.

Counters follow SageMaker's metric names (Invocations, Invocation4XXErrors, Invocation5XXErrors,
InvocationModelErrors, ModelLatency, OverheadLatency in microseconds; for batched variants BatchSize
in rows and QueueTime in microseconds). `StatsBook` keeps the counts since the last report plus
cumulative ModelLatency, BatchSize and QueueTime histograms per variant (`_fastroute`), read by
metrics exporters. Reporting never runs on the request path and its failures are only logged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from google.protobuf import timestamp_pb2

from mve._proto import control_pb2
from mve.errors import ModelError, ModelNotReady, ResourceNotFound, ValidationError

log = logging.getLogger(__name__)


@dataclass
class VariantCounters:
    """Counts for one (endpoint, variant) over one report interval."""

    invocations: int = 0
    invocation_4xx_errors: int = 0
    invocation_5xx_errors: int = 0
    invocation_model_errors: int = 0
    model_latency_us_sum: float = 0.0
    overhead_latency_us_sum: float = 0.0
    batches: int = 0
    batched_requests: int = 0
    batched_rows: int = 0
    queue_time_us_sum: float = 0.0

    def add(self, other: "VariantCounters") -> None:
        """Add another interval's counts into this one."""
        self.invocations += other.invocations
        self.invocation_4xx_errors += other.invocation_4xx_errors
        self.invocation_5xx_errors += other.invocation_5xx_errors
        self.invocation_model_errors += other.invocation_model_errors
        self.model_latency_us_sum += other.model_latency_us_sum
        self.overhead_latency_us_sum += other.overhead_latency_us_sum
        self.batches += other.batches
        self.batched_requests += other.batched_requests
        self.batched_rows += other.batched_rows
        self.queue_time_us_sum += other.queue_time_us_sum


def _histogram():
    try:
        from mve._fastroute import LatencyHistogram

        return LatencyHistogram()
    except ImportError:  # the C hot path without histograms: counters still work
        return None


class StatsBook:
    """Counters per (endpoint, variant) since the last `drain`, and cumulative histograms.

    ``model_latency`` (us), ``batch_size`` (rows per batch) and ``queue_time`` (us a request waited
    for its batch) map (endpoint, variant) to a `_fastroute.LatencyHistogram` (None without one).
    """

    def __init__(self):
        self._counters: dict[tuple[str, str], VariantCounters] = {}
        self.model_latency: dict[tuple[str, str], object] = {}
        self.batch_size: dict[tuple[str, str], object] = {}
        self.queue_time: dict[tuple[str, str], object] = {}

    def _entry(self, key: tuple[str, str]) -> VariantCounters:
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = VariantCounters()
        return counters

    def record_success(self, endpoint: str, variant: str, model_latency_us: float, overhead_latency_us: float) -> None:
        """One invocation the variant answered."""
        key = (endpoint, variant)
        counters = self._entry(key)
        counters.invocations += 1
        counters.model_latency_us_sum += model_latency_us
        counters.overhead_latency_us_sum += overhead_latency_us
        histogram = self.model_latency.get(key)
        if histogram is None and key not in self.model_latency:
            histogram = self.model_latency[key] = _histogram()
        if histogram is not None:
            histogram.record(model_latency_us)

    def record_batch(self, endpoint: str, variant: str, rows: int, requests: int, queue_times_us) -> None:
        """One batch sent to the variant: its rows, its requests and how long each request waited."""
        key = (endpoint, variant)
        counters = self._entry(key)
        counters.batches += 1
        counters.batched_requests += requests
        counters.batched_rows += rows
        counters.queue_time_us_sum += float(sum(queue_times_us))
        if key not in self.batch_size:
            self.batch_size[key] = _histogram()
            self.queue_time[key] = _histogram()
        if self.batch_size[key] is not None:
            self.batch_size[key].record(rows)
            self.queue_time[key].record_many(queue_times_us)

    def record_error(self, endpoint: str, variant: str, error: BaseException) -> None:
        """One invocation routed to the variant that failed with `error`."""
        counters = self._entry((endpoint, variant))
        counters.invocations += 1
        if isinstance(error, ModelError):
            counters.invocation_model_errors += 1
            counters.invocation_4xx_errors += 1  # SageMaker's 424
        elif isinstance(error, (ValidationError, ResourceNotFound, ModelNotReady)):
            counters.invocation_4xx_errors += 1
        else:
            counters.invocation_5xx_errors += 1

    def drain(self) -> dict[tuple[str, str], VariantCounters]:
        """The counts since the previous drain; the book starts again from zero."""
        counters, self._counters = self._counters, {}
        return counters

    def restore(self, counters: dict[tuple[str, str], VariantCounters]) -> None:
        """Put back counts that could not be reported, to go with the next report."""
        for key, value in counters.items():
            self._entry(key).add(value)


def stats_request(proxy_id: str, counters: dict[tuple[str, str], VariantCounters]):
    """A ``ReportStatsRequest`` carrying `counters`, stamped now."""
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return control_pb2.ReportStatsRequest(
        proxy_id=proxy_id,
        interval_end=stamp,
        variants=[
            control_pb2.VariantStats(
                endpoint_name=endpoint,
                variant_name=variant,
                invocations=c.invocations,
                invocation_4xx_errors=c.invocation_4xx_errors,
                invocation_5xx_errors=c.invocation_5xx_errors,
                invocation_model_errors=c.invocation_model_errors,
                model_latency_us_sum=c.model_latency_us_sum,
                overhead_latency_us_sum=c.overhead_latency_us_sum,
                batches=c.batches,
                batched_requests=c.batched_requests,
                batched_rows=c.batched_rows,
                queue_time_us_sum=c.queue_time_us_sum,
            )
            for (endpoint, variant), c in sorted(counters.items())
        ],
    )


async def report_stats_forever(book: StatsBook, stub, proxy_id: str, interval_s: float) -> None:
    """Every `interval_s`, send the counts since the last report; keep them for later on failure."""
    while True:
        await asyncio.sleep(interval_s)
        counters = book.drain()
        if not counters:
            continue
        try:
            await stub.ReportStats(stats_request(proxy_id, counters), timeout=max(interval_s, 1.0))
        except grpc.aio.AioRpcError as error:
            book.restore(counters)
            log.debug("event=report_stats_failed code=%s message=%r", error.code().name, error.details())
        except Exception:  # noqa: BLE001 - reporting must never stop; the counts wait for the next try
            book.restore(counters)
            log.exception("event=report_stats_failed")
