"""The control plane's metric time series: exactly-once reports, sums across proxies, statistics,
percentiles against numpy, roll-up and retention, and CloudWatch's parameter errors."""

from __future__ import annotations

import numpy as np
import pytest

from mve._fastroute import LatencyHistogram
from mve._proto import control_pb2
from mve.control.alarms import AlarmBook
from mve.control.cloudwatch import CloudWatchService, DataQuery, StatisticsQuery
from mve.control.metric_catalog import report_samples, variant_dimensions
from mve.control.metric_store import MetricStore
from mve.errors import ValidationError
from mve.proxy.stats import StatsBook, stats_request

T0 = 1_800_000_000.0  # a whole minute


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = MetricStore(tmp_path / "metrics.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def cloudwatch(store, clock):
    return CloudWatchService(store, AlarmBook(store, clock=clock), clock=clock)


def report(book: StatsBook, incarnation="i1", sequence=1, at=T0, proxy="p1"):
    return stats_request(proxy, book.drain(), incarnation=incarnation, sequence=sequence, interval_end=at)


def apply(store: MetricStore, request) -> bool:
    items = []
    for v in request.variants:
        items.extend((spec, variant_dimensions(v.endpoint_name, v.variant_name), s) for spec, s in report_samples(v))
    return store.apply_report(
        request.proxy_id, request.incarnation, request.sequence, request.interval_end.ToNanoseconds() / 1e9, items
    )


def stats(cloudwatch, metric, variant="A", statistics=("Sum", "SampleCount"), extended=(), period=60, start=T0 - 60, end=T0 + 120):
    _, points = cloudwatch.get_metric_statistics(
        StatisticsQuery("AWS/SageMaker", metric, variant_dimensions("ep", variant), start, end, period, statistics, extended)
    )
    return points


def test_a_report_sent_twice_counts_once_and_a_new_incarnation_adds(store, cloudwatch):
    book = StatsBook()
    for _ in range(7):
        book.record_success("ep", "A", 100.0, 10.0, instances=2)
    first = report(book)
    assert apply(store, first) is True
    assert apply(store, first) is False  # resent after a lost answer
    book.record_success("ep", "A", 100.0, 10.0)
    assert apply(store, report(book, incarnation="i2", sequence=1)) is True  # the proxy restarted
    points = stats(cloudwatch, "Invocations")
    assert sum(p["Sum"] for p in points) == 8
    per_instance = stats(cloudwatch, "InvocationsPerInstance")
    assert sum(p["Sum"] for p in per_instance) == pytest.approx(7 * 0.5 + 1)


def test_proxies_reporting_the_same_second_add_up(store, cloudwatch):
    for proxy, n in (("p1", 3), ("p2", 4)):
        book = StatsBook()
        for _ in range(n):
            book.record_success("ep", "A", 50.0, 5.0)
        apply(store, report(book, incarnation=proxy, proxy=proxy))
    (point,) = stats(cloudwatch, "Invocations", period=1, start=T0, end=T0 + 1)
    assert point["Sum"] == 7


def test_error_metrics_sum_errors_and_average_the_rate(store, cloudwatch):
    from mve.errors import InternalFailure, ModelError, ModelNotReady

    book = StatsBook()
    for _ in range(6):
        book.record_success("ep", "A", 10.0, 1.0)
    book.record_error("ep", "A", InternalFailure("x"))
    book.record_error("ep", "A", ModelError("m", original_status_code=500))
    book.record_error("ep", "A", ModelError("m", original_status_code=400))
    book.record_error("ep", "A", ModelNotReady("busy"))
    apply(store, report(book))
    (five,) = stats(cloudwatch, "Invocation5XXErrors", statistics=("Sum", "SampleCount", "Average", "Maximum"))
    assert (five["Sum"], five["SampleCount"], five["Average"], five["Maximum"]) == (2, 10, 0.2, 1.0)
    (four,) = stats(cloudwatch, "Invocation4XXErrors")
    assert four["Sum"] == 2
    (model,) = stats(cloudwatch, "InvocationModelErrors")
    assert model["Sum"] == 2
    (calls,) = stats(cloudwatch, "Invocations")
    assert calls["Sum"] == 10


def test_latency_statistics_and_percentiles_match_numpy_within_a_bucket(store, cloudwatch, clock):
    rng = np.random.default_rng(7)
    latencies = rng.lognormal(mean=7.0, sigma=0.6, size=3000)
    for second in range(3):  # three reports, three seconds
        book = StatsBook()
        for value in latencies[second * 1000 : (second + 1) * 1000]:
            book.record_success("ep", "A", float(value), 1.0)
        apply(store, report(book, sequence=second + 1, at=T0 + second))
    (point,) = stats(
        cloudwatch, "ModelLatency", statistics=("Average", "Minimum", "Maximum", "SampleCount"),
        extended=("p50", "p90", "p99", "p99.9"), period=60, start=T0, end=T0 + 60,
    )
    assert point["Unit"] == "Microseconds"
    assert point["SampleCount"] == 3000
    assert point["Average"] == pytest.approx(latencies.mean())
    assert point["Minimum"] == pytest.approx(latencies.min())
    assert point["Maximum"] == pytest.approx(latencies.max())
    for stat, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
        assert point["ExtendedStatistics"][stat] == pytest.approx(np.percentile(latencies, q), rel=1 / 64)


def test_periods_split_the_samples_by_time(store, cloudwatch):
    for second in range(10):
        book = StatsBook()
        for _ in range(second + 1):
            book.record_success("ep", "A", 10.0, 1.0)
        apply(store, report(book, sequence=second + 1, at=T0 + second))
    points = stats(cloudwatch, "Invocations", period=5, start=T0, end=T0 + 10)
    assert [(p["Timestamp"] - T0, p["Sum"]) for p in points] == [(0, 15), (5, 40)]


def test_rollup_keeps_sums_and_percentiles_and_retention_deletes(store, cloudwatch, clock):
    values = np.arange(1, 601, dtype=float)
    for second in range(60):
        book = StatsBook()
        for v in values[second * 10 : (second + 1) * 10]:
            book.record_success("ep", "A", float(v), 1.0)
        apply(store, report(book, sequence=second + 1, at=T0 + second))
    before = stats(cloudwatch, "ModelLatency", statistics=("Sum", "SampleCount"), extended=("p50",), start=T0, end=T0 + 60)
    clock.now = T0 + 3 * 3600 + 120
    rolled, deleted = store.compact()
    assert rolled > 0 and deleted == 0
    assert store.db.execute("SELECT count(*) FROM points WHERE resolution=1").fetchone()[0] == 0
    after = stats(cloudwatch, "ModelLatency", statistics=("Sum", "SampleCount"), extended=("p50",), start=T0, end=T0 + 60)
    assert after == before
    clock.now = T0 + 16 * 86400
    store.compact()
    assert stats(cloudwatch, "ModelLatency", start=T0, end=T0 + 60) == []


def test_get_metric_data_answers_several_queries_and_pages(store, cloudwatch):
    for second in range(4):
        book = StatsBook()
        book.record_success("ep", "A", 100.0 * (second + 1), 1.0)
        book.record_success("ep", "B", 10.0, 1.0)
        apply(store, report(book, sequence=second + 1, at=T0 + second))

    def query(qid, variant, stat):
        return DataQuery(qid, "AWS/SageMaker", "ModelLatency", variant_dimensions("ep", variant), 1, stat)

    results, token = cloudwatch.get_metric_data(
        [query("a", "A", "Maximum"), query("b", "B", "SampleCount")], T0, T0 + 4, scan_by="TimestampAscending"
    )
    assert token == ""
    assert [r.values for r in results] == [[100.0, 200.0, 300.0, 400.0], [1.0, 1.0, 1.0, 1.0]]
    first, token = cloudwatch.get_metric_data([query("a", "A", "Maximum")], T0, T0 + 4, max_datapoints=3)
    assert first[0].values == [400.0, 300.0, 200.0] and first[0].status_code == "PartialData" and token
    rest, token = cloudwatch.get_metric_data([query("a", "A", "Maximum")], T0, T0 + 4, max_datapoints=3, next_token=token)
    assert rest[0].values == [100.0] and token == ""


def test_list_metrics_filters_by_dimension(store, cloudwatch):
    book = StatsBook()
    book.record_success("ep", "A", 1.0, 1.0)
    book.record_success("ep", "B", 1.0, 1.0)
    apply(store, report(book))
    metrics, _ = cloudwatch.list_metrics("AWS/SageMaker", "Invocations")
    assert [dict(m[2])["VariantName"] for m in metrics] == ["A", "B"]
    metrics, _ = cloudwatch.list_metrics("", "", (("VariantName", "B"),))
    assert {m[1] for m in metrics} >= {"Invocations", "ModelLatency", "Invocation5XXErrors"}
    assert all(dict(m[2])["VariantName"] == "B" for m in metrics)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"period": 7}, "InvalidParameterValue"),
        ({"period": 0}, "MissingParameter"),
        ({"statistics": (), "extended": ()}, "MissingParameter"),
        ({"statistics": ("Median",)}, "InvalidParameterValue"),
        ({"extended": ("p101",)}, "InvalidParameterValue"),
        ({"start": T0 + 10, "end": T0}, "InvalidParameterValue"),
        ({"period": 1, "start": T0, "end": T0 + 2000}, "InvalidParameterCombination"),
        ({"namespace": ""}, "MissingParameter"),
    ],
)
def test_bad_statistics_queries_get_cloudwatch_errors(cloudwatch, change, reason):
    args = {"namespace": "AWS/SageMaker", "period": 60, "statistics": ("Sum",), "extended": (), "start": T0, "end": T0 + 60}
    args.update(change)
    with pytest.raises(ValidationError) as error:
        cloudwatch.get_metric_statistics(
            StatisticsQuery(args["namespace"], "Invocations", (), args["start"], args["end"], args["period"],
                            args["statistics"], args["extended"])
        )
    assert error.value.reason == reason


