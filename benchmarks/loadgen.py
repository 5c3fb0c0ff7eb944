"""A closed-loop gRPC load generator for the Open Inference Protocol's ModelInfer, one JSON line out.

Run as its own process (so that its CPU is not the server's): `concurrency` workers on grpc.aio,
each sending one pre-serialised ``ModelInferRequest`` (raw bytes in, raw bytes out: no protobuf
work on the client's request path) and waiting for the answer before sending the next. A warm-up
phase (not counted) opens the connections first. The measured phase stops at `requests` answers
or `seconds`, whichever comes first.

    python benchmarks/loadgen.py --target 127.0.0.1:8080 --model mlp --rows 1 --concurrency 64 \
        --requests 20000 --seconds 4

Prints ``{"requests": N, "errors": E, "seconds": S, "throughput_rps": ..., "p50_ms": ...,
"p99_ms": ..., "mean_ms": ..., "error_codes": {...}, "variants": {...}}``. ``variants`` counts
the ``invoked_production_variant`` parameter of a sample of responses (empty behind servers that
do not set it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import grpc
import numpy as np

from mve._proto import grpc_predict_v2_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"
# One response in this many is parsed to count the variant that answered.
SAMPLE_EVERY = 32


def infer_request(model: str, rows: int, features: int = 16, *, seed: int = 0) -> bytes:
    """A serialised ModelInferRequest: `rows` x `features` FP32 in raw_input_contents."""
    values = np.random.default_rng(seed).standard_normal((rows, features)).astype(np.float32)
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[rows, features])],
        raw_input_contents=[values.tobytes()],
    )
    return request.SerializeToString()


class Load:
    """Shared state of one run: the stop condition and what the workers measured."""

    def __init__(self, requests: int, deadline: float):
        self.remaining = requests
        self.deadline = deadline
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.variants: dict[str, int] = {}

    def take(self) -> bool:
        """Claim one more request; False once the count or the time is spent."""
        if self.remaining <= 0 or time.perf_counter() >= self.deadline:
            return False
        self.remaining -= 1
        return True


async def _worker(call, body: bytes, load: Load, timeout: float) -> None:
    latencies = load.latencies
    while load.take():
        started = time.perf_counter()
        try:
            response = await call(body, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            name = error.code().name
            load.errors[name] = load.errors.get(name, 0) + 1
            continue
        latencies.append(time.perf_counter() - started)
        if len(latencies) % SAMPLE_EVERY == 0:
            parsed = pb.ModelInferResponse.FromString(response)
            variant = parsed.parameters.get("invoked_production_variant")
            if variant is not None:
                name = variant.string_param
                load.variants[name] = load.variants.get(name, 0) + 1


async def run_load(
    target: str, body: bytes, *, concurrency: int, requests: int, seconds: float, warmup_s: float,
    channels: int, timeout: float = 30.0,
) -> dict:
    """Warm up, then run the closed loop and return the summary dict."""
    opened = [
        # A distinct argument per channel keeps gRPC from sharing one TCP connection between them.
        grpc.aio.insecure_channel(target, options=[("mve.loadgen.channel", index)])
        for index in range(channels)
    ]
    calls = [c.unary_unary(METHOD, request_serializer=None, response_deserializer=None) for c in opened]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in opened)), timeout=10)
        warm = Load(requests=10**9, deadline=time.perf_counter() + warmup_s)
        if warmup_s > 0:
            await asyncio.gather(*(_worker(calls[i % channels], body, warm, timeout) for i in range(concurrency)))
        load = Load(requests=requests, deadline=time.perf_counter() + seconds)
        started = time.perf_counter()
        await asyncio.gather(*(_worker(calls[i % channels], body, load, timeout) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in opened))
    latencies_ms = np.asarray(load.latencies) * 1e3
    done = len(latencies_ms)
    return {
        "requests": done,
        "errors": sum(load.errors.values()),
        "error_codes": load.errors,
        "seconds": elapsed,
        "throughput_rps": done / elapsed if elapsed > 0 else 0.0,
        "p50_ms": float(np.percentile(latencies_ms, 50)) if done else None,
        "p99_ms": float(np.percentile(latencies_ms, 99)) if done else None,
        "mean_ms": float(latencies_ms.mean()) if done else None,
        "variants": load.variants,
        # Every answer the servers gave, warm-up included: what a CPU-per-request figure divides by.
        "answers_total": done + len(warm.latencies),
        "_latencies_ms": latencies_ms,
    }


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the load, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--model", required=True, help="model_name of the request (the endpoint name for mve)")
    parser.add_argument("--rows", type=_positive(int), default=1, help="rows of FP32 values per request")
    parser.add_argument("--features", type=_positive(int), default=16, help="FP32 values per row (default 16)")
    parser.add_argument("--latencies-out", type=str, default=None, metavar="FILE.npy",
                        help="also write every measured latency (ms, float64) to this .npy file")
    parser.add_argument("--concurrency", type=_positive(int), default=1)
    parser.add_argument("--requests", type=_positive(int), default=10_000, help="stop after this many answers")
    parser.add_argument("--seconds", type=_positive(float), default=4.0, help="stop after this long")
    parser.add_argument("--warmup", type=float, default=0.5, metavar="SECONDS")
    parser.add_argument("--channels", type=_positive(int), default=None,
                        help="client connections (default: 1 per 16 workers, at most 4)")
    args = parser.parse_args(argv)
    if args.concurrency > 1024 or args.seconds > 600 or args.requests > 10_000_000:
        parser.error("concurrency <= 1024, seconds <= 600, requests <= 10,000,000")
    channels = args.channels or max(1, min(4, args.concurrency // 16))
    body = infer_request(args.model, args.rows, args.features)
    result = asyncio.run(run_load(
        args.target, body, concurrency=args.concurrency, requests=args.requests, seconds=args.seconds,
        warmup_s=args.warmup, channels=channels,
    ))
    latencies = result.pop("_latencies_ms")
    if args.latencies_out:
        np.save(args.latencies_out, latencies)
    result.update(concurrency=args.concurrency, rows=args.rows, channels=channels)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
