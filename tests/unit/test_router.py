"""The proxy's router: variant picks from a routing table, table swaps, sticky keys (seeded, no sleeping)."""

from __future__ import annotations

from collections import Counter

import pytest
from scipy.stats import chisquare

from mve._proto import control_pb2
from mve.errors import RUNTIME, ModelNotReady, NotFound, ServiceUnavailable, ValidationError, error_name
from mve.proxy.routing.router import Router


def table(weights: dict[str, float], *, version: int = 1, cp: str = "cp-1", instances: int = 2, endpoint: str = "ep"):
    """A routing table with one endpoint whose variants have these weights."""
    return control_pb2.RoutingTable(
        version=version,
        control_plane_id=cp,
        endpoints=[
            control_pb2.EndpointRoute(
                endpoint_name=endpoint,
                variants=[
                    control_pb2.VariantRoute(
                        variant_name=name,
                        model_name=f"model-{name}",
                        weight=weight,
                        routing_strategy="LEAST_OUTSTANDING_REQUESTS",
                        instances=[
                            control_pb2.InstanceRoute(instance_id=f"{name}-{i}", address=f"127.0.0.1:{9000 + i}")
                            for i in range(instances)
                        ],
                        inputs=[control_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 30])],
                    )
                    for name, weight in weights.items()
                ],
            )
        ],
    )


def router_with(weights, seed=7, **kwargs) -> Router:
    router = Router(seed=seed)
    assert router.apply(table(weights, **kwargs))
    return router


def test_target_variant_wins_over_weights_and_reaches_a_weight_0_variant():
    router = router_with({"a": 1.0, "b": 0.0})
    assert router.pick("ep", target_variant="b").name == "b"
    assert router.pick("ep", target_variant="a").name == "a"


def test_unknown_target_variant_names_the_endpoints_variants():
    router = router_with({"a": 1.0, "b": 1.0})
    with pytest.raises(ValidationError, match="Variant c not found for endpoint ep; its variants are: a, b"):
        router.pick("ep", target_variant="c")


def test_unknown_endpoint_is_the_runtimes_validation_error_as_sagemaker_words_it():
    router = router_with({"a": 1.0})
    with pytest.raises(NotFound, match="^Endpoint nope of account 000000000000 not found.$") as info:
        router.pick("nope")
    assert error_name(info.value, RUNTIME) == "ValidationError"


def test_weight_0_variant_is_never_picked_at_random():
    router = router_with({"a": 1.0, "b": 0.0, "c": 3.0})
    picks = Counter(router.pick("ep").name for _ in range(4000))
    assert picks["b"] == 0
    assert chisquare([picks["a"], picks["c"]], [1000, 3000]).pvalue > 0.001


def test_all_zero_weights_refuse_random_picks_but_serve_targets():
    router = router_with({"a": 0.0, "b": 0.0})
    with pytest.raises(ServiceUnavailable, match="no variant with a weight above 0"):
        router.pick("ep")
    assert router.pick("ep", target_variant="a").name == "a"


def test_the_same_seed_makes_the_same_picks():
    first = router_with({"a": 1.0, "b": 1.0}, seed=42)
    second = router_with({"a": 1.0, "b": 1.0}, seed=42)
    assert [first.pick("ep").name for _ in range(200)] == [second.pick("ep").name for _ in range(200)]


def test_a_newer_table_replaces_the_weights_on_the_next_pick():
    router = router_with({"a": 1.0, "b": 0.0})
    assert {router.pick("ep").name for _ in range(100)} == {"a"}
    assert router.apply(table({"a": 0.0, "b": 1.0}, version=2))
    assert {router.pick("ep").name for _ in range(100)} == {"b"}
    assert router.state.version == 2


def test_an_older_table_from_the_same_control_plane_is_ignored():
    router = router_with({"a": 1.0}, version=5)
    assert not router.apply(table({"b": 1.0}, version=4))
    assert router.state.version == 5
    assert router.pick("ep").name == "a"


def test_a_table_from_another_control_plane_applies_whatever_its_version():
    router = router_with({"a": 1.0}, version=5, cp="cp-1")
    assert router.apply(table({"b": 1.0}, version=1, cp="cp-2"))
    assert router.pick("ep").name == "b"


@pytest.mark.parametrize(
    "bad",
    [
        table({"a": -1.0}, version=9),
        table({"a": float("nan")}, version=9),
        control_pb2.RoutingTable(
            version=9,
            control_plane_id="cp-1",
            endpoints=[control_pb2.EndpointRoute(endpoint_name="ep", variants=[
                control_pb2.VariantRoute(variant_name="a", weight=1), control_pb2.VariantRoute(variant_name="a", weight=1)
            ])],
        ),
        control_pb2.RoutingTable(
            version=9,
            control_plane_id="cp-1",
            endpoints=[control_pb2.EndpointRoute(endpoint_name="ep", variants=[
                control_pb2.VariantRoute(variant_name="a", weight=1, routing_strategy="ROUND_ROBIN")
            ])],
        ),
    ],
)
def test_an_invalid_table_is_rejected_whole_and_the_last_good_one_kept(bad):
    router = router_with({"good": 1.0}, version=1)
    assert not router.apply(bad)
    assert router.state.version == 1
    assert router.pick("ep").name == "good"


def test_sticky_keys_land_on_the_same_variant_in_every_router():
    first = router_with({"a": 1.0, "b": 1.0, "c": 1.0}, seed=1)
    second = router_with({"c": 1.0, "a": 1.0, "b": 1.0}, seed=2)  # another proxy, another order
    keys = [f"user-{i}" for i in range(300)]
    picks = [first.pick("ep", routing_key=k).name for k in keys]
    assert picks == [first.pick("ep", routing_key=k).name for k in keys]
    assert picks == [second.pick("ep", routing_key=k).name for k in keys]
    assert set(picks) == {"a", "b", "c"}


