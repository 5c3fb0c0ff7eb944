"""A closed-loop load generator for InvokeEndpoint on either of the proxy's doors, one JSON line out.

The same request on both doors: the example MLP's ``input`` (FP32 [rows, 16]) as an
``application/x-npy`` body, answered in ``application/x-npy``.

- ``--door grpc``: ``mve.v1.EndpointRuntime/InvokeEndpoint`` on grpc.aio, the request serialised
  once and sent as raw bytes (no protobuf work per request on the client);
- ``--door http``: SageMaker Runtime's ``POST /endpoints/{name}/invocations`` on an aiohttp client
  session with keep-alive connections, the headers boto3 sends. With ``--access-key-id`` and
  ``--secret-access-key`` every request carries AWS Signature Version 4 (botocore's signer), signed
  again each second (X-Amz-Date has one-second resolution), so the proxy verifies every request
  while the client's own signing cost stays out of the measurement.

Run as its own process (its CPU is not the proxy's): `concurrency` workers, each waiting for its
answer before sending the next; a warm-up (not counted) opens the connections; the measured phase
stops at `requests` answers or `seconds`, whichever comes first. Prints the keys of
benchmarks/loadgen.py: ``{"requests", "errors", "error_codes", "seconds", "throughput_rps",
"p50_ms", "p99_ms", "mean_ms", "variants"}``, and ``client_cpu_us_per_request`` (this process's CPU
per answer while measuring: the client shares the machine with the proxy).

    python benchmarks/invoke_loadgen.py --door http --target 127.0.0.1:8081 --endpoint mlp --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time

import numpy as np

from loadgen import Load, _positive

GRPC_METHOD = "/mve.v1.EndpointRuntime/InvokeEndpoint"
NPY = "application/x-npy"
SAMPLE_EVERY = 32  # one answer in this many is read for the variant that served it


def npy_body(rows: int, features: int = 16, *, seed: int = 0) -> bytes:
    """`rows` x `features` FP32 as an .npy body (the same values loadgen.py sends)."""
    values = np.random.default_rng(seed).standard_normal((rows, features)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, values)
    return buffer.getvalue()


class Signer:
    """SigV4 headers for the one request this process sends, made again once per second."""

    def __init__(self, url: str, body: bytes, access_key_id: str, secret: str, region: str = "us-east-1"):
        from botocore.auth import SigV4Auth
        from botocore.credentials import Credentials

        self._auth = SigV4Auth(Credentials(access_key_id, secret), "sagemaker", region)
        self._url = url
        self._body = body
        self._second = -1
        self._headers: dict[str, str] = {}

    def headers(self, base: dict[str, str]) -> dict[str, str]:
        """`base` plus Authorization and X-Amz-Date for the current second."""
        second = int(time.time())
        if second != self._second:
            from botocore.awsrequest import AWSRequest

            request = AWSRequest(method="POST", url=self._url, data=self._body, headers=dict(base))
            self._auth.add_auth(request)
            self._headers = dict(request.headers.items())
            self._second = second
        return self._headers


async def _grpc_worker(call, body: bytes, load: Load, timeout: float) -> None:
    from mve._proto import runtime_pb2

    import grpc

    latencies = load.latencies
    while load.take():
        started = time.perf_counter()
        try:
            answer = await call(body, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            name = error.code().name
            load.errors[name] = load.errors.get(name, 0) + 1
            continue
        latencies.append(time.perf_counter() - started)
        if len(latencies) % SAMPLE_EVERY == 0:
            variant = runtime_pb2.InvokeEndpointResponse.FromString(answer).invoked_production_variant
            load.variants[variant] = load.variants.get(variant, 0) + 1


async def _http_worker(session, url: str, body: bytes, headers, signer, load: Load, timeout) -> None:
    latencies = load.latencies
    while load.take():
        sent = signer.headers(headers) if signer is not None else headers
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=sent, timeout=timeout) as response:
                await response.read()
                status = response.status
                variant = response.headers.get("x-Amzn-Invoked-Production-Variant", "")
                code = response.headers.get("x-amzn-ErrorType", "")
        except (OSError, asyncio.TimeoutError) as error:
            name = type(error).__name__
            load.errors[name] = load.errors.get(name, 0) + 1
            continue
        if status != 200:
            name = f"{status} {code}".strip()
            load.errors[name] = load.errors.get(name, 0) + 1
            continue
        latencies.append(time.perf_counter() - started)
        if len(latencies) % SAMPLE_EVERY == 0:
            load.variants[variant] = load.variants.get(variant, 0) + 1


async def run_load(args) -> dict:
    """Warm up, then the closed loop on the chosen door; the summary dict."""
    body = npy_body(args.rows)
    if args.door == "grpc":
        import grpc

        from mve._proto import runtime_pb2

        request = runtime_pb2.InvokeEndpointRequest(
            endpoint_name=args.endpoint, body=body, content_type=NPY, accept=NPY).SerializeToString()
        channels = [grpc.aio.insecure_channel(args.target, options=[("mve.invoke_loadgen.channel", i)])
                    for i in range(args.channels)]
        calls = [c.unary_unary(GRPC_METHOD, request_serializer=None, response_deserializer=None) for c in channels]
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), timeout=10)

        def workers(load):
            return [_grpc_worker(calls[i % len(calls)], request, load, args.timeout) for i in range(args.concurrency)]

        async def close():
            await asyncio.gather(*(c.close() for c in channels))
    else:
        import aiohttp

        url = f"http://{args.target}/endpoints/{args.endpoint}/invocations"
        headers = {"Content-Type": NPY, "Accept": NPY}
        signer = Signer(url, body, args.access_key_id, args.secret_access_key) if args.access_key_id else None
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.concurrency, force_close=False),
            timeout=aiohttp.ClientTimeout(total=args.timeout), skip_auto_headers=("User-Agent",))
        timeout = aiohttp.ClientTimeout(total=args.timeout)

        def workers(load):
            return [_http_worker(session, url, body, headers, signer, load, timeout) for _ in range(args.concurrency)]

        async def close():
            await session.close()
    try:
        if args.warmup > 0:
            warm = Load(requests=10**9, deadline=time.perf_counter() + args.warmup)
            await asyncio.gather(*workers(warm))
        load = Load(requests=args.requests, deadline=time.perf_counter() + args.seconds)
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*workers(load))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await close()
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
        # This process's CPU (all its threads) per answer in the measured phase: the client's own cost.
        "client_cpu_us_per_request": cpu * 1e6 / done if done else None,
        "variants": load.variants,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the load, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--door", choices=("grpc", "http"), required=True)
    parser.add_argument("--target", required=True, metavar="HOST:PORT", help="the proxy's gRPC or HTTP address")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--rows", type=_positive(int), default=1, help="rows of 16 FP32 values per request")
    parser.add_argument("--concurrency", type=_positive(int), default=1)
    parser.add_argument("--requests", type=_positive(int), default=10_000, help="stop after this many answers")
    parser.add_argument("--seconds", type=_positive(float), default=4.0, help="stop after this long")
    parser.add_argument("--warmup", type=float, default=0.5, metavar="SECONDS")
    parser.add_argument("--timeout", type=_positive(float), default=30.0, metavar="SECONDS")
    parser.add_argument("--channels", type=_positive(int), default=None,
                        help="gRPC connections (default: 1 per 16 workers, at most 4, as loadgen.py)")
    parser.add_argument("--access-key-id", default="", help="sign every HTTP request (SigV4) with this key")
    parser.add_argument("--secret-access-key", default="")
    args = parser.parse_args(argv)
    if args.concurrency > 1024 or args.seconds > 600 or args.requests > 10_000_000 or not 0 <= args.warmup <= 60:
        parser.error("concurrency <= 1024, seconds <= 600, requests <= 10,000,000, warmup 0-60")
    if bool(args.access_key_id) != bool(args.secret_access_key):
        parser.error("--access-key-id and --secret-access-key go together")
    if args.access_key_id and args.door != "http":
        parser.error("signing is for --door http")
    args.channels = args.channels or max(1, min(4, args.concurrency // 16))
    result = asyncio.run(run_load(args))
    result.update(door=args.door, concurrency=args.concurrency, rows=args.rows, signed=bool(args.access_key_id))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
