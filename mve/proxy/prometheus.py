"""The proxy's Prometheus collector: per-variant counters and histograms, and its routing table.

Shadow variants are variants here too: their invocations, errors and latencies under their own
VariantName. Data capture adds ``mve_capture_records_total`` and ``mve_capture_dropped_total``,
shadows ``mve_shadow_dropped_total`` (all labelled endpoint and variant). Outlier detection adds
``mve_proxy_instances_ejected`` (instances out of rotation now) and
``mve_proxy_outlier_ejections_total`` (ejections since the start, also labelled by reason).

Everything comes from `StatsBook.snapshot()` (totals since the proxy started) and the router's
current `RoutingState`, read together on the event loop's thread (see `mve.prometheus`), so a
scrape never sees a half-drained book and a counter never goes backwards.

Histograms: `_fastroute.LatencyHistogram` has 1,921 fine buckets (64 per power of two), far too
many series for Prometheus. Each exported ``le`` bound is an exact edge of a fine bucket, so its
cumulative count is an exact sum of fine buckets, never an estimate. One subtlety: a fine bucket
holds ``[lower, upper)``, so the cumulative count at an edge counts values strictly BELOW it, where
Prometheus's ``le`` means "less than or equal". The two differ only for a value exactly on the
edge. For latencies (continuous, measured in fractions of a microsecond) that is immaterial, and
the bound is labelled with the edge itself. Batch sizes are integers, where it would matter (a
full batch of exactly 8 rows must count under ``le="8"``): there the edge is the first one above
the target and the label is the largest integer below that edge, so ``le`` is exact for integers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mve._fastroute import LatencyHistogram
from mve.prometheus import direct_read

_FINE_EDGES = LatencyHistogram().bucket_bounds()  # exclusive upper edge of each fine bucket, us

# Latency targets (microseconds), a 1-2.5-5 sequence from 10 us to 60 s.
LATENCY_TARGETS_US = (
    10, 25, 50, 100, 250, 500,
    1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5,
    1e6, 2.5e6, 5e6, 1e7, 3e7, 6e7,
)
BATCH_TARGETS = tuple(2**k for k in range(11))  # 1, 2, 4, ... 1024 rows


def latency_bounds(targets_us: Iterable[float] = LATENCY_TARGETS_US) -> list[tuple[int, str]]:
    """(fine bucket index, ``le`` label in seconds) for each target: the fine edge nearest to it.

    Up to 1 ms the targets are edges themselves; above, the nearest edge is within 1/128 of the
    target (e.g. 2.5 ms -> le="0.002496"), and the label says the edge, not the target.
    """
    finite = _FINE_EDGES[:-1]
    out = []
    for target in targets_us:
        index = int(np.argmin(np.abs(finite - target)))
        out.append((index, floatToGoString(float(finite[index]) / 1e6)))
    return out


def integer_bounds(targets: Iterable[int] = BATCH_TARGETS) -> list[tuple[int, str]]:
    """(fine bucket index, ``le`` label) for integer-valued histograms such as batch size.

    The fine bucket holding `target` is cut at its upper edge; integers below that edge are
    exactly those <= the label, ceil(edge) - 1 (the target itself up to 64; 129 for 128, whose
    fine bucket is [128, 130), and so on).
    """
    out = []
    for target in targets:
        index = int(np.searchsorted(_FINE_EDGES, target, side="right"))
        out.append((index, str(math.ceil(float(_FINE_EDGES[index])) - 1)))
    return out


LATENCY_BOUNDS = latency_bounds()
BATCH_BOUNDS = integer_bounds()


def coarse_buckets(histogram: LatencyHistogram, bounds: list[tuple[int, str]]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs at `bounds`, then ``("+Inf", count)``; each an exact sum."""
    cumulative = np.cumsum(histogram.bucket_counts())
    buckets = [(label, float(cumulative[index])) for index, label in bounds]
    buckets.append(("+Inf", float(histogram.count)))
    return buckets


_COUNTERS = (
    ("mve_invocations", "Invocations routed to the variant (SageMaker Invocations).", "invocations"),
    ("mve_invocation_4xx_errors", "Invocations that failed with a client-side error (Invocation4XXErrors).",
     "invocation_4xx_errors"),
    ("mve_invocation_5xx_errors", "Invocations that failed with a server-side error (Invocation5XXErrors).",
     "invocation_5xx_errors"),
    ("mve_invocation_model_errors", "Invocations the model itself failed (InvocationModelErrors).",
     "invocation_model_errors"),
    ("mve_invocations_per_instance", "Sum over invocations of 1 / the variant's instance count (InvocationsPerInstance).",
     "per_instance_sum"),
)

# (name, help, VariantCounters field, bounds, scale to the exported unit, exported only when non-empty)
_HISTOGRAMS = (
    ("mve_model_latency_seconds", "Time the model server took to answer (ModelLatency).",
     "model_latency", LATENCY_BOUNDS, 1e-6, False),
    ("mve_overhead_latency_seconds", "Time the proxy added to the model's (OverheadLatency).",
     "overhead_latency", LATENCY_BOUNDS, 1e-6, False),
    ("mve_queue_time_seconds", "Time a request waited for its batch (QueueTime; batched variants only).",
     "queue_time", LATENCY_BOUNDS, 1e-6, True),
    ("mve_batch_size_rows", "Rows per batch sent to a model server (BatchSize; batched variants only).",
     "batch_size", BATCH_BOUNDS, 1.0, True),
)

