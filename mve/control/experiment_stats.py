"""The statistics of an experiment report, as pure functions over numpy arrays.

Every distribution comes from scipy or scikit-learn; nothing here hand-rolls a quantile or a tail.

- A proportion (accuracy, error rate): Wilson score interval (the same as
  `scipy.stats.binomtest(...).proportion_ci(method="wilson")`, computed for many at once).
- A mean (reward, latency): Student's t interval.
- Classification quality: accuracy, precision, recall, F1 and ROC AUC from `sklearn.metrics`, the
  positive label against every other label.
- Against a baseline: the two-proportion z-test (pooled standard error for the p-value, unpooled
  for the interval of the difference) and Welch's t-test (`scipy.stats.ttest_ind_from_stats` with
  ``equal_var=False``: `ttest_ind` on the samples' moments, without its warning on a constant
  sample), its interval on the Welch–Satterthwaite degrees of freedom.
- Peeking: an always-valid p-value from the mixture sequential probability ratio test (mSPRT,
  Johari, Pekelis & Walsh 2017) over the time-ordered observations, with a normal mixture of
  variance ``tau² = (TAU_IN_SD x pooled standard deviation)²``:
  ``Λ_n = sqrt(V/(V+τ²)) exp(τ² θ̂² / (2V(V+τ²)))``, ``p_n = min(1, min_{k<=n} 1/Λ_k)``, where
  θ̂ is the difference of the two running means and V its variance.
- Sample-ratio mismatch: Pearson's chi-square (`scipy.stats.chisquare`) of the observed
  invocations against those the weights in force each second predict, flagged at p < 0.001.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def _scipy_stats():
    # scipy.stats and sklearn.metrics take seconds to import: loaded with the first report, not
    # with every control plane's start.
    from scipy import stats

    return stats


def _sklearn_metrics():
    from sklearn import metrics

    return metrics

#: The mixture's standard deviation in units of the pooled per-observation standard deviation:
#: most of its weight lies on standardised effects below half a standard deviation.
TAU_IN_SD = 0.25
#: p-value under which the traffic split is flagged (Kohavi et al. recommend 0.001 for SRM).
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class Estimate:
    """A value with its confidence interval and the observations behind it."""

    value: float
    ci_low: float
    ci_high: float
    count: int


@dataclass(frozen=True)
class TestResult:
    """One variant's metric minus the baseline's: interval, fixed-horizon and always-valid p-values."""

    test: str
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    always_valid_p_value: float

    def significant(self, confidence_level: float) -> bool:
        """Whether the always-valid p-value is below 1 - confidence_level."""
        return self.always_valid_p_value < 1.0 - confidence_level


@dataclass(frozen=True)
class Classification:
    """Quality of predicted labels against true ones; None where it cannot be computed."""

    accuracy: Estimate
    precision: float
    recall: float
    f1: float
    roc_auc: float | None


@dataclass(frozen=True)
class SampleRatio:
    """The chi-square check of observed invocations against expected ones."""

    applicable: bool
    variant_names: tuple[str, ...] = ()
    observed: tuple[float, ...] = ()
    expected: tuple[float, ...] = ()
    chi_square: float = 0.0
    p_value: float = 1.0
    mismatch: bool = False
    note: str = ""


# ---------------------------------------------------------------- one sample


def wilson_intervals(successes: np.ndarray, counts: np.ndarray, confidence_level: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score intervals of successes / counts, element-wise (counts > 0), with the normal
    quantile from scipy: ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    z = float(_scipy_stats().norm.ppf(0.5 + confidence_level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def proportion_estimate(successes: int, count: int, confidence_level: float) -> Estimate | None:
    """The proportion successes / count with its Wilson score interval; None without observations."""
    if count <= 0:
        return None
    low, high = wilson_intervals(np.array([successes]), np.array([count]), confidence_level)
    return Estimate(successes / count, float(low[0]), float(high[0]), int(count))


def proportion_estimates(successes: np.ndarray, counts: np.ndarray, confidence_level: float) -> list[Estimate | None]:
    """`proportion_estimate` of each (successes, count) pair, computed at once."""
    successes, counts = np.asarray(successes, np.int64), np.asarray(counts, np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = wilson_intervals(successes, counts, confidence_level)
    return [
        Estimate(k / n, float(lo), float(hi), int(n)) if n > 0 else None
        for k, n, lo, hi in zip(successes.tolist(), counts.tolist(), low, high)
    ]


def mean_estimates(counts: np.ndarray, sums: np.ndarray, squares: np.ndarray, confidence_level: float) -> list[Estimate | None]:
    """Mean and Student's t interval of each sample given by its count, sum and sum of squares;
    None for a sample of fewer than 2 observations."""
    n = np.asarray(counts, dtype=np.float64)
    total = np.asarray(sums, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / n
        variance = np.maximum((np.asarray(squares, dtype=np.float64) - total * mean) / (n - 1), 0.0)
        half = _scipy_stats().t.ppf(0.5 + confidence_level / 2, np.maximum(n - 1, 1)) * np.sqrt(variance / n)
    return [
        Estimate(float(m), float(m - h), float(m + h), int(c)) if c >= 2 else None
        for c, m, h in zip(n.tolist(), mean, half)
    ]


def is_binary(values: np.ndarray) -> bool:
    """True when every value is 0 or 1 (rewards of a Bernoulli outcome)."""
    return bool(np.all((values == 0) | (values == 1)))


def mean_estimate(values: np.ndarray, confidence_level: float) -> Estimate | None:
    """The mean with its Student's t interval; None with fewer than 2 observations.

    Values that are all 0 or 1 are a proportion: its Wilson interval, which stays within [0, 1].
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return None
    if is_binary(values):
        return proportion_estimate(int(values.sum()), int(values.size), confidence_level)
    centred = values - values.mean()  # the sum of squares keeps its precision
    estimate = mean_estimates(np.array([values.size]), np.array([centred.sum()]), np.array([(centred**2).sum()]), confidence_level)[0]
    shift = float(values.mean())
    return Estimate(estimate.value + shift, estimate.ci_low + shift, estimate.ci_high + shift, estimate.count)


