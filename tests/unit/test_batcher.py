"""The proxy's dynamic batcher, driven exactly by a virtual-time event loop and a fake model."""

from __future__ import annotations

import asyncio
import types

import numpy as np
import pytest

from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import ModelError, ModelNotReady, ServiceUnavailable, ValidationError
from mve.proxy.batching.batcher import VariantBatcher
from mve.proxy.batching.policy import BatchingPolicy
from mve.proxy.stats import StatsBook
from mve.proxy.transport import wire
from mve.proxy.transport.upstream import InferResult
from virtual_loop import run


def now() -> float:
    return asyncio.get_running_loop().time()


def variant(instances: int = 1):
    return types.SimpleNamespace(
        endpoint_name="ep", name="v1", model_name="m", instances=tuple(f"i{i}" for i in range(instances))
    )


def request(rows: int, base: float = 0.0, *, cols: int = 3, datatype: str = "FP32", outputs=(), params=None, rid=""):
    """A raw-contents request whose rows are `base`, `base + 1`, ... (each row constant)."""
    dtype = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}[datatype]
    x = np.repeat(np.arange(rows, dtype=dtype)[:, None] + dtype(base), cols, axis=1)
    r = pb.ModelInferRequest(model_name="m", id=rid)
    r.inputs.add(name="x", datatype=datatype, shape=x.shape)
    r.raw_input_contents.append(x.tobytes())
    for name in outputs:
        r.outputs.add(name=name)
    for key, value in (params or {}).items():
        r.parameters[key].string_param = value
    return r


def rows_of(response, name="y") -> np.ndarray:
    index = [o.name for o in response.outputs].index(name)
    tensor = response.outputs[index]
    dtype = np.float64 if tensor.datatype == "FP64" else np.float32
    return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(tuple(tensor.shape))


class FakeModel:
    """`send` for the batcher: y = 2x and s = row sums, after `latency_s` of virtual time."""

    def __init__(self, latency_s: float = 0.01):
        self.latency_s = latency_s
        self.calls: list[tuple[float, int, float]] = []  # (time, rows, timeout)
        self.active = 0
        self.most_active = 0
        self.fail_when = None  # request -> exception or None
        self.gate: asyncio.Event | None = None

    async def send(self, bound_variant, req, timeout):
        rows = req.inputs[0].shape[0]
        self.calls.append((now(), rows, timeout))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.latency_s)
            error = self.fail_when(req) if self.fail_when else None
            if error is not None:
                raise error
            tensor = req.inputs[0]
            dtype = np.float64 if tensor.datatype == "FP64" else np.float32
            x = np.frombuffer(req.raw_input_contents[0], dtype=dtype).reshape(tuple(tensor.shape))
            response = pb.ModelInferResponse(model_name="m", id=req.id)
            wanted = [o.name for o in req.outputs] or ["y", "s"]
            for name, value in (("y", 2 * x), ("s", x.sum(axis=1))):
                if name in wanted:
                    response.outputs.add(name=name, datatype=tensor.datatype, shape=value.shape)
                    response.raw_output_contents.append(value.tobytes())
            return InferResult(response, bound_variant.instances[0], self.latency_s * 1e6)
        finally:
            self.active -= 1


def batcher_for(model: FakeModel, instances: int = 1, stats=None, **policy) -> VariantBatcher:
    policy.setdefault("max_delay_us", 1000)
    batcher = VariantBatcher(BatchingPolicy(**policy), model.send, stats=stats)
    batcher.bind(variant(instances))
    return batcher


def assert_own_rows(response, rows: int, base: float):
    expected = np.repeat(np.arange(rows, dtype=np.float32)[:, None] + np.float32(base), 3, axis=1)
    np.testing.assert_array_equal(rows_of(response, "y"), 2 * expected)
    np.testing.assert_array_equal(rows_of(response, "s"), expected.sum(axis=1))


