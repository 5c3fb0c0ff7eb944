"""WeightedChooser: O(1) weighted variant choice (alias table + seeded xoshiro256**)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from mve._fastroute import StickyChooser, WeightedChooser

PICKS = 200_000
P_MIN = 1e-4  # fixed seeds make these tests deterministic; this is the bar the seeds pass


def shares_fit(counts: np.ndarray, weights: list[float]) -> float:
    """The chi-square p-value of counts over the positive weights against their shares."""
    w = np.asarray(weights, dtype=float)
    positive = w > 0
    expected = w[positive] / w[positive].sum() * counts.sum()
    return chisquare(counts[positive], expected).pvalue


@pytest.mark.parametrize(
    "weights",
    [[1, 1], [1, 2, 7], [0.5, 0.0, 0.25, 0.25], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [1e-3, 1.0], list(range(1, 31))],
)
def test_picks_follow_the_weights(weights):
    chooser = WeightedChooser(weights, seed=12345)
    counts = np.bincount(chooser.pick_many(PICKS), minlength=len(weights))
    assert shares_fit(counts, weights) > P_MIN
    assert all(counts[i] == 0 for i, w in enumerate(weights) if w == 0)


def test_single_picks_follow_the_weights():
    weights = [2, 0, 1, 1]
    chooser = WeightedChooser(weights, seed=7)
    counts = np.bincount([chooser.pick() for _ in range(PICKS)], minlength=4)
    assert counts[1] == 0
    assert shares_fit(counts, weights) > P_MIN


def test_the_same_seed_gives_the_same_picks_in_pick_pick_many_and_fill():
    weights = [1, 2, 3, 0, 4]
    one = WeightedChooser(weights, seed=99)
    singles = np.array([one.pick() for _ in range(1000)])
    bulk = WeightedChooser(weights, seed=99).pick_many(1000)
    filled = np.empty(1000, dtype=np.int64)
    WeightedChooser(weights, seed=99).fill(filled)
    np.testing.assert_array_equal(singles, bulk)
    np.testing.assert_array_equal(bulk, filled)
    assert not np.array_equal(bulk, WeightedChooser(weights, seed=100).pick_many(1000))


@pytest.mark.parametrize("weights", [[1, 1, 1, 2], list(range(1, 11)), list(range(0, 40))], ids=["4", "10", "40"])
def test_the_stream_goes_on_across_calls_of_any_size(weights):
    """Picks come eight to a step of the generator (in a SIMD loop for up to 16 columns where
    the CPU has AVX2): calls of any size, in any mix, must neither skip nor repeat a pick."""
    a = WeightedChooser(weights, seed=5)
    b = WeightedChooser(weights, seed=5)
    strided = np.empty(14, dtype=np.int64)
    parts = [a.pick_many(11), [a.pick()], a.pick_many(5001), [a.pick(), a.pick()], a.pick_many(0)]
    a.fill(strided[::2])
    parts += [strided[::2], [a.pick()], a.pick_many(4096 * 3 + 1)]
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(joined, b.pick_many(len(joined)))


def test_unseeded_choosers_differ():
    runs = {tuple(WeightedChooser([1] * 10).pick_many(64)) for _ in range(3)}
    assert len(runs) == 3


def test_fill_writes_into_a_strided_view_only():
    chooser = WeightedChooser([0, 1], seed=1)
    buffer = np.full(20, -1, dtype=np.int64)
    chooser.fill(buffer[::2])
    assert (buffer[::2] == 1).all()
    assert (buffer[1::2] == -1).all()


@pytest.mark.parametrize(
    "out",
    [np.empty(4, dtype=np.int32), np.empty((2, 2), dtype=np.int64), [0, 0, 0], np.empty(4, dtype=np.float64)],
    ids=["int32", "2-d", "list", "float64"],
)
def test_fill_rejects_anything_but_a_1d_int64_array(out):
    with pytest.raises(ValueError, match="int64"):
        WeightedChooser([1, 2]).fill(out)


def test_fill_rejects_a_read_only_array():
    out = np.empty(4, dtype=np.int64)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        WeightedChooser([1, 2]).fill(out)


def test_pick_many_sizes():
    chooser = WeightedChooser([1, 2], seed=3)
    assert chooser.pick_many(0).shape == (0,)
    assert chooser.pick_many(0).dtype == np.int64
    with pytest.raises(ValueError, match=">= 0"):
        chooser.pick_many(-1)
    with pytest.raises(TypeError):
        chooser.pick_many(2.5)


def test_set_weights_replaces_the_table_and_its_size():
    chooser = WeightedChooser([1, 1], seed=11)
    chooser.set_weights([0, 0, 1, 3])
    assert chooser.size == 4
    counts = np.bincount(chooser.pick_many(PICKS), minlength=4)
    assert counts[0] == counts[1] == 0
    assert shares_fit(counts, [0, 0, 1, 3]) > P_MIN
    chooser.set_weights([5])
    assert chooser.size == 1
    assert set(chooser.pick_many(1000).tolist()) == {0}


def test_invalid_set_weights_leaves_the_chooser_unchanged():
    chooser = WeightedChooser([0, 1], seed=2)
    with pytest.raises(ValueError):
        chooser.set_weights([1, -1])
    assert chooser.size == 2
    np.testing.assert_array_equal(chooser.weights, [0, 1])
    assert set(chooser.pick_many(1000).tolist()) == {1}


def test_weights_are_the_given_weights_read_only_and_copied():
    given_weights = np.array([2.0, 0.0, 6.0])
    chooser = WeightedChooser(given_weights)
    given_weights[0] = 100.0
    np.testing.assert_array_equal(chooser.weights, [2.0, 0.0, 6.0])
    assert chooser.weights.dtype == np.float64
    with pytest.raises(ValueError):
        chooser.weights[0] = 1.0


def test_extreme_but_finite_weights():
    chooser = WeightedChooser([1.7e308, 1.7e308, 0.0], seed=4)
    counts = np.bincount(chooser.pick_many(PICKS), minlength=3)
    assert counts[2] == 0
    assert shares_fit(counts, [1, 1, 0]) > P_MIN
    tiny = WeightedChooser([5e-324, 0.0], seed=4)
    assert set(tiny.pick_many(100).tolist()) == {0}


BAD_WEIGHTS = [
    ([], "empty"),
    ([0, 0, 0], "all zero"),
    ([1, -0.5], r"weights\[1\] is -0.5"),
    ([1, math.nan], r"weights\[1\] is nan"),
    ([math.inf, 1], r"weights\[0\] is inf"),
    ([1, -math.inf], r"weights\[1\] is -inf"),
    ([[1, 2], [3, 4]], "1-D"),
    (["a", "b"], "sequence of numbers"),
    (3.0, "1-D"),
]


@pytest.mark.parametrize("chooser", [WeightedChooser, StickyChooser])
@pytest.mark.parametrize(("weights", "message"), BAD_WEIGHTS)
def test_bad_weights_are_refused_with_a_clear_message(chooser, weights, message):
    with pytest.raises(ValueError, match=message):
        chooser(weights)


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), (2**64, ValueError), ("7", TypeError), (1.5, TypeError)])
def test_bad_seeds_are_refused(seed, error):
    with pytest.raises(error, match="seed"):
        WeightedChooser([1], seed=seed)


def test_the_largest_seed_is_accepted():
    assert WeightedChooser([1, 1], seed=2**64 - 1).pick() in (0, 1)


weight_lists = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e6)), min_size=1, max_size=40
).filter(lambda w: any(x > 0 for x in w))


@settings(max_examples=60, deadline=None)
@given(weights=weight_lists, seed=st.integers(0, 2**64 - 1))
def test_only_positive_weights_are_ever_picked(weights, seed):
    picks = WeightedChooser(weights, seed=seed).pick_many(5000)
    positive = {i for i, w in enumerate(weights) if w > 0}
    assert set(picks.tolist()) <= positive


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    weights=st.lists(st.one_of(st.just(0.0), st.floats(min_value=0.05, max_value=1.0)), min_size=1, max_size=12).filter(
        lambda w: any(x > 0 for x in w)
    )
)
def test_shares_follow_any_weights(weights):
    counts = np.bincount(WeightedChooser(weights, seed=2024).pick_many(PICKS), minlength=len(weights))
    assert all(counts[i] == 0 for i, w in enumerate(weights) if w == 0)
    if sum(w > 0 for w in weights) > 1:
        assert shares_fit(counts, weights) > P_MIN
