"""InstanceBalancer's skip marks (instances out of rotation) and its `exclude` (a retry's other instance)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from mve._fastroute import InstanceBalancer


def test_a_skipped_instance_is_passed_over_by_both_strategies_while_others_serve():
    balancer = InstanceBalancer(3, seed=4)
    balancer.set_skipped(1, True)
    assert balancer.skipped(1) and balancer.skipped_count == 1
    least = [balancer.acquire() for _ in range(30)]
    uniform = [balancer.acquire_random() for _ in range(300)]
    assert 1 not in least and 1 not in uniform
    assert balancer.outstanding(1) == 0  # least outstanding, yet never chosen
    counts = np.bincount(uniform, minlength=3)
    assert chisquare(counts[[0, 2]]).pvalue > 1e-4  # uniform among the others


def test_unskipping_makes_an_instance_choosable_again_and_marks_are_idempotent():
    balancer = InstanceBalancer(2, seed=4)
    balancer.set_skipped(0, True)
    balancer.set_skipped(0, True)
    assert balancer.skipped_count == 1
    balancer.set_skipped(0, False)
    balancer.set_skipped(0, False)
    assert balancer.skipped_count == 0 and not balancer.skipped(0)
    assert {balancer.acquire() for _ in range(2)} == {0, 1}


def test_when_every_instance_is_skipped_all_of_them_are_candidates():
    balancer = InstanceBalancer(2, seed=4)
    balancer.set_skipped(0, True)
    balancer.set_skipped(1, True)
    assert sorted(balancer.acquire() for _ in range(4)) == [0, 0, 1, 1]  # least outstanding as usual
    assert {balancer.acquire_random() for _ in range(100)} == {0, 1}


def test_exclude_never_picks_that_instance_when_there_is_another():
    balancer = InstanceBalancer(3, seed=9)
    for _ in range(5):
        balancer.acquire(exclude=0)
    assert balancer.outstanding(0) == 0
    balancer.set_skipped(2, True)
    assert [balancer.acquire(exclude=0) for _ in range(5)] == [1] * 5
    assert [balancer.acquire_random(exclude=0) for _ in range(5)] == [1] * 5
    balancer.set_skipped(1, True)  # the only other is skipped: it still takes the retry
    assert balancer.acquire(exclude=0) in (1, 2) and balancer.acquire_random(exclude=0) in (1, 2)
    single = InstanceBalancer(1)
    assert single.acquire(exclude=0) == 0 and single.acquire_random(exclude=0) == 0


def test_skip_marks_refuse_bad_indices():
    balancer = InstanceBalancer(2)
    with pytest.raises(ValueError, match="out of range"):
        balancer.set_skipped(2, True)
    with pytest.raises(ValueError, match="out of range"):
        balancer.skipped(-1)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 10),
    seed=st.integers(0, 2**64 - 1),
    ops=st.lists(st.tuples(st.sampled_from(["acquire", "release", "skip", "unskip"]), st.integers(0, 9)), max_size=150),
)
def test_acquire_picks_a_least_loaded_unskipped_instance(n, seed, ops):
    """Against a plain Python model: the minimum among unskipped instances (all when every one is)."""
    balancer = InstanceBalancer(n, seed=seed)
    counts, skipped = [0] * n, [False] * n
    for op, index in ops:
        index %= n
        if op == "acquire":
            chosen = balancer.acquire()
            pool = [i for i in range(n) if not skipped[i]] or list(range(n))
            assert chosen in pool and counts[chosen] == min(counts[i] for i in pool)
            counts[chosen] += 1
        elif op == "release" and counts[index]:
            balancer.release(index)
            counts[index] -= 1
        elif op in ("skip", "unskip"):
            balancer.set_skipped(index, op == "skip")
            skipped[index] = op == "skip"
        assert balancer.outstanding_all().tolist() == counts
        assert balancer.skipped_count == sum(skipped)
