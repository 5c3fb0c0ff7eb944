"""The limits of any grpc.aio proxy on this machine: a ModelInfer server that does no work.

It answers every ModelInfer with one canned, serialised response (raw bytes in, raw bytes out,
no interceptor): what is left is grpc.aio's own cost of a call. A Python proxy cannot serve more
requests per second than this with the same load generator on the same cores, whatever its own
code does, so bench_e2e prints it next to the throughput targets.

With ``--forward HOST:PORT`` it is instead the barest possible proxy: each request's bytes go to
that model server through one grpc.aio channel and its answer's bytes come back. Its c=1 latency
is the floor of a hop through grpc.aio, which bench_e2e prints next to the latency target.

    python benchmarks/noop_server.py [--forward HOST:PORT]   # prints {"event": "ready", ...}
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
import numpy as np

from mve._proto import grpc_predict_v2_pb2 as pb
from mve.ready import announce_ready

METHOD_SERVICE = "inference.GRPCInferenceService"


def canned_response() -> bytes:
    """An MLP answer for one row: ``output`` FP32 [1, 4]."""
    response = pb.ModelInferResponse(model_name="mlp", raw_output_contents=[np.zeros((1, 4), np.float32).tobytes()])
    response.outputs.add(name="output", datatype="FP32", shape=[1, 4])
    return response.SerializeToString()


async def serve(forward: str | None) -> None:
    if forward:
        channel = grpc.aio.insecure_channel(forward)
        upstream = channel.unary_unary(
            f"/{METHOD_SERVICE}/ModelInfer", request_serializer=None, response_deserializer=None
        )

        async def model_infer(request: bytes, context) -> bytes:
            return await upstream(request, timeout=context.time_remaining())
    else:
        answer = canned_response()

        async def model_infer(request: bytes, context) -> bytes:
            return answer

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        METHOD_SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    announce_ready("forwarder" if forward else "noop-server", f"127.0.0.1:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forward", metavar="HOST:PORT", help="forward to this model server instead of answering")
    asyncio.run(serve(parser.parse_args().forward))
