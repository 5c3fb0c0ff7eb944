"""Batching in the proxy's data plane: batchers per variant in the routing table, and both APIs batched."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest

from mve._proto import control_pb2
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.proxy.dataplane import DataPlane, InvokeRequest
from mve.proxy.routing.router import Router
from mve.proxy.stats import StatsBook, stats_request
from mve.proxy.transport.upstream import InferResult
from virtual_loop import run


class FakeSend:
    """The upstream `send`: y = 2x on the request's one input, every call recorded."""

    def __init__(self):
        self.requests = []

    async def __call__(self, variant, request, timeout):
        self.requests.append(request)
        await asyncio.sleep(0.001)
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tuple(tensor.shape))
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(name="y", datatype="FP32", shape=x.shape)
        response.raw_output_contents.append((2 * x).tobytes())
        return InferResult(response, variant.instances[0], 1000.0)


def table(version=1, *, batch=4, delay_us=1_000_000, in_flight=1, weight=1.0, instances=1, variants=("v1",)):
    return control_pb2.RoutingTable(
        version=version,
        endpoints=[
            control_pb2.EndpointRoute(
                endpoint_name="ep",
                variants=[
                    control_pb2.VariantRoute(
                        variant_name=name,
                        model_name="m",
                        weight=weight,
                        batching=control_pb2.BatchingConfig(
                            max_batch_size=batch, max_delay_us=delay_us, max_batches_in_flight_per_instance=in_flight
                        ),
                        instances=[
                            control_pb2.InstanceRoute(instance_id=f"i{i}", address=f"a{i}") for i in range(instances)
                        ],
                        inputs=[control_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 3])],
                        outputs=[control_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1, 3])],
                    )
                    for name in variants
                ],
            )
        ],
    )


def setup(**fields):
    router = Router(seed=1)
    send = FakeSend()
    stats = StatsBook()
    dataplane = DataPlane(router, pool=None, stats=stats, send=send)
    assert router.apply(table(**fields))
    return dataplane, router, send, stats


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def oip(x: np.ndarray, rid: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="ep", id=rid)
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


def test_batching_off_keeps_the_direct_path():
    for batch in (0, 1):
        _, router, _, _ = setup(batch=batch)
        assert router.state.endpoints["ep"].variants[0].batcher is None


def test_invoke_endpoint_and_model_infer_share_batches_and_get_their_own_rows_back():
    async def main():
        dataplane, _, send, stats = setup(batch=6)
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = np.arange(3, dtype=np.float32).reshape(1, 3) + 100
        c = np.arange(9, dtype=np.float32).reshape(3, 3) + 200
        invoked = [
            dataplane.invoke_endpoint(InvokeRequest("ep", npy(a), "application/x-npy", accept="application/json")),
            dataplane.invoke_endpoint(InvokeRequest("ep", npy(b), "application/x-npy")),
        ]
        inferred = dataplane.model_infer(oip(c, "third"))
        first, second, third = await asyncio.gather(*invoked, inferred)
        (sent,) = send.requests
        assert list(sent.inputs[0].shape) == [6, 3]
        assert json.loads(first.body) == {"predictions": {"y": (2 * a).tolist()}}
        np.testing.assert_array_equal(np.load(io.BytesIO(second.body)), 2 * b)
        assert third.id == "third" and third.model_name == "ep"
        assert third.parameters["invoked_production_variant"].string_param == "v1"
        assert list(third.outputs[0].shape) == [3, 3]
        np.testing.assert_array_equal(np.frombuffer(third.raw_output_contents[0], np.float32).reshape(3, 3), 2 * c)
        report = stats_request("p", stats.drain()).variants[0]
        assert (report.invocations, report.batch_size.count, report.batch_size.sum, report.queue_time_us.count) == (3, 1, 6, 3)

    run(main)


def test_a_table_swap_keeps_the_batcher_and_its_queue_when_batching_is_unchanged():
    async def main():
        dataplane, router, send, _ = setup(batch=4, delay_us=10_000)
        before = router.state.endpoints["ep"].variants[0].batcher
        pending = asyncio.ensure_future(dataplane.model_infer(oip(np.ones((1, 3), np.float32), "q")))
        await asyncio.sleep(0)
        assert before.queued_rows == 1
        assert router.apply(table(2, batch=4, delay_us=10_000, weight=3.0, instances=2))
        after = router.state.endpoints["ep"].variants[0]
        assert after.batcher is before and before.variant is after
        response = await pending
        assert response.id == "q" and len(send.requests) == 1

    run(main)


def test_a_changed_batching_config_gets_a_new_batcher_and_the_old_one_drains_at_once():
    async def main():
        dataplane, router, send, _ = setup(batch=4, delay_us=500_000)
        old = router.state.endpoints["ep"].variants[0].batcher
        started = asyncio.get_running_loop().time()
        pending = asyncio.ensure_future(dataplane.model_infer(oip(np.ones((1, 3), np.float32), "q")))
        await asyncio.sleep(0)
        assert router.apply(table(2, batch=8, delay_us=500_000))
        new = router.state.endpoints["ep"].variants[0].batcher
        assert new is not old and new.policy.max_batch_size == 8
        await pending
        # Retired: sent without waiting for its 0.5 s delay.
        assert asyncio.get_running_loop().time() - started < 0.01
        assert len(send.requests) == 1

    run(main)


def test_a_table_with_bad_batching_numbers_is_rejected_whole():
    _, router, _, _ = setup(batch=4)
    assert not router.apply(table(2, batch=5000))
    assert router.state.version == 1


@pytest.mark.parametrize("removed", [True, False])
def test_a_removed_or_unbatched_variant_retires_its_batcher(removed):
    async def main():
        dataplane, router, send, _ = setup(batch=4, delay_us=500_000, variants=("v1", "v2"))
        pending = asyncio.ensure_future(
            dataplane.model_infer(oip(np.ones((2, 3), np.float32), "q"))  # weights 1:1, either variant
        )
        await asyncio.sleep(0)
        next_table = table(2, batch=4, delay_us=500_000, variants=("v3",)) if removed else table(2, batch=0)
        assert router.apply(next_table)
        response = await pending
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), np.full(6, 2.0))

    run(main)
