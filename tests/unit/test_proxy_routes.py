"""The WatchRoutes subscriber and the upstream channel pool, driven without a network or sleeping."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mve._proto import control_pb2
from mve.proxy.routing.router import Router
from mve.proxy.routing.watcher import RouteWatcher
from mve.proxy.transport.upstream import UpstreamPool


def table(version: int, addresses: list[str]):
    return control_pb2.RoutingTable(
        version=version,
        control_plane_id="cp",
        endpoints=[
            control_pb2.EndpointRoute(
                endpoint_name="ep",
                variants=[
                    control_pb2.VariantRoute(
                        variant_name="a",
                        weight=1,
                        instances=[control_pb2.InstanceRoute(instance_id=a, address=a) for a in addresses],
                    )
                ],
            )
        ],
    )


class Stop(Exception):
    pass


class ScriptedControlPlane:
    """WatchRoutes answers from a script: each entry is a list of tables, or an error to raise."""

    def __init__(self, script):
        self.script = list(script)
        self.subscriptions = 0

    def WatchRoutes(self, request):
        self.subscriptions += 1
        step = self.script.pop(0) if self.script else grpc.StatusCode.UNAVAILABLE

        async def stream():
            if isinstance(step, grpc.StatusCode):
                raise grpc.aio.AioRpcError(step, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down")
            for item in step:
                yield item

        return stream()


def run_watcher(script, sleeps_before_stop: int):
    router = Router(seed=1)
    sleeps: list[float] = []

    async def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) >= sleeps_before_stop:
            raise Stop

    async def main():
        pool = UpstreamPool(close_grace_s=0)
        watcher = RouteWatcher(ScriptedControlPlane(script), router, pool, "p1", sleep=sleep)
        try:
            with pytest.raises(Stop):
                await watcher.run()
            return pool.addresses
        finally:
            await pool.close(grace=0)

    addresses = asyncio.run(main())
    return router, sleeps, addresses


def test_resubscribes_with_backoff_doubling_to_two_seconds():
    _, sleeps, _ = run_watcher([grpc.StatusCode.UNAVAILABLE] * 8, sleeps_before_stop=8)
    assert sleeps == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_a_table_resets_the_backoff_and_survives_the_control_plane_going_away():
    script = [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAVAILABLE,
        [table(1, ["h:1", "h:2"])],  # then the stream ends
        grpc.StatusCode.UNAVAILABLE,
    ]
    router, sleeps, addresses = run_watcher(script, sleeps_before_stop=4)
    assert sleeps == [0.1, 0.2, 0.1, 0.2]
    assert router.state.version == 1 and router.pick("ep").name == "a"
    assert addresses == {"h:1", "h:2"}


def test_an_older_table_on_a_new_subscription_changes_nothing():
    script = [[table(5, ["h:1"])], [table(4, ["h:9"])]]
    router, _, addresses = run_watcher(script, sleeps_before_stop=2)
    assert router.state.version == 5
    assert addresses == {"h:1"}


def test_channels_are_reused_for_kept_addresses_and_closed_for_removed_ones():
    async def main():
        pool = UpstreamPool(close_grace_s=0)
        pool.sync({"h:1", "h:2"})
        kept = pool.stub("h:1")
        pool.sync({"h:1", "h:3"})
        assert pool.stub("h:1") is kept
        assert pool.addresses == {"h:1", "h:3"}
        await pool.close(grace=0)

    asyncio.run(main())
