"""The proxy's stats reporter: every interval is sent once, resent unchanged until acknowledged,
in order, and bounded while the control plane is away."""

from __future__ import annotations

import asyncio

import grpc

from mve.proxy.stats import StatsBook, StatsReporter


class FlakyStub:
    """A ReportStats that fails while `down` is set and records what it acknowledged."""

    def __init__(self):
        self.down = False
        self.acknowledged = []
        self.attempts = 0

    async def ReportStats(self, request, timeout=None):
        self.attempts += 1
        if self.down:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")
        self.acknowledged.append(request)


def test_reports_wait_while_the_control_plane_is_away_and_go_in_order_unchanged():
    async def main():
        book, stub = StatsBook(), FlakyStub()
        reporter = StatsReporter(book, stub, "p1", 1.0, clock=lambda: 100.0)
        stub.down = True
        for n in (2, 3):
            for _ in range(n):
                book.record_success("ep", "A", 10.0, 1.0)
            reporter.take_interval()
            assert await reporter.send_pending() is False
        reporter.take_interval()  # an empty interval makes no report
        stub.down = False
        assert await reporter.send_pending() is True
        assert [(r.sequence, r.variants[0].invocations) for r in stub.acknowledged] == [(1, 2), (2, 3)]
        assert {r.incarnation for r in stub.acknowledged} == {reporter.incarnation}
        assert not reporter.pending

    asyncio.run(main())


def test_pending_reports_are_bounded_and_the_drops_counted():
    async def main():
        book, stub = StatsBook(), FlakyStub()
        reporter = StatsReporter(book, stub, "p1", 1.0, max_pending=3)
        stub.down = True
        for _ in range(5):
            book.record_success("ep", "A", 10.0, 1.0)
            reporter.take_interval()
        assert len(reporter.pending) == 3 and reporter.dropped_reports == 2
        assert [r.sequence for r in reporter.pending] == [3, 4, 5]

    asyncio.run(main())


def test_two_reporters_have_different_incarnations():
    assert StatsReporter(StatsBook(), None, "p", 1.0).incarnation != StatsReporter(StatsBook(), None, "p", 1.0).incarnation
