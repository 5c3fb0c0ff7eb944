"""Outlier ejection in the proxy: the router's instance choice, the upstream call's outcomes, the
stats report and the Prometheus series (fake model servers, injected clock, no sleeping)."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest
from test_proxy_dataplane import FakePool, doubling_model, invoke, rpc_error
from test_prometheus import scrape, value

from mve._proto import control_pb2
from mve.errors import ModelError, ValidationError
from mve.proxy.dataplane import DataPlane
from mve.proxy.prometheus import ProxyCollector
from mve.proxy.routing.outliers import OutlierPolicy
from mve.proxy.routing.router import LEAST_OUTSTANDING_REQUESTS, RANDOM, Router
from mve.proxy.stats import StatsBook, StatsReporter


class Clock:
    def __init__(self, now: float = 500.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def table(instances=("i0", "i1"), *, version=1, weight=1.0, strategy=LEAST_OUTSTANDING_REQUESTS):
    return control_pb2.RoutingTable(
        version=version,
        control_plane_id="cp",
        endpoints=[
            control_pb2.EndpointRoute(
                endpoint_name="ep",
                variants=[
                    control_pb2.VariantRoute(
                        variant_name="v1", model_name="m1", weight=weight, routing_strategy=strategy,
                        instances=[
                            control_pb2.InstanceRoute(instance_id=i, address=f"a{i[1:]}") for i in instances
                        ],
                        inputs=[control_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 3])],
                    )
                ],
            )
        ],
    )


def ejected_router(strategy=LEAST_OUTSTANDING_REQUESTS, instances=("i0", "i1")):
    clock = Clock()
    router = Router(seed=5, clock=clock, outliers=OutlierPolicy(consecutive_failures=3, ejection_s=10.0))
    assert router.apply(table(instances, strategy=strategy))
    variant = router.pick("ep")
    for _ in range(3):
        variant.outliers.failed(0)
    return router, clock


@pytest.mark.parametrize("strategy", [LEAST_OUTSTANDING_REQUESTS, RANDOM])
def test_acquire_skips_an_ejected_instance_until_its_probe(strategy):
    router, clock = ejected_router(strategy)
    variant = router.pick("ep")
    assert router.ejected_instances() == {("ep", "v1"): ["i0"]}
    picks = []
    for _ in range(50):
        index, instance = variant.acquire()
        picks.append(instance.instance_id)
        variant.release(index)
    assert set(picks) == {"i1"}
    clock.now += 10.0
    probes = []
    for _ in range(200):  # held requests: the probe stays in flight
        index, instance = variant.acquire()
        probes.append(instance.instance_id)
    assert probes.count("i0") == 1  # one probe at a time


def test_a_retry_never_goes_back_to_the_instance_that_failed_and_prefers_one_in_rotation():
    router, _ = ejected_router(instances=("i0", "i1", "i2"))
    variant = router.pick("ep")
    for _ in range(20):
        index, instance = variant.acquire_other(1)
        assert instance.instance_id == "i2"  # not i1 (it failed), not i0 (ejected)
        variant.release(index)


def test_a_weight_only_table_keeps_the_outlier_state():
    router, _ = ejected_router()
    before = router.pick("ep")
    assert router.apply(table(version=2, weight=3.0))
    after = router.pick("ep")
    assert after is not before and after.weight == 3.0
    assert after.outliers is before.outliers and after.ejected_instance_ids() == ["i0"]
    assert {after.acquire()[1].instance_id for _ in range(10)} == {"i1"}


def test_a_table_that_changes_the_instances_carries_the_ejection_by_instance_id():
    router, _ = ejected_router()
    assert router.apply(table(("i1", "i2", "i0"), version=2))  # a replacement started: i2
    variant = router.pick("ep")
    assert variant.ejected_instance_ids() == ["i0"]
    picks = {variant.acquire()[1].instance_id for _ in range(30)}
    assert picks == {"i1", "i2"}


def dataplane_with(behaviours, clock, **policy):
    router = Router(seed=3, clock=clock, outliers=OutlierPolicy(**policy))
    assert router.apply(table(strategy=RANDOM))
    pool = FakePool(behaviours)
    return DataPlane(router, pool, StatsBook(), model_timeout_s=60.0), pool, router


def test_calls_that_time_out_eject_the_instance_and_the_next_ones_all_go_to_its_sibling():
    clock = Clock()
    timeout = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    dataplane, pool, router = dataplane_with({"a0": timeout, "a1": doubling_model}, clock, consecutive_failures=5)
    failures = 0
    for _ in range(200):
        try:
            invoke(dataplane)
        except ModelError as error:
            assert error.original_status_code == 504
            failures += 1
        if router.ejected_instances():
            break
    assert failures == 5 and router.ejected_instances() == {("ep", "v1"): ["i0"]}
    pool.calls.clear()
    for _ in range(50):
        invoke(dataplane)
    assert {address for address, _, _ in pool.calls} == {"a1"}
    # After the back-off the probe goes to a0, now healthy: it is back in rotation.
    pool.behaviours["a0"] = doubling_model
    clock.now += 10.0
    for _ in range(50):
        invoke(dataplane)
    assert router.ejected_instances() == {}
    assert router.ejections == Counter({("ep", "v1", "consecutive_failures"): 1})


def test_the_callers_bad_input_and_a_4xx_answer_never_eject():
    clock = Clock()
    bad = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "the model expects [-1, 4]")
    dataplane, _, router = dataplane_with({"a0": bad, "a1": bad}, clock, consecutive_failures=1)
    for _ in range(20):
        with pytest.raises(ValidationError):
            invoke(dataplane)
    assert router.ejected_instances() == {}


def test_model_failures_count_and_an_answer_breaks_the_row():
    clock = Clock()
    calls = Counter()

    def flaky(address):
        def model(request):
            calls[address] += 1
            if calls[address] % 3:  # on each instance: two failures, then an answer
                raise rpc_error(grpc.StatusCode.INTERNAL, "boom")
            return doubling_model(request)

        return model

    dataplane, pool, router = dataplane_with({"a0": flaky("a0"), "a1": flaky("a1")}, clock, consecutive_failures=3)
    for _ in range(60):
        try:
            invoke(dataplane)
        except ModelError:
            pass
    assert sum(calls.values()) == 60 and router.ejected_instances() == {}
    pool.behaviours["a0"] = rpc_error(grpc.StatusCode.INTERNAL, "boom")  # now a0 fails every time
    for _ in range(40):
        try:
            invoke(dataplane)
        except ModelError:
            pass
    assert router.ejected_instances() == {("ep", "v1"): ["i0"]}


def test_a_report_names_the_ejected_instances_even_in_an_interval_with_no_request():
    async def main():
        router, clock = ejected_router()

        class Stub:
            sent = []

            async def ReportStats(self, request, timeout=None):
                self.sent.append(request)

        stub = Stub()
        reporter = StatsReporter(StatsBook(), stub, "p1", 1.0, clock=lambda: 100.0, ejected=router.ejected_instances)
        reporter.take_interval()
        assert await reporter.send_pending()
        (report,) = stub.sent
        (stats,) = report.variants
        assert (stats.endpoint_name, stats.variant_name, list(stats.ejected_instance_ids)) == ("ep", "v1", ["i0"])
        assert stats.invocations == 0
        clock.now += 10.0
        variant = router.pick("ep")
        held = [variant.acquire()[0] for _ in range(2)]  # least outstanding: one of the two is i0's probe
        variant.outliers.succeeded(0, 900.0)  # the probe answered: i0 is back in rotation
        for index in held:
            variant.release(index)
        reporter.book.drain()
        reporter.take_interval()
        assert not reporter.pending  # nothing counted, nothing ejected: no report

    asyncio.run(main())


def test_prometheus_shows_ejected_instances_and_counts_ejections_by_reason():
    router, _ = ejected_router()
    families = scrape(ProxyCollector(StatsBook(), router))
    assert value(families["mve_proxy_instances_ejected"], endpoint="ep", variant="v1") == 1
    assert value(families["mve_proxy_variant_instances"], endpoint="ep", variant="v1") == 1
    assert value(
        families["mve_proxy_outlier_ejections"], "_total", endpoint="ep", variant="v1", reason="consecutive_failures"
    ) == 1


@pytest.mark.parametrize("field, bad", [
    ("outlier_consecutive_failures", -1), ("outlier_consecutive_failures", 1001),
    ("outlier_latency_factor", 1.4), ("outlier_latency_factor", 1000.5), ("outlier_latency_factor", -1.0),
    ("outlier_ejection_s", 0.05), ("outlier_ejection_s", 3601.0),
    ("outlier_max_ejection_percent", -1.0), ("outlier_max_ejection_percent", 100.5),
])
def test_outlier_flags_have_validated_ranges(field, bad):
    from mve.proxy.settings import ProxySettings

    with pytest.raises(ValidationError, match="--outlier-.* must be between"):
        ProxySettings(**{field: bad}).validate()


def test_outlier_flags_environment_and_defaults_reach_the_router(monkeypatch):
    import argparse

    from mve.proxy import cli
    from mve.proxy.server import ProxyServer

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    monkeypatch.setenv("MVE_PROXY_OUTLIER_MAX_EJECTION_PERCENT", "25")
    settings = cli.settings_from_args(parser.parse_args([
        "proxy", "--outlier-consecutive-failures", "0", "--outlier-latency-factor", "3",
        "--outlier-ejection-s", "0.5",
    ]))
    assert settings.outlier_policy == OutlierPolicy(
        consecutive_failures=0, latency_factor=3.0, ejection_s=0.5, max_ejection_percent=25.0
    )
    assert ProxyServer(settings).router.outlier_policy == settings.outlier_policy
    monkeypatch.delenv("MVE_PROXY_OUTLIER_MAX_EJECTION_PERCENT")
    defaults = cli.settings_from_args(parser.parse_args(["proxy"]))
    assert defaults.outlier_policy == OutlierPolicy(
        consecutive_failures=5, latency_factor=5.0, ejection_s=10.0, max_ejection_percent=50.0
    )
    off = cli.settings_from_args(parser.parse_args(["proxy", "--outlier-latency-factor", "0"]))
    assert off.outlier_latency_factor == 0 and off.outlier_policy.latency_factor == 0


def test_a_call_cancelled_at_its_deadline_counts_as_a_timeout_and_one_cancelled_early_does_not():
    from mve.proxy.transport.upstream import infer_on_variant

    class HangingPool(FakePool):
        def stub(self, address):
            class Stub:
                async def ModelInfer(self, request, timeout=None, metadata=None):
                    await asyncio.sleep(3600)

            return Stub()

    async def cancelled_after(router, wait_s: float, timeout: float) -> None:
        task = asyncio.ensure_future(infer_on_variant(HangingPool({}), router.pick("ep"), object(), timeout))
        await asyncio.sleep(wait_s)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    router = Router(seed=1, outliers=OutlierPolicy(consecutive_failures=1))
    assert router.apply(table(("i0",)))
    asyncio.run(cancelled_after(router, 0.01, timeout=5.0))  # the caller left early: no verdict
    assert router.pick("ep").outliers.health(0).consecutive_failures == 0
    asyncio.run(cancelled_after(router, 0.2, timeout=0.2))  # the server cancelled at the deadline
    assert router.pick("ep").outliers.health(0).consecutive_failures == 1
