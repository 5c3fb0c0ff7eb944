"""The end-to-end benchmark's door rows: InvokeEndpoint over HTTP (boto3's protocol) vs over gRPC.

One mesh (control plane ``--auth none``, one proxy), the MLP deployed as two equal variants; at each
concurrency, alternating rounds of the same closed loop on the proxy's two doors
(benchmarks/invoke_loadgen.py: the same ``application/x-npy`` body of 1 row, the same answer
type), and the proxy's CPU per request measured from /proc around each cell. The HTTP door's
throughput, p50 and CPU are given as ratios to the gRPC door's in the same run.

A signed request costs the proxy one SigV4 verification more (`mve.sigv4.verify`: botocore's
canonical request and an HMAC chain from the date key): measured in process on a request boto3
signed, and reported as microseconds per request.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mve
from e2e_tracing import cpu_seconds
from mve.mesh import Mesh

INVOKE_LOADGEN = Path(__file__).parent / "invoke_loadgen.py"
DOORS = ("grpc", "http")


def run_invoke_loadgen(door: str, target: str, endpoint: str, *, concurrency: int, mode: tuple) -> dict:
    """One cell on one door: invoke_loadgen.py's JSON summary (with the load process's own CPU per
    request: its client shares the machine with the proxy, so it explains part of a throughput gap)."""
    seconds, warmup, max_requests = mode[:3]
    command = [sys.executable, str(INVOKE_LOADGEN), "--door", door, "--target", target, "--endpoint", endpoint,
               "--concurrency", str(concurrency), "--requests", str(max_requests), "--seconds", str(seconds),
               "--warmup", str(warmup)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup + 60)
    if done.returncode != 0:
        raise RuntimeError(f"invoke_loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_doors(model_path: Path, work: Path, concurrencies, mode: tuple, rounds: int, *, deploy) -> dict:
    """Both doors at every concurrency, `rounds` alternating rounds each; medians and HTTP/gRPC ratios."""
    cells: dict[str, dict[str, list[dict]]] = {door: {str(c): [] for c in concurrencies} for door in DOORS}
    with Mesh(work / "mesh-doors", log_path=work / "mesh-doors.log", control_plane_args=("--auth", "none")) as mesh:
        sm = mve.client("sagemaker", address=mesh.control_plane_address)
        sm.create_model(ModelName="mlp", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(model_path)})
        deploy(sm, mesh.proxy_address, "mlp", 2, None)
        targets = {"grpc": mesh.proxy_address, "http": mesh.proxy_http_address}
        pid = mesh.child_pids()["proxy"]
        for concurrency in concurrencies:
            for round_index in range(rounds):
                for door in DOORS if round_index % 2 == 0 else reversed(DOORS):
                    cpu_before = cpu_seconds(pid)
                    cell = run_invoke_loadgen(door, targets[door], "mlp", concurrency=concurrency, mode=mode)
                    # Warm-up requests are not counted by the load process; they ran at the same rate.
                    sent = cell["requests"] * (cell["seconds"] + mode[1]) / max(cell["seconds"], 1e-9)
                    cell["proxy_cpu_us_per_request"] = (cpu_seconds(pid) - cpu_before) * 1e6 / max(sent, 1)
                    cells[door][str(concurrency)].append(cell)
                    print(f"  door {door} c={concurrency} round {round_index + 1}: {cell['throughput_rps']:.0f} req/s "
                          f"p50 {_ms(cell['p50_ms'])} p99 {_ms(cell['p99_ms'])} errors {cell['errors']} "
                          f"proxy CPU {cell['proxy_cpu_us_per_request']:.0f} us/req "
                          f"client CPU {cell['client_cpu_us_per_request'] or 0:.0f} us/req", file=sys.stderr)
    out: dict = {"request": "mlp, 1 row FP32, application/x-npy in and out", "rounds": rounds,
                 "auth": "none (control plane --auth none)", "doors": {}, "ratios": {}}
    for door in DOORS:
        out["doors"][door] = {c: _median_cell(runs) for c, runs in cells[door].items()}
        out["doors"][door]["runs"] = cells[door]
    for c in map(str, concurrencies):
        grpc, http = out["doors"]["grpc"][c], out["doors"]["http"][c]
        out["ratios"][c] = {
            "throughput_http_over_grpc": _ratio(http["throughput_rps"], grpc["throughput_rps"]),
            "p50_http_over_grpc": _ratio(http["p50_ms"], grpc["p50_ms"]),
            "cpu_http_over_grpc": _ratio(http["proxy_cpu_us_per_request"], grpc["proxy_cpu_us_per_request"]),
        }
    out["sigv4_verify_us"] = sigv4_verify_cost()
    return out


def _median_cell(runs: list[dict]) -> dict:
    def median(key):
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None

    return {"throughput_rps": median("throughput_rps"), "p50_ms": median("p50_ms"), "p99_ms": median("p99_ms"),
            "proxy_cpu_us_per_request": median("proxy_cpu_us_per_request"),
            "client_cpu_us_per_request": median("client_cpu_us_per_request"),
            "requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "variants": _merged(r.get("variants", {}) for r in runs)}


def _merged(dicts) -> dict:
    total: dict = {}
    for d in dicts:
        for key, value in d.items():
            total[key] = total.get(key, 0) + value
    return total


def _ratio(a, b):
    return a / b if a is not None and b else None


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def sigv4_verify_cost(repeat: int = 2000) -> float | None:
    """Microseconds `mve.sigv4.verify` takes on an InvokeEndpoint request boto3 signed (None without mve.sigv4)."""
    try:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        from mve import sigv4
        from invoke_loadgen import npy_body
    except ImportError:
        return None
    body = npy_body(1)
    url = "http://127.0.0.1:8081/endpoints/mlp/invocations"
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    SigV4Auth(Credentials("MVEKBENCHMARK0000000", "secret" * 6), "sagemaker", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    headers["Host"] = "127.0.0.1:8081"
    date = headers["X-Amz-Date"][:8]
    keys = sigv4.SigningKeys(True, {("MVEKBENCHMARK0000000", date): sigv4.date_key("secret" * 6, date)})
    sigv4.verify("POST", url, headers, body, keys)  # correct, or the figure would time a refusal
    started = time.perf_counter()
    for _ in range(repeat):
        sigv4.verify("POST", url, headers, body, keys)
    return (time.perf_counter() - started) * 1e6 / repeat


def print_doors(doors: dict, out=None) -> None:
    """The door rows as plain text: each door's medians, then HTTP / gRPC."""
    write = (out or sys.stdout).write
    write(f"\nInvokeEndpoint by door ({doors['request']}; medians of {doors['rounds']} alternating rounds; "
          f"auth {doors['auth']})\n")
    write(f"{'door':<6} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU us/req':>17} "
          f"{'client CPU us/req':>18} {'errors':>7}\n")
    for door in DOORS:
        for c, cell in doors["doors"][door].items():
            if c == "runs":
                continue
            write(f"{door:<6} {c:>5} {cell['throughput_rps']:>9.0f} {_fmt(cell['p50_ms'])} {_fmt(cell['p99_ms'])} "
                  f"{cell['proxy_cpu_us_per_request']:>17.0f} {cell['client_cpu_us_per_request'] or 0:>18.0f} "
                  f"{cell['errors']:>7}\n")
    write(f"{'HTTP / gRPC':<12} {'conc':>5} {'req/s':>9} {'p50':>8} {'CPU/req':>8}\n")
    for c, ratio in doors["ratios"].items():
        write(f"{'':<12} {c:>5} {_fmt(ratio['throughput_http_over_grpc'], 9)} {_fmt(ratio['p50_http_over_grpc'])} "
              f"{_fmt(ratio['cpu_http_over_grpc'])}\n")
    if doors.get("sigv4_verify_us") is not None:
        write(f"a signed request adds one SigV4 verification in the proxy: {doors['sigv4_verify_us']:.0f} us "
              f"(mve.sigv4.verify, in process)\n")


def _fmt(value, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.2f}"