def classification(
    y_true: Sequence[str], y_pred: Sequence[str], positive_label: str, scores: np.ndarray | None, confidence_level: float
) -> Classification | None:
    """Accuracy (with a Wilson interval), precision, recall, F1 of `positive_label` against the rest,
    and ROC AUC of `scores` (the positive class's score per row; NaN rows left out).

    ROC AUC is None without scores or when the true labels hold one class only.
    """
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    if y_true.size == 0:
        return None
    correct = int(np.count_nonzero(y_true == y_pred))
    accuracy = proportion_estimate(correct, y_true.size, confidence_level)
    truth = y_true == positive_label
    predicted = y_pred == positive_label
    precision = float(_sklearn_metrics().precision_score(truth, predicted, zero_division=0.0))
    recall = float(_sklearn_metrics().recall_score(truth, predicted, zero_division=0.0))
    f1 = float(_sklearn_metrics().f1_score(truth, predicted, zero_division=0.0))
    roc_auc = None
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        known = np.isfinite(scores)
        if known.any() and np.unique(truth[known]).size == 2:
            roc_auc = float(_sklearn_metrics().roc_auc_score(truth[known], scores[known]))
    return Classification(accuracy, precision, recall, f1, roc_auc)


# ---------------------------------------------------------------- two samples


def two_proportion_test(
    successes: int, count: int, base_successes: int, base_count: int, confidence_level: float
) -> tuple[float, float, float, float]:
    """(difference, ci_low, ci_high, p) of the variant's proportion minus the baseline's.

    The p-value uses the pooled standard error (the null: one common proportion); the interval of
    the difference the unpooled one. Both samples need at least one observation.
    """
    p1, p0 = successes / count, base_successes / base_count
    difference = p1 - p0
    pooled = (successes + base_successes) / (count + base_count)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / count + 1 / base_count))
    if se_pooled == 0.0:
        p_value = 1.0  # both proportions 0, or both 1: no evidence of a difference
    else:
        p_value = float(2 * _scipy_stats().norm.sf(abs(difference) / se_pooled))
    se = math.sqrt(p1 * (1 - p1) / count + p0 * (1 - p0) / base_count)
    z = float(_scipy_stats().norm.ppf(0.5 + confidence_level / 2))
    return difference, difference - z * se, difference + z * se, p_value