def test_a_weight_change_moves_only_the_keys_it_must():
    router = router_with({"a": 1.0, "b": 1.0, "c": 1.0})
    keys = [f"user-{i}" for i in range(600)]
    before = {k: router.pick("ep", routing_key=k).name for k in keys}
    router.apply(table({"a": 1.0, "b": 1.0, "c": 0.0}, version=2))
    after = {k: router.pick("ep", routing_key=k).name for k in keys}
    assert "c" not in after.values()
    assert all(after[k] == before[k] for k in keys if before[k] != "c")


def test_instances_are_balanced_by_outstanding_requests():
    router = router_with({"a": 1.0}, instances=3)
    variant = router.pick("ep")
    held = [variant.acquire()[0] for _ in range(3)]
    assert sorted(held) == [0, 1, 2]
    variant.release(1)
    assert variant.acquire()[0] == 1


def test_acquire_other_never_returns_the_failed_instance():
    router = router_with({"a": 1.0}, instances=3)
    variant = router.pick("ep")
    for failed in range(3):
        index, instance = variant.acquire_other(failed)
        assert index != failed and instance.instance_id == f"a-{index}"
        variant.release(index)
    assert list(variant.balancer.outstanding_all()) == [0, 0, 0]


def test_a_single_instance_has_no_other_to_retry_on():
    variant = router_with({"a": 1.0}, instances=1).pick("ep")
    assert variant.acquire_other(0) is None


def test_a_variant_without_instances_is_not_ready():
    variant = router_with({"a": 1.0}, instances=0).pick("ep")
    with pytest.raises(ModelNotReady, match="no healthy instance"):
        variant.acquire()


def test_outstanding_counts_survive_a_weight_only_table():
    router = router_with({"a": 1.0, "b": 1.0}, instances=2)
    variant = router.pick("ep", target_variant="a")
    index, _ = variant.acquire()
    router.apply(table({"a": 3.0, "b": 1.0}, version=2, instances=2))
    fresh = router.pick("ep", target_variant="a")
    assert fresh is not variant and fresh.weight == 3.0
    assert fresh.balancer.outstanding(index) == 1


def test_table_addresses_are_every_instance():
    router = router_with({"a": 1.0, "b": 1.0}, instances=2)
    assert router.state.addresses() == {"127.0.0.1:9000", "127.0.0.1:9001"}


def test_an_ejected_instance_is_skipped_until_its_ejection_ends():
    now = [100.0]
    router = Router(seed=5, clock=lambda: now[0])
    router.apply(table({"a": 1.0}, instances=2))
    variant = router.pick("ep")
    assert variant.eject(0)
    assert not variant.eject(0)  # already ejected: not news
    for _ in range(20):
        index, _ = variant.acquire()
        assert index == 1
        variant.release(index)
    now[0] += 2.5
    picks = set()
    for _ in range(20):
        index, _ = variant.acquire()
        picks.add(index)
        variant.release(index)
    assert picks == {0, 1}


def test_the_only_instance_is_tried_even_when_ejected():
    router = Router(seed=5, clock=lambda: 0.0)
    router.apply(table({"a": 1.0}, instances=1))
    variant = router.pick("ep")
    variant.eject(0)
    assert variant.acquire()[0] == 0


def fleets_table(blue: float, green: float, version: int) -> control_pb2.RoutingTable:
    """Variant "a" in both fleets of an update, with these weights."""
    t = table({"a": blue}, version=version)
    route = t.endpoints[0]
    route.variants[0].fleet = "blue"
    twin = route.variants.add()
    twin.CopyFrom(route.variants[0])
    twin.fleet, twin.weight, twin.model_name = "green", green, "model-a2"
    for i, instance in enumerate(twin.instances):
        instance.instance_id, instance.address = f"g-{i}", f"127.0.0.1:{9100 + i}"
    return t


def test_a_variant_in_both_fleets_of_an_update_splits_by_weight_and_hands_over_its_state():
    router = router_with({"a": 1.0})
    before = router.state.endpoints["ep"].variants[0]
    assert router.apply(fleets_table(0.75, 0.25, version=2))
    blue, green = router.state.endpoints["ep"].variants
    assert (blue.fleet, green.fleet) == ("blue", "green")
    assert blue.balancer is before.balancer  # blue continues the variant: same instances, same counters
    picks = Counter(router.pick("ep").model_name for _ in range(4000))
    assert chisquare([picks["model-a"], picks["model-a2"]], [3000, 1000]).pvalue > 0.001
    targeted = Counter(router.pick("ep", target_variant="a").model_name for _ in range(4000))
    assert chisquare([targeted["model-a"], targeted["model-a2"]], [3000, 1000]).pvalue > 0.001
    assert all(router.pick("ep", routing_key=f"k{i}").name == "a" for i in range(50))
    # The update ends: the variant of no fleet continues green's balancer.
    assert router.apply(fleets_table(0.0, 1.0, version=3))
    green = router.state.endpoints["ep"].variants[1]
    done = fleets_table(0.0, 1.0, version=4)
    del done.endpoints[0].variants[0]
    done.endpoints[0].variants[0].fleet = ""
    assert router.apply(done)
    assert router.state.endpoints["ep"].variants[0].balancer is green.balancer


def test_a_variant_listed_twice_in_one_fleet_is_refused():
    t = fleets_table(1.0, 0.0, version=2)
    t.endpoints[0].variants[1].fleet = "blue"
    router = Router(seed=1)
    assert not router.apply(t)
