"""The experiment statistics against values worked out by hand from their textbook formulas
(with scipy only for the normal and t quantiles), on fixed data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mve.control import experiment_stats as st


def test_wilson_interval_of_45_of_50():
    estimate = st.proportion_estimate(45, 50, 0.95)
    assert estimate.value == 0.9 and estimate.count == 50
    # (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    assert estimate.ci_low == pytest.approx(0.7863976856252035, abs=1e-12)
    assert estimate.ci_high == pytest.approx(0.9565242350681096, abs=1e-12)
    assert st.proportion_estimate(0, 0, 0.95) is None


def test_t_interval_of_a_mean():
    estimate = st.mean_estimate(np.array([1.0, 0.0, 2.0, 3.0, 1.5]), 0.95)
    assert estimate.value == pytest.approx(1.5)
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((0.11177744740110329, 2.8882225525988967), abs=1e-12)
    assert st.mean_estimate(np.array([4.0]), 0.95) is None


def test_two_proportion_z_test():
    difference, low, high, p = st.two_proportion_test(90, 100, 80, 100, 0.95)
    assert difference == pytest.approx(0.1)
    # pooled p = 0.85: z = 0.1 / sqrt(0.85 x 0.15 x 2/100) = 1.98030
    assert p == pytest.approx(0.047670380656161464, rel=1e-9)
    # unpooled standard error sqrt(0.09/100 + 0.16/100) for the interval
    assert (low, high) == pytest.approx((0.002001800772997303, 0.1979981992270027), abs=1e-12)


def test_welch_t_test_with_welch_satterthwaite_interval():
    a = np.array([12.1, 11.8, 13.0, 12.6, 12.2, 11.9, 12.8])
    b = np.array([11.2, 11.9, 11.5, 11.1, 11.7, 11.4])
    difference, low, high, p = st.welch_test(a, b, 0.95)
    assert difference == pytest.approx(0.8761904761904749)
    # df = (va + vb)² / (va²/(na-1) + vb²/(nb-1)) = 10.3715
    assert p == pytest.approx(0.0019655380260575517, rel=1e-9)
    assert (low, high) == pytest.approx((0.4031096056333392, 1.3492713467476105), abs=1e-9)


def test_classification_metrics_on_fixed_labels():
    y_true = ["1", "1", "1", "0", "0", "1", "0", "2"]
    y_pred = ["1", "0", "1", "1", "0", "1", "0", "1"]
    scores = np.array([0.9, 0.4, 0.8, 0.7, 0.2, 0.6, 0.1, 0.5])
    quality = st.classification(y_true, y_pred, "1", scores, 0.95)
    # 5 of 8 right; positive "1": TP 3, FP 2 ("0"->1, "2"->1), FN 1
    assert quality.accuracy.value == pytest.approx(5 / 8)
    assert quality.precision == pytest.approx(3 / 5)
    assert quality.recall == pytest.approx(3 / 4)
    assert quality.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    # positives' scores 0.9 0.4 0.8 0.6 against 0.7 0.2 0.1 0.5: 13 of 16 pairs ordered right
    assert quality.roc_auc == pytest.approx(13 / 16)
    assert st.classification(["1", "1"], ["1", "0"], "1", np.array([0.9, 0.2]), 0.95).roc_auc is None  # one class
    assert st.classification(["1", "0"], ["1", "0"], "1", None, 0.95).roc_auc is None


def _reference_msprt(times, x, times0, x0, proportion):
    """The mSPRT p-value one observation at a time, as Johari et al. write it."""
    merged = sorted([(t, 1, v) for t, v in zip(times, x)] + [(t, 0, v) for t, v in zip(times0, x0)])
    arms = {0: [], 1: []}
    best = 0.0
    for t, arm, v in merged:
        arms[arm].append(v)
        a, b = np.array(arms[1]), np.array(arms[0])
        if a.size < 2 or b.size < 2:
            continue
        if proportion:
            va, vb = a.mean() * (1 - a.mean()), b.mean() * (1 - b.mean())
        else:
            va, vb = a.var(ddof=1), b.var(ddof=1)
        v_n = va / a.size + vb / b.size
        pooled = ((a.size - 1) * va + (b.size - 1) * vb) / (a.size + b.size - 2)
        tau2 = st.TAU_IN_SD**2 * pooled
        if v_n <= 0 or tau2 <= 0:
            continue
        theta = a.mean() - b.mean()
        best = max(best, 0.5 * math.log(v_n / (v_n + tau2)) + tau2 * theta**2 / (2 * v_n * (v_n + tau2)))
    return min(1.0, math.exp(-best))


@pytest.mark.parametrize("proportion", [True, False])
def test_msprt_matches_the_step_by_step_definition(proportion):
    rng = np.random.default_rng(3)
    n = 120
    if proportion:
        x, x0 = (rng.random(n) < 0.95).astype(float), (rng.random(n) < 0.8).astype(float)
    else:
        x, x0 = rng.normal(1.0, 1.0, n), rng.normal(0.6, 1.2, n)
    t, t0 = rng.random(n), rng.random(n)
    assert st.msprt_p_value(t, x, t0, x0, proportion=proportion) == pytest.approx(
        _reference_msprt(t, x, t0, x0, proportion), rel=1e-9
    )


def test_always_valid_p_is_at_least_the_fixed_horizon_p():
    rng = np.random.default_rng(11)
    for seed_effect in (0.02, 0.05, 0.08):
        ok = (rng.random(800) < 0.9 + seed_effect).astype(float)
        base = (rng.random(800) < 0.9).astype(float)
        times, base_times = np.sort(rng.random(800)), np.sort(rng.random(800))
        result = st.compare_proportions(times, ok, base_times, base, 0.95)
        raw = st.msprt_p_value(times, ok, base_times, base, proportion=True)
        assert raw >= result.p_value
        assert result.always_valid_p_value >= result.p_value
    values, base_values = rng.normal(10.4, 2, 400), rng.normal(10, 2, 400)
    result = st.compare_means(np.arange(400.0), values, np.arange(400.0), base_values, 0.95)
    assert st.msprt_p_value(np.arange(400.0), values, np.arange(400.0), base_values, proportion=False) >= result.p_value


def test_peeking_after_every_observation_rarely_rejects_a_true_null():
    rng = np.random.default_rng(5)
    runs, rejected, naive = 200, 0, 0
    for _ in range(runs):
        x, x0 = (rng.random(600) < 0.9).astype(float), (rng.random(600) < 0.9).astype(float)
        times, times0 = np.sort(rng.random(600)), np.sort(rng.random(600))
        rejected += st.msprt_p_value(times, x, times0, x0, proportion=True) < 0.05
        # The fixed-horizon test read at 20 looks: what peeking does to it.
        naive += any(
            st.two_proportion_test(x[:k].sum(), k, x0[:k].sum(), k, 0.95)[3] < 0.05 for k in range(30, 601, 30)
        )
    assert rejected / runs <= 0.06
    assert naive > 2 * rejected


def test_sample_ratio_mismatch_flags_55_45_of_10000_at_50_50():
    srm = st.sample_ratio_check(["A", "B"], [5500, 4500], [5000, 5000])
    assert srm.applicable and srm.mismatch
    assert srm.chi_square == pytest.approx(100.0)
    assert srm.p_value == pytest.approx(stats.chi2.sf(100.0, 1))


def test_sample_ratio_of_a_fair_split_is_not_flagged():
    rng = np.random.default_rng(2)
    a = int(rng.binomial(10_000, 0.5))
    srm = st.sample_ratio_check(["A", "B"], [a, 10_000 - a], [5000, 5000])
    assert srm.applicable and not srm.mismatch and srm.p_value > 0.001


def test_sample_ratio_not_applicable_cases():
    assert not st.sample_ratio_check(["A"], [10], [10]).applicable
    assert not st.sample_ratio_check(["A", "B"], [0, 0], [0, 0]).applicable
    zero_weight = st.sample_ratio_check(["A", "B"], [100, 5], [105, 0])
    assert zero_weight.applicable and zero_weight.mismatch and "B" in zero_weight.note


def test_weights_in_force_second_by_second():
    times = np.array([0.0, 5.0, 10.0, 15.0])
    shares = st.weight_shares_at(times, np.array([5.0, 12.0]), np.array([[0.2, 0.8], [0.9, 0.1]]), np.array([0.5, 0.5]))
    assert shares.tolist() == [[0.5, 0.5], [0.2, 0.8], [0.2, 0.8], [0.9, 0.1]]


def test_wilson_intervals_equal_scipys_binomtest_proportion_ci():
    pairs = [(0, 1), (1, 1), (3, 10), (45, 50), (171, 171), (912, 1000)]
    estimates = st.proportion_estimates(np.array([k for k, _ in pairs]), np.array([n for _, n in pairs]), 0.9)
    for (k, n), estimate in zip(pairs, estimates):
        reference = stats.binomtest(k, n).proportion_ci(0.9, method="wilson")
        assert (estimate.ci_low, estimate.ci_high) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert st.proportion_estimates(np.array([0]), np.array([0]), 0.9) == [None]


def test_mean_estimates_from_prefix_sums_equal_one_at_a_time():
    values = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    counts = np.arange(len(values) + 1)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    squares = np.concatenate([[0.0], np.cumsum(values**2)])
    estimates = st.mean_estimates(counts, sums, squares, 0.95)
    assert estimates[:2] == [None, None]
    for n in range(2, len(values) + 1):
        one = st.mean_estimate(values[:n], 0.95)
        reference = stats.t.interval(0.95, n - 1, loc=values[:n].mean(), scale=stats.sem(values[:n]))
        assert (estimates[n].value, estimates[n].ci_low, estimates[n].ci_high) == pytest.approx((one.value, *reference))


def test_the_mean_of_binary_rewards_is_a_proportion_whose_interval_stays_within_0_and_1():
    rewards = np.array([1.0] * 99 + [0.0])
    estimate = st.mean_estimate(rewards, 0.95)
    assert estimate.value == pytest.approx(0.99)
    assert 0.0 <= estimate.ci_low < 0.99 < estimate.ci_high <= 1.0
    low, high = st.wilson_intervals(np.array([99]), np.array([100]), 0.95)
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((low[0], high[0]))