def welch_test(values: np.ndarray, base_values: np.ndarray, confidence_level: float) -> tuple[float, float, float, float]:
    """(difference, ci_low, ci_high, p) of the variant's mean minus the baseline's, by Welch's t-test.

    Both samples need at least 2 observations. The interval uses the Welch–Satterthwaite degrees
    of freedom. Two constant samples: the difference is exact (p 1 when they are equal, else 0).
    """
    values = np.asarray(values, dtype=np.float64)
    base_values = np.asarray(base_values, dtype=np.float64)
    mean, base_mean = float(values.mean()), float(base_values.mean())
    sd, base_sd = float(values.std(ddof=1)), float(base_values.std(ddof=1))
    difference = mean - base_mean
    if sd == 0.0 and base_sd == 0.0:
        return difference, difference, difference, 1.0 if difference == 0.0 else 0.0
    result = _scipy_stats().ttest_ind_from_stats(mean, sd, values.size, base_mean, base_sd, base_values.size, equal_var=False)
    v, v0 = sd**2 / values.size, base_sd**2 / base_values.size
    df = (v + v0) ** 2 / (v**2 / (values.size - 1) + v0**2 / (base_values.size - 1))
    half = float(_scipy_stats().t.ppf(0.5 + confidence_level / 2, df)) * math.sqrt(v + v0)
    return difference, difference - half, difference + half, float(result.pvalue)