def test_a_full_batch_goes_at_once_and_each_caller_gets_its_own_rows():
    async def main():
        model, stats = FakeModel(), StatsBook()
        batcher = batcher_for(model, stats=stats, max_batch_size=4, max_delay_us=500_000)
        started = now()
        results = await asyncio.gather(*(batcher.submit(request(1, 10 * i, rid=f"r{i}"), 5.0) for i in range(4)))
        assert model.calls == [(started, 4, pytest.approx(5.0))]
        for i, result in enumerate(results):
            assert result.response.id == f"r{i}"
            assert_own_rows(result.response, 1, 10 * i)
        counters = stats.drain()[("ep", "v1")]
        # One batch of 4 rows; each of the 4 requests' queue time recorded.
        assert (counters.batch_size.count, counters.batch_size.sum, counters.queue_time.count) == (1, 4, 4)

    run(main)


def test_callers_with_a_response_tail_get_their_own_rows_as_serialised_bytes():
    """The ModelInfer-on-bytes path: each caller's answer is bytes, parsed equal to the message path's."""

    async def main():
        tail = wire.response_tail("ep", "v1")
        sizes = [1, 3, 1, 200]  # 200 rows: raw outputs over 127 bytes need a multi-byte length
        tailed = batcher_for(FakeModel(), max_batch_size=256, max_delay_us=500_000)
        plain = batcher_for(FakeModel(), max_batch_size=256, max_delay_us=500_000)
        ids = ["", "r1", "r2", "r3"]
        as_bytes = await asyncio.gather(
            *(tailed.submit(request(n, 10 * i, rid=ids[i]), 5.0, tail) for i, n in enumerate(sizes))
        )
        as_messages = await asyncio.gather(
            *(plain.submit(request(n, 10 * i, rid=ids[i]), 5.0) for i, n in enumerate(sizes))
        )
        for i, (got, expected) in enumerate(zip(as_bytes, as_messages)):
            assert isinstance(got.response, bytes)
            parsed = pb.ModelInferResponse.FromString(got.response)
            assert parsed.id == ids[i] and parsed.model_name == "ep" and parsed.model_version == ""
            assert parsed.parameters["invoked_production_variant"].string_param == "v1"
            assert_own_rows(parsed, sizes[i], 10 * i)
            expected = expected.response
            expected.model_name = "ep"
            expected.parameters["invoked_production_variant"].string_param = "v1"
            assert parsed == expected

    run(main)


def test_a_partial_batch_goes_when_the_oldest_request_has_waited_max_delay():
    async def main():
        model = FakeModel()
        batcher = batcher_for(model, max_batch_size=8, max_delay_us=2000)
        started = now()
        first = asyncio.ensure_future(batcher.submit(request(2, 0), 5.0))
        await asyncio.sleep(0.0015)
        second = asyncio.ensure_future(batcher.submit(request(3, 100), 5.0))
        results = await asyncio.gather(first, second)
        (sent_at, rows, _), = model.calls
        assert sent_at == pytest.approx(started + 0.002) and rows == 5
        assert_own_rows(results[0].response, 2, 0)
        assert_own_rows(results[1].response, 3, 100)

    run(main)


def test_incompatible_requests_never_share_a_batch():
    async def main():
        model = FakeModel()
        batcher = batcher_for(model, max_batch_size=64)
        variants = [
            request(1, 1),
            request(1, 2),
            request(1, 3, cols=4),  # other trailing shape
            request(1, 4, datatype="FP64"),  # other datatype
            request(1, 5, outputs=["y"]),  # other requested outputs
            request(1, 6, params={"custom_attributes": "a"}),  # other parameters
            request(1, 7, params={"custom_attributes": "b"}),
        ]
        results = await asyncio.gather(*(batcher.submit(r, 5.0) for r in variants))
        assert sorted(rows for _, rows, _ in model.calls) == [1, 1, 1, 1, 1, 2]  # only the first two share
        assert [o.name for o in results[4].response.outputs] == ["y"]
        np.testing.assert_array_equal(rows_of(results[2].response), np.full((1, 4), 6, np.float32))
        np.testing.assert_array_equal(rows_of(results[3].response), np.full((1, 3), 8, np.float64))

    run(main)


