"""A batcher's queue times reach the StatsBook as plain floats, without a numpy array per batch."""

from __future__ import annotations

import asyncio

import pytest

from mve.proxy.stats import StatsBook
from test_batcher import FakeModel, batcher_for, request
from virtual_loop import run


def test_queue_times_are_recorded_as_plain_floats():
    async def main():
        stats = StatsBook()
        record_batch = stats.record_batch

        def checked(endpoint, variant, rows, requests, queue_times_us):
            assert isinstance(queue_times_us, (list, tuple)) and len(queue_times_us) == requests
            assert all(type(value) is float for value in queue_times_us)  # no numpy array or scalar
            record_batch(endpoint, variant, rows, requests, queue_times_us)

        stats.record_batch = checked
        model = FakeModel(latency_s=0.01)
        batcher = batcher_for(model, stats=stats, max_batch_size=4, max_delay_us=3000)
        await asyncio.gather(*(batcher.submit(request(1, i), 5.0) for i in range(3)))
        await batcher.submit(request(1, 9), 5.0)
        return stats

    counters = run(main).snapshot()[("ep", "v1")]
    assert counters.queue_time.count == 4
    assert counters.queue_time.max == pytest.approx(3000.0)
    assert counters.batch_size.count == 2