LABELS = ("endpoint", "variant")


class ProxyCollector(Collector):
    """Collects a proxy's `StatsBook` totals and routing table at each scrape.

    `read` runs a function where the book and router may be read safely (`mve.prometheus.loop_reader`
    of the proxy's loop); the default calls it directly, for tests and single-threaded use.
    """

    def __init__(self, stats, router, read: Callable = direct_read, *, capture=None, shadows=None):
        self._stats = stats
        self._router = router
        self._read = read
        self._capture = capture  # CaptureWriter: records written and dropped
        self._shadows = shadows  # ShadowSender: copies dropped

    def _take(self):
        state = self._router.state
        # During an update a variant is in both fleets: one series per name, the fleets added up.
        totals: dict[tuple[str, str], list] = {}
        for endpoint in state.endpoints.values():
            for v in (*endpoint.variants, *endpoint.shadows):
                detector = v.outliers
                healthy = len(v.instances) - (detector.out_of_rotation() if detector is not None else 0)
                ejected = detector.ejected_count if detector is not None else 0
                entry = totals.setdefault((endpoint.name, v.name), [0, 0.0, 0])
                entry[0] += healthy
                entry[1] += v.weight
                entry[2] += ejected
        variants = [
            (endpoint, name, healthy, weight, ejected)
            for (endpoint, name), (healthy, weight, ejected) in totals.items()
        ]
        side = {"outlier_ejections": dict(self._router.ejections)}
        if self._capture is not None:
            side["capture_records"] = self._capture.written()
            side["capture_dropped"] = self._capture.dropped()
        if self._shadows is not None:
            side["shadow_dropped"] = self._shadows.dropped()
        return self._stats.snapshot(), state.version, variants, side

    def collect(self) -> Iterator:
        snapshot, version, variants, side = self._read(self._take)
        rows = sorted(snapshot.items())
        for name, documentation, attribute in _COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=LABELS)
            for key, counters in rows:
                family.add_metric(key, getattr(counters, attribute))
            yield family
        for name, documentation, attribute, bounds, scale, only_when_used in _HISTOGRAMS:
            family = HistogramMetricFamily(name, documentation, labels=LABELS)
            for key, counters in rows:
                histogram: LatencyHistogram = getattr(counters, attribute)
                if only_when_used and histogram.count == 0:
                    continue
                family.add_metric(key, coarse_buckets(histogram, bounds), histogram.sum * scale)
            yield family
        yield GaugeMetricFamily(
            "mve_proxy_routing_table_version", "Version of the routing table the proxy serves on.", value=version
        )
        instances = GaugeMetricFamily(
            "mve_proxy_variant_instances",
            "Instances of the variant in the proxy's routing table, less those out of rotation (ejected as "
            "outliers, or skipped for refusing connections).",
            labels=LABELS,
        )
        ejected = GaugeMetricFamily(
            "mve_proxy_instances_ejected",
            "Instances of the variant ejected as outliers (consecutive failures or a latency far above their "
            "siblings'), back-off or probe not yet over.",
            labels=LABELS,
        )
        weight = GaugeMetricFamily(
            "mve_proxy_variant_weight", "The variant's weight in the routing table (a shadow variant's: the fraction "
            "of requests copied to it).", labels=LABELS,
        )
        for endpoint, variant, healthy, variant_weight, variant_ejected in variants:
            instances.add_metric((endpoint, variant), healthy)
            weight.add_metric((endpoint, variant), variant_weight)
            ejected.add_metric((endpoint, variant), variant_ejected)
        yield instances
        yield weight
        yield ejected
        ejections = CounterMetricFamily(
            "mve_proxy_outlier_ejections", "Outlier ejections of the variant's instances since the proxy started, "
            "by reason (consecutive_failures, latency, probe_failed, probe_slow).",
            labels=(*LABELS, "reason"),
        )
        for labels, count in sorted(side["outlier_ejections"].items()):
            ejections.add_metric(labels, count)
        yield ejections
        for name, documentation, key in _SIDE_COUNTERS:
            if key in side:
                family = CounterMetricFamily(name, documentation, labels=LABELS)
                for labels, count in sorted(side[key].items()):
                    family.add_metric(labels, count)
                yield family


# Data capture and shadow counters: (name, help, key in the collector's side counts).
_SIDE_COUNTERS = (
    ("mve_capture_records", "Data capture records written to capture files.", "capture_records"),
    ("mve_capture_dropped", "Data capture records dropped: the writer's queue was full, or a write failed.",
     "capture_dropped"),
    ("mve_shadow_dropped", "Requests not copied to a shadow variant: --shadow-max-in-flight copies were in flight.",
     "shadow_dropped"),
)