def test_metric_math_and_bad_tokens_are_refused(cloudwatch):
    with pytest.raises(ValidationError, match="metric math") as error:
        cloudwatch.get_metric_data([DataQuery("m", expression="m1*2")], T0, T0 + 60)
    assert error.value.reason == "InvalidParameterValue"
    with pytest.raises(ValidationError) as error:
        cloudwatch.list_metrics(next_token="garbage")
    assert error.value.reason == "InvalidNextToken"


def test_inconsistent_reports_are_refused():
    from mve.control.metric_catalog import check_report_counts

    good = control_pb2.VariantStats(endpoint_name="ep", variant_name="A", invocations=2, invocation_5xx_errors=1)
    assert check_report_counts(good) is None
    bad = control_pb2.VariantStats(endpoint_name="ep", variant_name="A", invocations=1, invocation_5xx_errors=2)
    assert "above invocations" in check_report_counts(bad)
    h = LatencyHistogram()
    h.record(5.0)
    index, counts = h.sparse()
    lying = control_pb2.VariantStats(
        endpoint_name="ep", variant_name="A", invocations=3,
        model_latency_us=control_pb2.SampleSet(
            count=3, sum=15, min=5, max=5, histogram=control_pb2.HistogramBuckets(index=index.tolist(), count=counts.tolist())
        ),
    )
    assert "histogram counts" in check_report_counts(lying)