def test_a_request_bigger_than_max_batch_size_goes_alone_and_whole():
    async def main():
        model = FakeModel()
        batcher = batcher_for(model, max_batch_size=4, max_delay_us=1000)
        sizes = [3, 9, 1, 2]
        results = await asyncio.gather(*(batcher.submit(request(n, 100 * i), 5.0) for i, n in enumerate(sizes)))
        # FIFO: [3] cannot take the 9 along; the 9 goes alone; [1, 2] share a batch.
        assert [rows for _, rows, _ in model.calls] == [3, 9, 3]
        for i, (n, result) in enumerate(zip(sizes, results)):
            assert_own_rows(result.response, n, 100 * i)

    run(main)


def test_batches_in_flight_are_limited_per_instance_and_the_queue_grows_meanwhile():
    async def main():
        model = FakeModel(latency_s=0.01)
        batcher = batcher_for(model, instances=2, max_batch_size=4, max_delay_us=0, max_batches_in_flight_per_instance=2)
        calls = [asyncio.ensure_future(batcher.submit(request(1, i), 5.0)) for i in range(4)]
        await asyncio.sleep(0)
        # max_delay 0: one went alone to each idle instance; the second slot of an instance takes full batches only.
        assert batcher.in_flight == 2 and batcher.queued_rows == 2
        more = [asyncio.ensure_future(batcher.submit(request(1, 10 + i), 5.0)) for i in range(10)]
        await asyncio.sleep(0)
        assert batcher.in_flight == 4 and batcher.queued_rows == 4
        results = await asyncio.gather(*calls, *more)
        assert model.most_active == 4
        # Behind the two lone rows, every batch is full.
        assert sorted(rows for _, rows, _ in model.calls) == [1, 1, 4, 4, 4]
        for i, result in enumerate(results):
            assert_own_rows(result.response, 1, i if i < 4 else 10 + i - 4)

    run(main)


def test_adaptive_batching_sends_a_partial_batch_when_its_instance_finishes_not_to_wait_behind_it():
    """With two batches in flight per instance, rows that do not fill a batch are not queued at a busy
    instance: they go, together with what arrived meanwhile, as soon as its batch is answered."""

    async def main():
        model = FakeModel(latency_s=0.02)
        batcher = batcher_for(model, instances=1, max_batch_size=8, max_delay_us=0, max_batches_in_flight_per_instance=2)
        first = asyncio.ensure_future(batcher.submit(request(1, 0), 5.0))
        await asyncio.sleep(0)
        early = [asyncio.ensure_future(batcher.submit(request(1, 1 + i), 5.0)) for i in range(2)]
        await asyncio.sleep(0.005)
        assert batcher.in_flight == 1 and batcher.queued_rows == 2  # not sent to wait behind the first
        late = [asyncio.ensure_future(batcher.submit(request(1, 3 + i), 5.0)) for i in range(3)]
        results = await asyncio.gather(first, *early, *late)
        assert [rows for _, rows, _ in model.calls] == [1, 5]
        assert model.most_active == 1
        for i, result in enumerate(results):
            assert_own_rows(result.response, 1, i)
        full = [asyncio.ensure_future(batcher.submit(request(1, 10 + i), 5.0)) for i in range(17)]
        await asyncio.sleep(0)
        assert batcher.in_flight == 2 and batcher.queued_rows == 8  # 1 alone, then a full batch behind it
        await asyncio.gather(*full)
        assert [rows for _, rows, _ in model.calls[2:]] == [1, 8, 8]

    run(main)


