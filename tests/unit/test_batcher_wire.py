"""A request's serialised bytes reach the batcher as pieces, joined only when it goes upstream alone."""

from __future__ import annotations

import asyncio

from mve._proto import grpc_predict_v2_pb2 as pb
from mve.proxy.transport import wire
from test_batcher import FakeModel, batcher_for, request
from virtual_loop import run


class RecordingModel(FakeModel):
    def __init__(self):
        super().__init__(latency_s=0.01)
        self.sent = []

    async def send(self, bound_variant, req, timeout):
        self.sent.append(req)
        if isinstance(req, bytes):
            req = pb.ModelInferRequest.FromString(req)
        return await super().send(bound_variant, req, timeout)


def pieces(req):
    return (req.SerializeToString(), wire.request_tail("m"), b"")


def test_a_request_alone_goes_as_its_joined_pieces_and_batched_ones_are_not_joined():
    tail = wire.response_tail("ep", "v1")

    async def main():
        model = RecordingModel()
        batcher = batcher_for(model, max_batch_size=4, max_delay_us=1000)
        alone = request(1, 0)
        await batcher.submit(alone, 5.0, tail, pieces(alone))
        assert model.sent == [b"".join(pieces(alone))]
        together = [request(1, i) for i in range(3)]
        await asyncio.gather(*(batcher.submit(r, 5.0, tail, pieces(r)) for r in together))
        assert len(model.sent) == 2 and isinstance(model.sent[1], pb.ModelInferRequest)
        assert model.sent[1].inputs[0].shape == [3, 3]

    run(main)


def test_with_no_delay_an_idle_batcher_sends_the_joined_pieces_from_the_callers_coroutine():
    async def main():
        model = RecordingModel()
        batcher = batcher_for(model, max_batch_size=4, max_delay_us=0)
        alone = request(2, 0)
        await batcher.submit(alone, 5.0, wire.response_tail("ep", "v1"), pieces(alone))
        assert model.sent == [b"".join(pieces(alone))]

    run(main)