def msprt_p_value(
    times: np.ndarray, values: np.ndarray, base_times: np.ndarray, base_values: np.ndarray, *, proportion: bool
) -> float:
    """The always-valid p-value of "the two means differ", read after every observation in time order.

    `values` (the variant's) and `base_values` are observations at `times` and `base_times`. After
    each observation of the merged sequence, θ̂ = the variant's running mean - the baseline's, and
    V = s²/n + s0²/n0 (for proportions s² = p(1-p)). Steps where either sample has fewer than 2
    observations or V is 0 carry no evidence; observations with equal times are read together.
    τ = TAU_IN_SD x the pooled standard deviation so far.
    """
    values = np.asarray(values, dtype=np.float64)
    base_values = np.asarray(base_values, dtype=np.float64)
    merged_values = np.concatenate([values, base_values])
    if merged_values.size == 0:
        return 1.0
    is_variant = np.concatenate([np.ones(values.size, bool), np.zeros(base_values.size, bool)])
    merged_times = np.concatenate([np.asarray(times, np.float64), np.asarray(base_times, np.float64)])
    order = np.argsort(merged_times, kind="stable")
    sorted_times = merged_times[order]
    # Observations at the same time have no order: the test is read after the last of them only.
    group_end = np.append(sorted_times[1:] != sorted_times[:-1], True)
    x = merged_values[order] - merged_values.mean()  # centred: the sums of squares keep their precision
    in_variant = is_variant[order]

    def running(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = np.cumsum(mask).astype(np.float64)
        total = np.cumsum(np.where(mask, x, 0.0))
        squares = np.cumsum(np.where(mask, x * x, 0.0))
        return n, total, squares

    n1, s1, q1 = running(in_variant)
    n0, s0, q0 = running(~in_variant)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean1, mean0 = s1 / n1, s0 / n0
        if proportion:
            shift = merged_values.mean()
            p1, p0 = mean1 + shift, mean0 + shift
            var1, var0 = p1 * (1 - p1), p0 * (1 - p0)
        else:
            var1 = (q1 - s1 * mean1) / (n1 - 1)
            var0 = (q0 - s0 * mean0) / (n0 - 1)
        var1, var0 = np.maximum(var1, 0.0), np.maximum(var0, 0.0)
        v = var1 / n1 + var0 / n0
        pooled = ((n1 - 1) * var1 + (n0 - 1) * var0) / (n1 + n0 - 2)
        tau2 = TAU_IN_SD**2 * pooled
        theta = mean1 - mean0
        log_lambda = 0.5 * np.log(v / (v + tau2)) + tau2 * theta**2 / (2 * v * (v + tau2))
    usable = group_end & (n1 >= 2) & (n0 >= 2) & (v > 0) & (tau2 > 0) & np.isfinite(log_lambda)
    if not usable.any():
        return 1.0
    return float(min(1.0, math.exp(-float(log_lambda[usable].max()))))


def compare_proportions(
    times: np.ndarray, outcomes: np.ndarray, base_times: np.ndarray, base_outcomes: np.ndarray, confidence_level: float
) -> TestResult | None:
    """The two-proportion z-test and its mSPRT on 0/1 `outcomes`; None when a sample is empty."""
    outcomes = np.asarray(outcomes, dtype=np.float64)
    base_outcomes = np.asarray(base_outcomes, dtype=np.float64)
    if outcomes.size == 0 or base_outcomes.size == 0:
        return None
    difference, low, high, p = two_proportion_test(
        int(outcomes.sum()), outcomes.size, int(base_outcomes.sum()), base_outcomes.size, confidence_level
    )
    always_valid = msprt_p_value(times, outcomes, base_times, base_outcomes, proportion=True)
    # Never below the fixed-horizon p: a larger p-value is still always valid, and a reader should
    # never see peeking-safe evidence stronger than the one-look test's.
    return TestResult("two-proportion z-test", difference, low, high, p, max(always_valid, p))


def compare_counts(
    times: np.ndarray, successes: np.ndarray, counts: np.ndarray,
    base_times: np.ndarray, base_successes: np.ndarray, base_counts: np.ndarray, confidence_level: float,
) -> TestResult | None:
    """`compare_proportions` for outcomes counted per time bucket (successes of counts at each time)."""

    def expand(t, k, n):
        k, n = np.asarray(k, np.int64), np.asarray(n, np.int64)
        t = np.asarray(t, np.float64)
        return np.concatenate([np.repeat(t, k), np.repeat(t, n - k)]), np.concatenate([np.ones(k.sum()), np.zeros((n - k).sum())])

    return compare_proportions(*expand(times, successes, counts), *expand(base_times, base_successes, base_counts), confidence_level)


def compare_means(
    times: np.ndarray, values: np.ndarray, base_times: np.ndarray, base_values: np.ndarray, confidence_level: float
) -> TestResult | None:
    """Welch's t-test and its mSPRT; None when a sample has fewer than 2 observations."""
    values = np.asarray(values, dtype=np.float64)
    base_values = np.asarray(base_values, dtype=np.float64)
    if values.size < 2 or base_values.size < 2:
        return None
    difference, low, high, p = welch_test(values, base_values, confidence_level)
    always_valid = msprt_p_value(times, values, base_times, base_values, proportion=False)
    return TestResult("Welch's t-test", difference, low, high, p, max(always_valid, p))


# ---------------------------------------------------------------- traffic split


def weight_shares_at(
    times: np.ndarray, change_times: np.ndarray, change_shares: np.ndarray, initial_shares: np.ndarray
) -> np.ndarray:
    """The weight shares in force at each of `times` ([t, variants]).

    `change_shares[i]` holds from `change_times[i]` (sorted) on; before the first change,
    `initial_shares` holds.
    """
    table = np.vstack([np.asarray(initial_shares, np.float64)[None, :], np.asarray(change_shares, np.float64).reshape(-1, len(initial_shares))])
    position = np.searchsorted(np.asarray(change_times, np.float64), np.asarray(times, np.float64), side="right")
    return table[position]


def sample_ratio_check(variant_names: Sequence[str], observed: np.ndarray, expected: np.ndarray) -> SampleRatio:
    """Pearson's chi-square of `observed` against `expected` invocations, flagged at p < SRM_ALPHA.

    Not applicable with fewer than 2 variants or no invocations. A variant expected to get nothing
    (weight 0 throughout) that got invocations is a mismatch by itself.
    """
    names = tuple(variant_names)
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    seen, wanted = tuple(map(float, observed)), tuple(map(float, expected))
    if len(names) < 2:
        return SampleRatio(False, names, seen, wanted, note="fewer than 2 production variants: there is no split to check")
    if observed.sum() <= 0:
        return SampleRatio(False, names, seen, wanted, note="no invocations in the window")
    routable = expected > 0
    if (observed[~routable] > 0).any():
        unexpected = ", ".join(n for n, r, o in zip(names, routable, observed) if not r and o > 0)
        return SampleRatio(
            True, names, seen, wanted, math.inf, 0.0, True,
            f"{unexpected} got invocations while its weight was 0 (TargetVariant requests count too)",
        )
    if routable.sum() < 2:
        return SampleRatio(False, names, seen, wanted, note="fewer than 2 variants had a weight above 0")
    result = _scipy_stats().chisquare(observed[routable], expected[routable] * observed[routable].sum() / expected[routable].sum())
    p = float(result.pvalue)
    note = "invocations match the weights" if p >= SRM_ALPHA else (
        "the split does not match the weights (p < 0.001): check TargetVariant or sticky RoutingKey traffic, "
        "failing instances and the weight history before trusting the comparisons"
    )
    return SampleRatio(True, names, seen, wanted, float(result.statistic), p, p < SRM_ALPHA, note)