def test_with_no_delay_an_idle_batcher_sends_a_request_from_the_callers_own_coroutine():
    """Adaptive batching costs nothing at low load: no batch task, no queue, the caller's deadline."""

    async def main():
        model, stats = FakeModel(latency_s=0.01), StatsBook()
        batcher = batcher_for(model, stats=stats, max_batch_size=8, max_delay_us=0)
        alone = asyncio.ensure_future(batcher.submit(request(2, 5.0), 3.0))
        await asyncio.sleep(0)
        assert batcher.in_flight == 1 and not batcher.tasks and batcher.queued_rows == 0
        queued = [asyncio.ensure_future(batcher.submit(request(1, 20 + i), 5.0)) for i in range(3)]
        await asyncio.sleep(0)
        assert batcher.queued_rows == 3  # the only slot is busy: these wait and go together
        first, *rest = await asyncio.gather(alone, *queued)
        assert [(rows, timeout) for _, rows, timeout in model.calls] == [(2, 3.0), (3, pytest.approx(5.0, abs=0.02))]
        assert_own_rows(first.response, 2, 5.0)
        for i, result in enumerate(rest):
            assert_own_rows(result.response, 1, 20 + i)
        counters = stats.drain()[("ep", "v1")]
        assert (counters.batch_size.count, counters.batch_size.sum, counters.queue_time.count) == (2, 5, 4)

    run(main)


def test_a_full_queue_refuses_requests_with_model_not_ready():
    async def main():
        model = FakeModel()
        model.gate = asyncio.Event()
        batcher = batcher_for(model, max_batch_size=2, max_delay_us=0, max_queue_rows=4, max_batches_in_flight_per_instance=1)
        first = asyncio.ensure_future(batcher.submit(request(1), 5.0))  # in flight, held by the gate
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(batcher.submit(request(2, i), 5.0)) for i in range(2)]
        await asyncio.sleep(0)
        assert batcher.queued_rows == 4
        with pytest.raises(ModelNotReady, match="queue is full"):
            await batcher.submit(request(1), 5.0)
        model.gate.set()
        await asyncio.gather(first, *queued)
        await batcher.submit(request(1), 5.0)  # room again

    run(main)


def test_a_caller_cancelled_while_queued_leaves_the_batch_and_the_others_are_served():
    async def main():
        model = FakeModel()
        batcher = batcher_for(model, max_batch_size=8, max_delay_us=5000)
        calls = [asyncio.ensure_future(batcher.submit(request(1, i), 5.0)) for i in range(3)]
        await asyncio.sleep(0.001)
        calls[1].cancel()
        await asyncio.sleep(0)
        assert batcher.queued_rows == 2
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[1], asyncio.CancelledError)
        (_, rows, _), = model.calls
        assert rows == 2
        assert_own_rows(done[0].response, 1, 0)
        assert_own_rows(done[2].response, 1, 2)

    run(main)


def test_a_caller_cancelled_after_dispatch_does_not_break_the_batch():
    async def main():
        model = FakeModel(latency_s=0.01)
        batcher = batcher_for(model, max_batch_size=3)
        calls = [asyncio.ensure_future(batcher.submit(request(1, i), 5.0)) for i in range(3)]
        await asyncio.sleep(0.005)
        assert batcher.in_flight == 1
        calls[0].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        assert_own_rows(done[1].response, 1, 1)
        assert_own_rows(done[2].response, 1, 2)
        await asyncio.sleep(0)
        assert not batcher.tasks and batcher.in_flight == 0

    run(main)


def test_each_caller_keeps_its_own_deadline_and_the_batch_gets_the_latest():
    async def main():
        model = FakeModel(latency_s=0.001)
        batcher = batcher_for(model, max_batch_size=8, max_delay_us=5000)
        started = now()
        short = asyncio.ensure_future(batcher.submit(request(1, 0), 0.002))  # expires while queued
        mid = asyncio.ensure_future(batcher.submit(request(1, 1), 0.5))
        late = asyncio.ensure_future(batcher.submit(request(1, 2), 2.0))
        with pytest.raises(ServiceUnavailable, match="timed out"):
            await short
        assert now() == pytest.approx(started + 0.002)
        results = await asyncio.gather(mid, late)
        (sent_at, rows, timeout), = model.calls
        assert rows == 2 and sent_at == pytest.approx(started + 0.005)
        assert timeout == pytest.approx(2.0 - 0.005)  # the latest member's deadline
        assert_own_rows(results[1].response, 1, 2)

    run(main)


