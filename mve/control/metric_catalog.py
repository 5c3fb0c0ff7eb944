"""Which metrics mve keeps, with SageMaker's names, namespaces and units, and how a proxy's
report becomes their samples.

Every metric is stored as samples aggregated per second: count, sum, min, max and, for the
metrics that answer percentiles, a `_fastroute.LatencyHistogram`'s buckets. A CloudWatch
statistic is then a function of those: SampleCount = count, Sum = sum, Average = sum / count.

SageMaker's sample semantics are kept: Invocations sends 1 per request; the error metrics send
1 for a failed request and 0 otherwise (so Sum counts errors and Average is the error rate);
InvocationsPerInstance sends 1 / the variant's instance count; ModelLatency and OverheadLatency
send one value per answered request in microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAGEMAKER = "AWS/SageMaker"
ENDPOINTS = "/aws/sagemaker/Endpoints"
MVE = "mve"


@dataclass(frozen=True)
class MetricSpec:
    """A metric's namespace, name and CloudWatch unit; `percentiles` when it keeps a histogram."""

    namespace: str
    name: str
    unit: str
    percentiles: bool = False
    description: str = ""


CATALOG: tuple[MetricSpec, ...] = (
    MetricSpec(SAGEMAKER, "Invocations", "None", description="requests routed to the variant (Sum)"),
    MetricSpec(SAGEMAKER, "Invocation4XXErrors", "None", description="1 per request that failed with a 4xx, else 0"),
    MetricSpec(SAGEMAKER, "Invocation5XXErrors", "None", description="1 per request that failed with a 5xx, else 0"),
    MetricSpec(SAGEMAKER, "InvocationModelErrors", "None", description="1 per request the model failed, else 0"),
    MetricSpec(SAGEMAKER, "InvocationsPerInstance", "None", description="1 / instance count per request (Sum)"),
    MetricSpec(SAGEMAKER, "ModelLatency", "Microseconds", True, "time the model server took"),
    MetricSpec(SAGEMAKER, "OverheadLatency", "Microseconds", True, "time in the proxy, not in the model"),
    MetricSpec(ENDPOINTS, "CPUUtilization", "Percent", True, "a model server's CPU, 100 per busy core"),
    MetricSpec(ENDPOINTS, "MemoryUtilization", "Percent", True, "a model server's resident memory"),
    MetricSpec(MVE, "BatchSize", "Count", True, "rows per batch sent to an instance"),
    MetricSpec(MVE, "QueueTime", "Microseconds", True, "time a request waited for its batch"),
)

BY_KEY: dict[tuple[str, str], MetricSpec] = {(m.namespace, m.name): m for m in CATALOG}

# CloudWatch's StandardUnit values.
STANDARD_UNITS = frozenset(
    """Seconds Microseconds Milliseconds Bytes Kilobytes Megabytes Gigabytes Terabytes Bits Kilobits
    Megabits Gigabits Terabits Percent Count Bytes/Second Kilobytes/Second Megabytes/Second
    Gigabytes/Second Terabytes/Second Bits/Second Kilobits/Second Megabits/Second Gigabits/Second
    Terabits/Second Count/Second None""".split()
)


@dataclass
class Samples:
    """Samples of one metric: count, sum, min, max and optional histogram buckets (index, counts)."""

    count: float
    sum: float
    min: float
    max: float
    index: np.ndarray | None = None
    counts: np.ndarray | None = None


def variant_dimensions(endpoint: str, variant: str) -> tuple[tuple[str, str], ...]:
    """The (EndpointName, VariantName) dimension set, sorted by name."""
    return (("EndpointName", endpoint), ("VariantName", variant))


def _indicator(errors: int, total: int) -> Samples:
    # `errors` ones among `total` samples of 0 or 1.
    return Samples(total, errors, 0.0 if errors < total else 1.0, 1.0 if errors else 0.0)


def _from_sample_set(sample_set) -> Samples | None:
    if sample_set.count == 0:
        return None
    index = counts = None
    if sample_set.HasField("histogram") and len(sample_set.histogram.index):
        index = np.asarray(sample_set.histogram.index, dtype=np.int64)
        counts = np.asarray(sample_set.histogram.count, dtype=np.int64)
    return Samples(sample_set.count, sample_set.sum, sample_set.min, sample_set.max, index, counts)


def report_samples(variant_stats) -> list[tuple[MetricSpec, Samples]]:
    """The samples one ``VariantStats`` of a proxy's report adds, metric by metric."""
    v = variant_stats
    out: list[tuple[MetricSpec, Samples]] = []
    if v.invocations:
        n = v.invocations
        out.append((BY_KEY[SAGEMAKER, "Invocations"], Samples(n, n, 1.0, 1.0)))
        out.append((BY_KEY[SAGEMAKER, "Invocation4XXErrors"], _indicator(v.invocation_4xx_errors, n)))
        out.append((BY_KEY[SAGEMAKER, "Invocation5XXErrors"], _indicator(v.invocation_5xx_errors, n)))
        out.append((BY_KEY[SAGEMAKER, "InvocationModelErrors"], _indicator(v.invocation_model_errors, n)))
    for name, field in (
        ((SAGEMAKER, "InvocationsPerInstance"), v.invocations_per_instance),
        ((SAGEMAKER, "ModelLatency"), v.model_latency_us),
        ((SAGEMAKER, "OverheadLatency"), v.overhead_latency_us),
        ((MVE, "BatchSize"), v.batch_size),
        ((MVE, "QueueTime"), v.queue_time_us),
    ):
        samples = _from_sample_set(field)
        if samples is not None:
            out.append((BY_KEY[name], samples))
    return out


def check_report_counts(variant_stats) -> str | None:
    """Why a ``VariantStats`` is inconsistent (errors above invocations, bad histogram), or None."""
    v = variant_stats
    for field in ("invocation_4xx_errors", "invocation_5xx_errors", "invocation_model_errors"):
        if getattr(v, field) > v.invocations:
            return f"{field} ({getattr(v, field)}) is above invocations ({v.invocations})"
    for name in ("model_latency_us", "overhead_latency_us", "invocations_per_instance", "batch_size", "queue_time_us"):
        sample_set = getattr(v, name)
        if sample_set.count == 0:
            continue
        values = (sample_set.sum, sample_set.min, sample_set.max)
        if not all(np.isfinite(values)) or sample_set.min < 0 or sample_set.min > sample_set.max:
            return f"{name} has a sum, min or max that is not finite, negative or ordered"
        histogram = sample_set.histogram
        if len(histogram.index) != len(histogram.count):
            return f"{name} histogram has {len(histogram.index)} indexes for {len(histogram.count)} counts"
        if len(histogram.index) and sum(histogram.count) != sample_set.count:
            return f"{name} histogram counts {sum(histogram.count)} samples, not {sample_set.count}"
    return None
