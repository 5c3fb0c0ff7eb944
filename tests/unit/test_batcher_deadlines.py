"""A batcher enforces its callers' deadlines with one sweep, not a timer per caller (virtual time)."""

from __future__ import annotations

import asyncio

import pytest

from mve.errors import ModelError, ServiceUnavailable
from test_batcher import FakeModel, assert_own_rows, batcher_for, now, request
from virtual_loop import run


def count_timers(loop) -> list[float]:
    """Record the time of every timer the loop is asked for from now on (the fake model's sleeps aside)."""
    armed: list[float] = []
    call_at = loop.call_at

    def recording_call_at(when, callback, *args, **kwargs):
        if getattr(callback, "__name__", "") != "_set_result_unless_cancelled":  # asyncio.sleep's
            armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = recording_call_at
    return armed


def test_queued_callers_expire_each_at_its_own_deadline_without_a_timer_each():
    async def main():
        model = FakeModel(latency_s=1.0)
        model.gate = asyncio.Event()
        batcher = batcher_for(model, max_batch_size=4, max_delay_us=0, max_batches_in_flight_per_instance=1)
        busy = asyncio.ensure_future(batcher.submit(request(1, 0), 10.0))  # holds the only batch slot
        await asyncio.sleep(0)
        assert batcher.in_flight == 1
        armed = count_timers(asyncio.get_running_loop())
        started = now()
        # 50 callers queue behind it, deadlines 0.1 s apart, submitted in increasing order.
        waiting = [asyncio.ensure_future(batcher.submit(request(1, i), 0.1 * (i + 1))) for i in range(50)]
        await asyncio.sleep(0)
        assert batcher.queued_requests == 50
        # Increasing deadlines: the first arms the sweep, the others arm nothing.
        assert len(armed) == 1
        for i, call in enumerate(waiting):
            with pytest.raises(ServiceUnavailable, match="timed out"):
                await call
            assert now() == pytest.approx(started + 0.1 * (i + 1))
            assert batcher.queued_requests == 49 - i  # it left the queue
        # One sweep per deadline that passed, each re-arming for the next: no timer per caller
        # beyond that, and none left pending once nobody waits.
        assert len(armed) <= 51
        assert batcher.queued_rows == 0
        model.gate.set()
        assert_own_rows((await busy).response, 1, 0)

    run(main)


def test_many_callers_with_one_deadline_share_one_sweep():
    async def main():
        model = FakeModel(latency_s=0.01)
        batcher = batcher_for(model, max_batch_size=8, max_delay_us=2000)
        armed = count_timers(asyncio.get_running_loop())
        calls = [asyncio.ensure_future(batcher.submit(request(1, i), 5.0)) for i in range(8)]
        results = await asyncio.gather(*calls)
        for i, result in enumerate(results):
            assert_own_rows(result.response, 1, i)
        # The flush timer and the deadline sweep: two timers for eight callers.
        assert len(armed) == 2
        assert len(model.calls) == 1

    run(main)


def test_an_earlier_deadline_rearms_the_sweep_and_expires_in_flight_callers_too():
    async def main():
        model = FakeModel(latency_s=0.5)
        batcher = batcher_for(model, max_batch_size=4, max_delay_us=1000)
        started = now()
        late = asyncio.ensure_future(batcher.submit(request(1, 0), 2.0))
        early = asyncio.ensure_future(batcher.submit(request(1, 1), 0.2))  # in the same (slow) batch
        with pytest.raises(ModelError, match="its batch did not finish"):
            await early
        assert now() == pytest.approx(started + 0.2)
        assert_own_rows((await late).response, 1, 0)
        assert now() == pytest.approx(started + 0.001 + 0.5)

    run(main)