def test_a_batch_slower_than_a_callers_deadline_fails_only_that_caller_with_a_deadline_error():
    async def main():
        model = FakeModel(latency_s=0.1)
        batcher = batcher_for(model, max_batch_size=2)
        quick = asyncio.ensure_future(batcher.submit(request(1, 0), 0.05))
        patient = asyncio.ensure_future(batcher.submit(request(1, 1), 1.0))
        with pytest.raises(ModelError, match=r"Received server error \(504\) from model .* its batch did not finish") as info:
            await quick
        assert info.value.metadata["OriginalStatusCode"] == "504"  # DEADLINE_EXCEEDED's HTTP status
        assert_own_rows((await patient).response, 1, 1)

    run(main)


def test_a_failing_batch_fails_exactly_its_members():
    async def main():
        model = FakeModel()
        model.fail_when = lambda req: (
            ModelError("Received server error (500) from model m", original_status_code=500)
            if req.inputs[0].shape[1] == 4
            else None
        )
        batcher = batcher_for(model, max_batch_size=8)
        bad = [batcher.submit(request(1, i, cols=4), 5.0) for i in range(3)]
        good = [batcher.submit(request(2, i), 5.0) for i in range(3)]
        done = await asyncio.gather(*bad, *good, return_exceptions=True)
        assert all(isinstance(d, ModelError) for d in done[:3])
        assert len({id(d) for d in done[:3]}) == 3  # one exception object per caller
        for i, result in enumerate(done[3:]):
            assert_own_rows(result.response, 2, i)
        later = await batcher.submit(request(1, 7), 5.0)  # the batcher keeps serving after a failure
        assert_own_rows(later.response, 1, 7)

    run(main)


def test_a_response_with_the_wrong_number_of_rows_is_a_model_error_for_the_batch():
    async def main():
        model = FakeModel()

        async def short_send(bound_variant, req, timeout):
            response = pb.ModelInferResponse(model_name="m")
            response.outputs.add(name="y", datatype="FP32", shape=[1])
            response.raw_output_contents.append(np.zeros(1, np.float32).tobytes())
            return InferResult(response, "i0", 1.0)

        batcher = VariantBatcher(BatchingPolicy(max_batch_size=4, max_delay_us=100), short_send)
        batcher.bind(variant())
        done = await asyncio.gather(*(batcher.submit(request(1, i), 5.0) for i in range(2)), return_exceptions=True)
        assert all(isinstance(d, ModelError) and "cannot be split by rows" in d.message for d in done)
        assert not model.calls

    run(main)


def test_unbatchable_requests_go_straight_to_send():
    async def main():
        model = FakeModel()
        batcher = batcher_for(model, max_batch_size=4, max_delay_us=500_000)
        odd = request(2)
        odd.inputs.add(name="z", datatype="FP32", shape=[3])  # disagrees on the first dimension
        odd.raw_input_contents.append(np.zeros(3, np.float32).tobytes())
        started = now()
        await batcher.submit(odd, 5.0)
        assert model.calls == [(started, 2, 5.0)] and batcher.queued_rows == 0

    run(main)


def test_retire_sends_everything_queued_at_once():
    async def main():
        model = FakeModel()
        batcher = batcher_for(model, max_batch_size=8, max_delay_us=500_000)
        started = now()
        calls = [asyncio.ensure_future(batcher.submit(request(1, i), 5.0)) for i in range(3)]
        await asyncio.sleep(0)
        batcher.retire()
        await asyncio.gather(*calls)
        assert model.calls == [(started, 3, pytest.approx(5.0))]

    run(main)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_batch_size": 1025},
        {"max_delay_us": -1},
        {"max_batches_in_flight_per_instance": 0},
        {"max_queue_rows": 2_000_000},
    ],
)
def test_policy_ranges_are_validated(fields):
    with pytest.raises(ValidationError, match="batching"):
        BatchingPolicy(**fields)


def test_policy_defaults():
    assert not BatchingPolicy().enabled and not BatchingPolicy(max_batch_size=1).enabled
    assert BatchingPolicy(max_batch_size=8).queue_limit == 64 * 8
    assert BatchingPolicy(max_batch_size=8, max_queue_rows=20).queue_limit == 20
