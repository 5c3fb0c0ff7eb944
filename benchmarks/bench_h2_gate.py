"""Issue 18's gate: the native HTTP/2 no-op (noop_h2_server.py) against the grpc.aio no-op (noop_server.py).

Both servers answer ModelInfer with the same canned bytes. Each cell starts one server pinned alone
to core 1 (``taskset -c 1``), checks one answer with a gRPC client, and drives it with nghttp2's
h2load pinned to core 0 (``taskset -c 0``) with the same request bytes as bench_e2e's h2load cells
(h2load_gen.py: the MLP's 1-row ModelInferRequest, ``-c min(4, c // 16)`` connections). The
server's CPU is the utime+stime of all its threads (``/proc/PID/task/*/stat``) read when h2load
says its main duration starts and ends (after a warm-up), divided by the requests h2load completed
in that window; req/s is those requests over the window. Cells alternate (grpc.aio, native,
grpc.aio, ...) for several rounds; the gate compares medians at c=64: the native no-op must cost at
most 0.35x the grpc.aio no-op's CPU per request and serve at least 2.5x its req/s.

Before measuring it waits (at most --quiet-wait s) for a quiet machine: no pytest, bench_e2e or
h2load running and a 1-minute load average under --max-load. Prints a table and the verdict, writes
benchmarks/results/h2_gate.json.

    python benchmarks/bench_h2_gate.py              # 5 rounds, c=64 and c=8, 5 s windows (~3 minutes)
    python benchmarks/bench_h2_gate.py --rounds 1 --seconds 1 --concurrency 64   # a quick look

Needs h2load (Debian: sudo apt-get install -y nghttp2-client; as root it is installed for you),
taskset (util-linux) and the mve._h2transport extension (sudo apt-get install -y libnghttp2-dev,
then make build).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from h2load_gen import H2LOAD, INSTALL_HINT, check_answer, ensure_h2load  # noqa: E402
from loadgen import METHOD, infer_request  # noqa: E402

RESULTS = HERE / "results" / "h2_gate.json"
SERVERS = {"grpc.aio": HERE / "noop_server.py", "native": HERE / "noop_h2_server.py"}
SERVER_CORE, LOAD_CORE = "1", "0"
GATE_CONCURRENCY = 64
MAX_CPU_RATIO, MIN_RPS_RATIO = 0.35, 2.5
BUSY = re.compile(r"pytest|bench_e2e|h2load")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def busy_processes() -> list[str]:
    """Other load on the machine: pytest, bench_e2e and h2load processes, not this one."""
    done = subprocess.run(["pgrep", "-af", BUSY.pattern], capture_output=True, text=True)
    ours = {str(os.getpid())}
    return [line for line in done.stdout.splitlines() if line.split(" ", 1)[0] not in ours]


def wait_for_quiet(max_wait: float, max_load: float, poll: float = 30.0) -> dict:
    """Wait (bounded) until nothing else runs and the 1-minute load is under `max_load`."""
    started = time.monotonic()
    while True:
        load1 = float(Path("/proc/loadavg").read_text().split()[0])
        busy = busy_processes()
        waited = time.monotonic() - started
        if not busy and load1 < max_load:
            return {"quiet": True, "waited_s": round(waited), "load1": load1}
        if waited + poll > max_wait:
            print(f"warning: no quiet window after {waited:.0f} s (load {load1}, busy: {busy[:3]}); measuring anyway",
                  file=sys.stderr)
            return {"quiet": False, "waited_s": round(waited), "load1": load1, "busy": busy[:5]}
        print(f"waiting for a quiet machine: load {load1}, busy: {[b[:80] for b in busy[:3]]}", file=sys.stderr)
        time.sleep(poll)


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, in seconds (/proc/PID/task/*/stat)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended just now
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (/proc/PID/stat), threads that have ended included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_server(kind: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(["taskset", "-c", SERVER_CORE, sys.executable, str(SERVERS[kind])],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        raise RuntimeError(f"{kind} no-op server did not start (exit {process.returncode})")
    return process, json.loads(line)["address"]


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def run_cell(kind: str, concurrency: int, seconds: float, warmup: float, body_file: Path, body: bytes) -> dict:
    """One server, one h2load run: the window's requests, req/s and the server's CPU per request."""
    process, address = start_server(kind)
    try:
        frame_size, _ = check_answer(address, body)
        connections = max(1, min(4, concurrency // 16))
        streams = -(-concurrency // connections)
        command = ["taskset", "-c", LOAD_CORE, H2LOAD, "-D", f"{int(seconds * 1000)}ms",
                   "--warm-up-time", f"{int(warmup * 1000)}ms", "-c", str(connections), "-m", str(streams),
                   "-t", "1", "-d", str(body_file), "-H", "content-type: application/grpc", "-H", "te: trailers",
                   f"http://{address}{METHOD}"]
        load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # (time, server CPU s from its threads, the same from /proc/PID/stat, h2load CPU s)
        marks: dict[str, tuple[float, float, float, float]] = {}
        lines = []
        deadline = time.monotonic() + seconds + warmup + 60
        for line in load.stdout:
            lines.append(line)
            if "Main benchmark duration is started" in line:
                marks["start"] = (time.monotonic(), cpu_seconds(process.pid), process_cpu_seconds(process.pid),
                                  process_cpu_seconds(load.pid))
            elif "Main benchmark duration is over" in line:
                marks["end"] = (time.monotonic(), cpu_seconds(process.pid), process_cpu_seconds(process.pid),
                                process_cpu_seconds(load.pid))
            if time.monotonic() > deadline:
                load.kill()
                break
        load.wait(30)
    finally:
        stop_server(process)
    out = "".join(lines)
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", out)
    if load.returncode != 0 or counts is None or len(marks) != 2:
        raise RuntimeError(f"h2load failed ({load.returncode}) against {kind}:\n{out[-2000:]}")
    succeeded, failed, errored, timed_out = (int(counts.group(i)) for i in (3, 4, 5, 6))
    data = re.search(r"\((\d+)\) data", out)
    # Data bytes also count the warm-up's answers: only a shortfall below the measured ones is an error.
    missing = max(0, succeeded - (int(data.group(1)) if data else 0) // frame_size)
    good = succeeded - missing
    window = marks["end"][0] - marks["start"][0]
    if abs(window - seconds) > max(0.5, 0.1 * seconds):
        raise RuntimeError(f"h2load's window marks are {window:.2f} s apart, not {seconds} s: cannot time the CPU")
    cpu = marks["end"][1] - marks["start"][1]
    return {
        "server": kind, "concurrency": concurrency, "connections": connections, "window_s": window,
        "requests": good, "errors": failed + errored + timed_out + missing, "throughput_rps": good / seconds,
        "cpu_s": cpu, "cpu_util": cpu / window, "cpu_us_per_request": cpu / good * 1e6 if good else None,
        # cross-check: the server's CPU from /proc/PID/stat (counts threads that ended in the window too)
        "process_cpu_s": marks["end"][2] - marks["start"][2],
        # h2load's own CPU (taskset execs it: same pid; its worker thread ends with the window, hence
        # /proc/PID/stat): near 100% means the load generator, not the server, is the limit
        "h2load_cpu_util": (marks["end"][3] - marks["start"][3]) / window,
    }


def summarise(cells: list[dict]) -> dict:
    out = {}
    for kind in SERVERS:
        mine = [c for c in cells if c["server"] == kind]
        out[kind] = {
            "throughput_rps": statistics.median(c["throughput_rps"] for c in mine),
            "cpu_us_per_request": statistics.median(c["cpu_us_per_request"] for c in mine),
            "cpu_util": statistics.median(c["cpu_util"] for c in mine),
            "h2load_cpu_util": statistics.median(c["h2load_cpu_util"] for c in mine),
            "errors": sum(c["errors"] for c in mine),
        }
    out["cpu_ratio"] = out["native"]["cpu_us_per_request"] / out["grpc.aio"]["cpu_us_per_request"]
    out["rps_ratio"] = out["native"]["throughput_rps"] / out["grpc.aio"]["throughput_rps"]
    return out


def print_table(results: dict) -> None:
    print(f"\nissue 18 gate: no-op servers pinned to core {SERVER_CORE}, h2load on core {LOAD_CORE}, "
          f"{results['settings']['seconds']:g} s windows, {results['settings']['rounds']} rounds")
    print(f"load average at start {results['load_start']}, at end {results['load_end']}; "
          f"quiet window: {results['quiet']['quiet']} (waited {results['quiet']['waited_s']} s)")
    header = (f"{'c':>4} {'round':>5} {'server':<9} {'req/s':>9} {'CPU us/req':>11} {'server CPU':>10} "
              f"{'h2load CPU':>10} {'errors':>6}")
    for concurrency, block in results["concurrency"].items():
        print("\n" + header)
        for cell in block["cells"]:
            print(f"{concurrency:>4} {cell['round']:>5} {cell['server']:<9} {cell['throughput_rps']:>9.0f} "
                  f"{cell['cpu_us_per_request']:>11.1f} {cell['cpu_util']:>10.0%} {cell['h2load_cpu_util']:>10.0%} "
                  f"{cell['errors']:>6}")
        summary = block["summary"]
        for kind in SERVERS:
            s = summary[kind]
            print(f"{concurrency:>4} {'med':>5} {kind:<9} {s['throughput_rps']:>9.0f} {s['cpu_us_per_request']:>11.1f} "
                  f"{s['cpu_util']:>10.0%} {s['h2load_cpu_util']:>10.0%} {s['errors']:>6}")
        print(f"c={concurrency}: native/grpc.aio CPU per request {summary['cpu_ratio']:.3f}x, "
              f"req/s {summary['rps_ratio']:.2f}x")
    gate = results["gate"]
    print(f"\ngate at c={GATE_CONCURRENCY}: CPU per request {gate['cpu_ratio']:.3f}x (needs <= {MAX_CPU_RATIO}x), "
          f"req/s {gate['rps_ratio']:.2f}x (needs >= {MIN_RPS_RATIO}x): {'PASS' if gate['passed'] else 'FAIL'}")
    if results["settings"]["seconds"] < 5:
        print("(windows under 5 s do not count for the gate)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per cell (>= 5 for the gate)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[GATE_CONCURRENCY, 8])
    parser.add_argument("--quiet-wait", type=float, default=600.0, help="longest wait for a quiet machine, s")
    parser.add_argument("--max-load", type=float, default=1.0, help="1-minute load average that counts as quiet")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.seconds <= 60:
        parser.error("--rounds in [1, 20], --seconds in [0.5, 60]")
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        print("needs two cores and taskset (util-linux)", file=sys.stderr)
        return 2
    try:
        import mve._h2transport  # noqa: F401
    except ImportError:
        print("mve._h2transport is not built: sudo apt-get install -y libnghttp2-dev, then make build", file=sys.stderr)
        return 2
    try:
        ensure_h2load()
    except RuntimeError as error:
        print(f"{error} (h2load: {INSTALL_HINT})", file=sys.stderr)
        return 2

    started = time.monotonic()
    quiet = wait_for_quiet(args.quiet_wait, args.max_load)
    load_start = Path("/proc/loadavg").read_text().strip()
    print(f"load average at start: {load_start}", file=sys.stderr)
    body = infer_request("mlp", 1)
    results = {
        "benchmark": "h2-gate",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "warmup_seconds": args.warmup,
                     "concurrency": args.concurrency, "server_core": SERVER_CORE, "load_core": LOAD_CORE,
                     "request": "mlp, 1 row FP32, raw (h2load_gen.py's body)"},
        "quiet": quiet, "load_start": load_start, "concurrency": {},
    }
    with tempfile.TemporaryDirectory(prefix="mve-h2-gate-") as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(b"\x00" + struct.pack(">I", len(body)) + body)
        for concurrency in args.concurrency:
            cells = []
            for round_index in range(1, args.rounds + 1):
                for kind in SERVERS:
                    cell = run_cell(kind, concurrency, args.seconds, args.warmup, body_file, body)
                    cell["round"] = round_index
                    cells.append(cell)
                    print(f"  c={concurrency} round {round_index} {kind}: {cell['throughput_rps']:.0f} req/s, "
                          f"{cell['cpu_us_per_request']:.1f} us CPU/request, server CPU {cell['cpu_util']:.0%}, "
                          f"h2load CPU {cell['h2load_cpu_util']:.0%}",
                          file=sys.stderr)
            results["concurrency"][str(concurrency)] = {"cells": cells, "summary": summarise(cells)}
    results["load_end"] = Path("/proc/loadavg").read_text().strip()
    gate_block = results["concurrency"].get(str(GATE_CONCURRENCY))
    if gate_block:
        summary = gate_block["summary"]
        results["gate"] = {"concurrency": GATE_CONCURRENCY, "cpu_ratio": summary["cpu_ratio"],
                           "rps_ratio": summary["rps_ratio"], "max_cpu_ratio": MAX_CPU_RATIO,
                           "min_rps_ratio": MIN_RPS_RATIO,
                           "passed": summary["cpu_ratio"] <= MAX_CPU_RATIO and summary["rps_ratio"] >= MIN_RPS_RATIO
                           and args.seconds >= 5.0}
    else:
        results["gate"] = {"concurrency": GATE_CONCURRENCY, "cpu_ratio": float("nan"), "rps_ratio": float("nan"),
                           "passed": False, "note": f"c={GATE_CONCURRENCY} was not run"}
    results["wall_seconds"] = time.monotonic() - started
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} ({results['wall_seconds']:.0f} s)")
    return 0 if results["gate"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
