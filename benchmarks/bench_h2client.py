"""What an upstream call costs the proxy's process: grpc.aio's channel against the native client.

The proxy forwards each request to a model server with one unary call; this measures that call
alone, from asyncio, as the proxy makes it (bytes in, bytes out). A model-server-like grpc.aio
echo server runs in a process of its own (pinned to core 1 with taskset when there are two
cores, this process to core 0); N calls at concurrency C go through ``channel.unary_unary``
(grpc.aio), through `NativeUpstream` with the client's loop on a thread of its own ("native")
and through `NativeUpstream(threaded=False)`, the client driven from the asyncio thread
("native-inline"), in alternating rounds. For each: calls/s and this CLIENT process's CPU per
call (utime+stime of all its threads, /proc/self/stat, over the measured window); the table gives
the medians and native/grpc.aio ratios, and the figures go to benchmarks/results/h2client.json.

The grpc.aio echo server is usually the bottleneck of calls/s on a small machine (one core, ~0.5
ms per call): calls/s then says little about the clients, their CPU per call says what they cost.
``--server native`` answers from mve._h2transport's canned no-op instead (a server that is not
the limit).

    python benchmarks/bench_h2client.py [--calls 20000] [--concurrency 64] [--rounds 3] [--server grpc-aio|native]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from mve._proto import grpc_predict_v2_pb2 as pb  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
RESULTS = HERE / "results" / "h2client.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def request_bytes() -> bytes:
    """A 1-row ModelInferRequest of an MLP's 16 FP32 features, as a proxy forwards it."""
    request = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[np.ones((1, 16), np.float32).tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    return request.SerializeToString()


async def serve_echo() -> None:
    """The echo server's process: ModelInfer answers the request's bytes, on grpc.aio."""
    async def echo(request: bytes, context) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"event": "ready", "address": f"127.0.0.1:{port}"}), flush=True)
    await server.wait_for_termination()


def start_server(kind: str) -> tuple[subprocess.Popen, str]:
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []
    if kind == "native":
        command = [sys.executable, str(HERE / "noop_h2_server.py")]
    else:
        command = [sys.executable, __file__, "--serve"]
    process = subprocess.Popen([*pin, *command], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise SystemExit(f"the {kind} server did not start")
    return process, json.loads(line)["address"]


def cpu_seconds() -> float:
    """utime+stime of this process, all threads."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def drive(call, calls: int, concurrency: int) -> tuple[float, float, float, int]:
    """`calls` calls through `call()` at `concurrency`: (seconds, CPU seconds from /proc/self/stat,
    CPU seconds from the process CPU clock, errors). /proc/self/stat counts in clock ticks (10 ms
    here), too coarse for a window of a second or less; the CPU clock is the same utime+stime in ns."""
    errors = 0
    left = calls

    async def worker():
        nonlocal errors, left
        while left > 0:
            left -= 1
            try:
                await call()
            except grpc.aio.AioRpcError:
                errors += 1

    for _ in range(min(200, calls)):    # warm up: connections, first allocations
        await call()
    cpu0, clock0, t0 = cpu_seconds(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, cpu_seconds() - cpu0, time.process_time() - clock0, errors


async def round_grpc_aio(address: str, body: bytes, calls: int, concurrency: int):
    channel = grpc.aio.insecure_channel(address, options=[("grpc.enable_retries", 0)])
    method = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    try:
        return await drive(lambda: method(body, timeout=30.0), calls, concurrency)
    finally:
        await channel.close()


async def round_native(address: str, body: bytes, calls: int, concurrency: int, threaded: bool = True):
    from mve.proxy.transport.native_upstream import NativeUpstream

    upstream = NativeUpstream(threaded=threaded)
    upstream.start()
    try:
        return await drive(lambda: upstream.unary(address, body, 30.0), calls, concurrency)
    finally:
        upstream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per client per round (default 20000)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", choices=("grpc-aio", "native"), default="grpc-aio",
                        help="the echo server: grpc.aio (default) or mve._h2transport's canned no-op")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_echo())
        return
    if not 1 <= args.calls <= 1_000_000 or not 1 <= args.rounds <= 10 or not 1 <= args.concurrency <= 1024:
        raise SystemExit("--calls 1..1e6, --rounds 1..10, --concurrency 1..1024")
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    process, address = start_server(args.server)
    body = request_bytes()
    clients = (("grpc-aio", round_grpc_aio), ("native", round_native),
               ("native-inline", lambda *a: round_native(*a, threaded=False)))
    cells: dict[str, list[dict]] = {name: [] for name, _ in clients}
    try:
        for index in range(args.rounds):
            for name, run in clients:
                seconds, cpu, clock, errors = asyncio.run(asyncio.wait_for(
                    run(address, body, args.calls, args.concurrency), timeout=600))
                cell = {"round": index + 1, "calls_per_s": args.calls / seconds,
                        "client_cpu_us_per_call": cpu / args.calls * 1e6,
                        "client_cpu_clock_us_per_call": clock / args.calls * 1e6, "errors": errors}
                cells[name].append(cell)
                print(f"round {index + 1} {name:13}: {cell['calls_per_s']:9,.0f} calls/s  "
                      f"{cell['client_cpu_us_per_call']:7.1f} us CPU/call "
                      f"(CPU clock {cell['client_cpu_clock_us_per_call']:7.1f})  errors={errors}", flush=True)
    finally:
        process.terminate()
        process.wait(10)
    keys = ("calls_per_s", "client_cpu_us_per_call", "client_cpu_clock_us_per_call")
    medians = {name: {key: statistics.median(c[key] for c in rows) for key in keys} for name, rows in cells.items()}
    base = medians["grpc-aio"]
    ratios = {name: {key: medians[name][key] / base[key] for key in base} for name in medians if name != "grpc-aio"}
    print(f"\nmedians of {args.rounds} rounds, {args.calls} calls at c={args.concurrency}, server {args.server}:")
    print("| client        | calls/s   | client CPU us/call | (CPU clock) | calls/s vs grpc.aio "
          "| CPU/call vs grpc.aio |")
    print("|---------------|-----------|--------------------|-------------|---------------------"
          "|----------------------|")
    for name, m in medians.items():
        r = ratios.get(name, dict.fromkeys(keys, 1.0))
        print(f"| {name:13} | {m['calls_per_s']:9,.0f} | {m['client_cpu_us_per_call']:18.1f} "
              f"| {m['client_cpu_clock_us_per_call']:11.1f} "
              f"| {r['calls_per_s']:18.2f}x | {r['client_cpu_us_per_call']:19.3f}x |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "calls": args.calls, "concurrency": args.concurrency, "rounds": args.rounds, "server": args.server,
        "cells": cells, "medians": medians, "ratios_over_grpc_aio": ratios,
        "load_1min_at_end": os.getloadavg()[0],
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
