"""InstanceBalancer: least outstanding requests among a variant's instances, random tie-break."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from mve._fastroute import MAX_INSTANCES, InstanceBalancer


def test_acquire_goes_to_the_least_loaded_instance():
    balancer = InstanceBalancer(3, seed=1)
    first = [balancer.acquire() for _ in range(3)]
    assert sorted(first) == [0, 1, 2]
    balancer.release(first[1])
    assert balancer.acquire() == first[1]
    np.testing.assert_array_equal(balancer.outstanding_all(), [1, 1, 1])


def test_release_and_outstanding_count_per_instance():
    balancer = InstanceBalancer(2, seed=0)
    a, b, c = balancer.acquire(), balancer.acquire(), balancer.acquire()
    assert {a, b} == {0, 1}
    assert balancer.outstanding(c) == 2
    balancer.release(c)
    assert balancer.outstanding(c) == 1
    assert balancer.outstanding_all().dtype == np.int64
    assert balancer.size == 2


def test_outstanding_all_is_a_copy():
    balancer = InstanceBalancer(2, seed=0)
    snapshot = balancer.outstanding_all()
    snapshot[0] = 10
    assert balancer.outstanding(0) == 0


def test_ties_are_broken_uniformly():
    """Instances 1, 3 and 4 tie at the minimum; each should win a third of the time."""
    balancer = InstanceBalancer(5, seed=77)
    for _ in range(5):
        balancer.acquire()  # one on each instance
    for index in (1, 3, 4):
        balancer.release(index)
    counts = np.zeros(5, dtype=int)
    for _ in range(30_000):
        index = balancer.acquire()
        counts[index] += 1
        balancer.release(index)
    assert counts[0] == counts[2] == 0
    assert chisquare(counts[[1, 3, 4]]).pvalue > 1e-4


def test_the_same_seed_gives_the_same_choices():
    def run(seed):
        balancer = InstanceBalancer(8, seed=seed)
        return [balancer.acquire() for _ in range(20)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_a_single_instance_takes_everything():
    balancer = InstanceBalancer(1)
    assert [balancer.acquire() for _ in range(5)] == [0] * 5
    assert balancer.outstanding(0) == 5


@pytest.mark.parametrize("n", [0, -1, MAX_INSTANCES + 1])
def test_the_instance_count_is_bounded(n):
    with pytest.raises(ValueError, match="n_instances"):
        InstanceBalancer(n)


def test_bad_indices_and_releases_are_refused():
    balancer = InstanceBalancer(2, seed=0)
    with pytest.raises(ValueError, match="no outstanding request"):
        balancer.release(0)
    for bad in (-1, 2):
        with pytest.raises(ValueError, match="out of range"):
            balancer.release(bad)
        with pytest.raises(ValueError, match="out of range"):
            balancer.outstanding(bad)
    with pytest.raises(TypeError):
        balancer.release(0.0)
    with pytest.raises(TypeError):
        InstanceBalancer(2, seed="x")


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 12),
    seed=st.integers(0, 2**64 - 1),
    ops=st.lists(st.one_of(st.just("acquire"), st.integers(0, 11)), max_size=200),
)
def test_acquire_always_picks_a_least_loaded_instance(n, seed, ops):
    """Against a plain Python model: every acquire lands on a minimum; releases count down."""
    balancer = InstanceBalancer(n, seed=seed)
    model = [0] * n
    for op in ops:
        if op == "acquire":
            index = balancer.acquire()
            assert model[index] == min(model)
            model[index] += 1
        elif op < n and model[op] > 0:
            balancer.release(op)
            model[op] -= 1
        elif op < n:
            with pytest.raises(ValueError):
                balancer.release(op)
        assert balancer.outstanding_all().tolist() == model
