"""LatencyHistogram: log-linear buckets in microseconds, percentiles against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mve._fastroute import LatencyHistogram

BUCKET_ERROR = 1 / 64  # a bucket's width relative to its lower edge
TEN_MINUTES_US = 600e6
QS = [0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100]


def histogram_of(values) -> LatencyHistogram:
    histogram = LatencyHistogram()
    histogram.record_many(np.asarray(values, dtype=np.float64))
    return histogram


def assert_within_bucket_error(got, expected):
    np.testing.assert_allclose(got, expected, rtol=BUCKET_ERROR * (1 + 1e-9), atol=0)


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).lognormal(mean=8, sigma=1.5, size=100_000),  # ~3 ms, long tail
        np.random.default_rng(2).uniform(1, 2000, size=10_000),
        np.random.default_rng(3).exponential(50_000, size=5_000) + 1,
    ],
    ids=["lognormal", "uniform", "exponential"],
)
def test_percentiles_match_numpy_within_the_bucket_error(values):
    histogram = histogram_of(values)
    assert_within_bucket_error(histogram.percentiles(QS), np.percentile(values, QS))
    assert histogram.percentile(0) == values.min()
    assert histogram.percentile(100) == values.max()


def test_count_sum_and_mean_are_exact():
    histogram = LatencyHistogram()
    for v in (10, 20.5, 30):
        histogram.record(v)
    assert histogram.count == 3
    assert histogram.sum == 60.5
    assert histogram.mean() == pytest.approx(60.5 / 3)


def test_one_repeated_value_is_reported_exactly():
    histogram = histogram_of([1234.5] * 7)
    assert histogram.percentiles([0, 50, 99, 100]).tolist() == [1234.5] * 4


def test_an_empty_histogram():
    histogram = LatencyHistogram()
    assert histogram.count == 0
    assert histogram.sum == 0
    assert math.isnan(histogram.mean())
    assert math.isnan(histogram.percentile(50))
    assert histogram.bucket_counts().sum() == 0


def test_sub_microsecond_and_huge_latencies_are_counted():
    histogram = histogram_of([0.0, 0.4, TEN_MINUTES_US, 1e12])
    counts = histogram.bucket_counts()
    assert histogram.count == 4
    assert counts[0] == 2
    assert counts[-1] == 1  # 1e12 us clamps into the top bucket
    assert histogram.percentile(100) == 1e12
    bounds = histogram.bucket_bounds()
    ten_minutes_bucket = np.searchsorted(bounds, TEN_MINUTES_US, side="right")
    assert counts[ten_minutes_bucket] == 1
    assert ten_minutes_bucket < len(bounds) - 1  # ten minutes is still resolved, not clamped


def test_bucket_bounds_are_log_linear_up_to_ten_minutes():
    bounds = LatencyHistogram().bucket_bounds()
    assert len(bounds) == len(LatencyHistogram().bucket_counts())
    assert bounds[0] == 1.0
    assert bounds[-1] == math.inf
    assert (np.diff(bounds) > 0).all()
    finite = bounds[:-1]
    lower, upper = finite[:-1], finite[1:]
    assert ((upper - lower) / lower <= BUCKET_ERROR + 1e-12).all()
    assert finite[-1] >= TEN_MINUTES_US


@settings(max_examples=200, deadline=None)
@given(value=st.floats(min_value=0, max_value=1e10))
def test_a_value_lands_in_the_bucket_its_bounds_say(value):
    histogram = LatencyHistogram()
    histogram.record(value)
    bucket = int(np.flatnonzero(histogram.bucket_counts())[0])
    bounds = histogram.bucket_bounds()
    assert value < bounds[bucket]
    assert bucket == 0 or value >= bounds[bucket - 1] or bucket == len(bounds) - 1


def test_merge_equals_recording_both():
    rng = np.random.default_rng(4)
    a, b = rng.lognormal(6, 1, 3000), rng.lognormal(9, 0.5, 2000)
    merged = histogram_of(a)
    merged.merge(histogram_of(b))
    both = histogram_of(np.concatenate([a, b]))
    np.testing.assert_array_equal(merged.bucket_counts(), both.bucket_counts())
    assert merged.count == both.count
    assert merged.sum == pytest.approx(both.sum)
    np.testing.assert_array_equal(merged.percentiles(QS), both.percentiles(QS))


def test_merging_an_empty_histogram_changes_nothing():
    histogram = histogram_of([5.0, 50.0])
    histogram.merge(LatencyHistogram())
    assert histogram.count == 2
    assert histogram.percentiles([0, 100]).tolist() == [5.0, 50.0]
    with pytest.raises(TypeError):
        histogram.merge(None)


def test_reset_forgets_everything():
    histogram = histogram_of([1.0, 2.0, 3.0])
    histogram.reset()
    assert histogram.count == 0
    assert histogram.sum == 0
    assert histogram.bucket_counts().sum() == 0
    histogram.record(9.0)
    assert histogram.percentiles([0, 100]).tolist() == [9.0, 9.0]


@pytest.mark.parametrize("bad", [math.nan, -1.0, -1e-9, math.inf, -math.inf])
def test_bad_latencies_are_refused(bad):
    histogram = LatencyHistogram()
    with pytest.raises(ValueError, match="latenc"):
        histogram.record(bad)
    with pytest.raises(ValueError, match=r"latencies_us\[2\]"):
        histogram.record_many(np.array([1.0, 2.0, bad, 3.0]))
    assert histogram.count == 0  # nothing of a refused array is recorded


def test_record_many_takes_any_numeric_array_and_a_large_one():
    histogram = LatencyHistogram()
    histogram.record_many(np.arange(1, 11, dtype=np.int32))
    histogram.record_many([[1.5, 2.5]])
    histogram.record_many(np.full(100_000, 7.0))
    assert histogram.count == 100_012
    assert histogram.sum == pytest.approx(55 + 4 + 700_000)


@pytest.mark.parametrize("q", [-0.1, 100.01, math.nan])
def test_percentiles_out_of_range_are_refused(q):
    histogram = histogram_of([1.0])
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        histogram.percentile(q)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        histogram.percentiles([50, q])


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(min_value=1.0, max_value=1e9), min_size=1, max_size=300),
    qs=st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=5),
)
def test_any_percentile_is_within_the_bucket_error_of_numpy(values, qs):
    histogram = histogram_of(values)
    assert_within_bucket_error(histogram.percentiles(qs), np.percentile(values, qs))
    assert histogram.count == len(values)
    assert histogram.sum == pytest.approx(math.fsum(values))


@settings(max_examples=50, deadline=None)
@given(
    a=st.lists(st.floats(min_value=0.0, max_value=2e9), max_size=100),
    b=st.lists(st.floats(min_value=0.0, max_value=2e9), max_size=100),
)
def test_merge_is_recording_both_for_any_data(a, b):
    merged = histogram_of(a)
    merged.merge(histogram_of(b))
    both = histogram_of(a + b)
    np.testing.assert_array_equal(merged.bucket_counts(), both.bucket_counts())
    assert merged.count == both.count
    if both.count:
        np.testing.assert_array_equal(merged.percentiles(QS), both.percentiles(QS))
