"""RoutingConfig.RoutingStrategy: least outstanding requests vs uniform random instance choice."""

from __future__ import annotations

import pytest
from scipy.stats import binom

from mve._fastroute import InstanceBalancer
from mve._proto import control_pb2
from mve.errors import ModelNotReady
from mve.proxy.routing.router import Router


def variant_with(strategy: str, instances: int = 4, seed: int = 11):
    table = control_pb2.RoutingTable(version=1, endpoints=[control_pb2.EndpointRoute(
        endpoint_name="ep",
        variants=[control_pb2.VariantRoute(
            variant_name="v", model_name="m", weight=1, routing_strategy=strategy,
            instances=[control_pb2.InstanceRoute(instance_id=f"i{i}", address=f"127.0.0.1:{9000 + i}")
                       for i in range(instances)],
        )],
    )])
    router = Router(seed=seed)
    assert router.apply(table)
    return router.pick("ep")


def picks_with_one_busy_instance(strategy: str, draws: int) -> int:
    """How often the instance holding 50 outstanding requests is picked in `draws` picks (each released)."""
    variant = variant_with(strategy)
    busy = 0
    for _ in range(50 * 4):  # least outstanding spreads these evenly: 50 on each instance
        variant.balancer.acquire()
    for index in range(1, 4):  # then every instance but the busy one finishes its requests
        for _ in range(50):
            variant.release(index)
    assert list(variant.balancer.outstanding_all()) == [50, 0, 0, 0]
    hits = 0
    for _ in range(draws):
        index, _ = variant.acquire()
        hits += index == busy
        variant.release(index)
    return hits


def test_least_outstanding_never_picks_the_busy_instance_and_random_picks_it_a_quarter_of_the_time():
    draws = 4000
    assert picks_with_one_busy_instance("LEAST_OUTSTANDING_REQUESTS", draws) == 0
    hits = picks_with_one_busy_instance("RANDOM", draws)
    # 4 instances: Binomial(4000, 1/4); outside [lo, hi] has probability < 1e-9 (whatever the seed).
    lo, hi = binom.ppf(1e-10, draws, 0.25), binom.isf(1e-10, draws, 0.25)
    assert lo <= hits <= hi, (lo, hits, hi)


def test_an_empty_strategy_is_random_sagemakers_default():
    assert variant_with("").routing_strategy == "RANDOM"


def test_random_counts_requests_in_flight_for_the_per_instance_limit():
    variant = variant_with("RANDOM", instances=2)
    held = [variant.acquire(limit=3)[0] for _ in range(6)]  # a full pick falls back to the least loaded
    assert sorted(held) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ModelNotReady, match="every instance has 3 requests in flight"):
        variant.acquire(limit=3)
    variant.release(1)
    assert variant.acquire(limit=3)[0] == 1


def test_random_retries_on_another_instance_uniformly():
    variant = variant_with("RANDOM", instances=3)
    seen = {0: 0, 2: 0}
    for _ in range(600):
        index, _ = variant.acquire_other(1)
        seen[index] += 1
        variant.release(index)
    assert min(seen.values()) > 200  # Binomial(600, 1/2): below 200 has probability < 1e-15
    assert list(variant.balancer.outstanding_all()) == [0, 0, 0]


def test_acquire_random_never_returns_the_excluded_instance_unless_it_is_the_only_one():
    balancer = InstanceBalancer(3, seed=5)
    assert {balancer.acquire_random(2) for _ in range(200)} == {0, 1}
    assert InstanceBalancer(1, seed=5).acquire_random(0) == 0
