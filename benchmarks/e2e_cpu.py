"""CPU per request of every process of a cell, and cells over several targets (the round-robin direct baseline).

A process's CPU is the utime+stime of all its threads (``/proc/PID/task/*/stat``), summed over
the process and its descendants (nginx's workers, the proxy's --workers); it is read before and
after a cell and divided by every answer the cell's load gave, warm-up included (the load process
reports ``answers_total``). The load processes' own CPU is the rusage of the finished children.
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path

import numpy as np
import psutil

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> float:
    """utime + stime of every live thread of `pid` (/proc/PID/task/*/stat), in seconds; 0 when gone."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended between the listing and the read
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def cpu_by_thread(pid: int) -> dict[int, float]:
    """utime + stime of each live thread of `pid`, in seconds, by thread id."""
    seconds = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return seconds


def busiest_thread_split(before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """CPU seconds between two `cpu_by_thread` readings: (the busiest thread's, all the other threads')."""
    deltas = sorted((seconds - before.get(tid, 0.0) for tid, seconds in after.items()), reverse=True)
    return (deltas[0], sum(deltas[1:])) if deltas else (0.0, 0.0)


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def listening_pid(port: int, under: int) -> int | None:
    """The process among `under` and its descendants listening on 127.0.0.1:`port` (a model server), or None."""
    for pid in tree_pids(under):
        try:
            process = psutil.Process(pid)
            connections = process.net_connections("tcp") if hasattr(process, "net_connections") else \
                process.connections("tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections):
            return pid
    return None


def group_cpu(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of processes (each with its descendants)."""
    return {name: sum(thread_cpu_seconds(p) for pid in pids for p in tree_pids(pid)) for name, pids in groups.items()}


def children_cpu() -> float:
    """utime + stime of this process's finished children (the load processes), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_idle(pids: list[int], *, busy: float = 0.1, window: float = 0.25, max_wait: float = 15.0) -> float:
    """Wait until `pids` (with descendants) use under `busy` of a core over `window` s (a model server still
    working off a finished cell's queue); the seconds waited."""
    import time

    started = time.monotonic()
    while time.monotonic() - started < max_wait:
        before = group_cpu({"all": pids})["all"]
        time.sleep(window)
        if group_cpu({"all": pids})["all"] - before < busy * window:
            break
    return time.monotonic() - started


def merge_cells(parts: list[dict], seconds: float) -> dict:
    """One cell from load processes run side by side (or one after another over `seconds` in all)."""
    latencies = np.concatenate([np.asarray(p["_latencies_ms"], dtype=np.float64) for p in parts]) \
        if parts else np.zeros(0)
    requests = sum(p["requests"] for p in parts)
    variants: dict = {}
    codes: dict = {}
    for part in parts:
        for key, value in part.get("variants", {}).items():
            variants[key] = variants.get(key, 0) + value
        for key, value in part.get("error_codes", {}).items():
            codes[key] = codes.get(key, 0) + value
    return {
        "requests": requests,
        "errors": sum(p["errors"] for p in parts),
        "error_codes": codes,
        "seconds": seconds,
        "throughput_rps": requests / seconds if seconds else 0.0,
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
        "mean_ms": float(latencies.mean()) if len(latencies) else None,
        "answers_total": sum(p["answers_total"] for p in parts),
        "variants": variants,
        "_latencies_ms": latencies,
    }


def run_spread(run_one, targets: list[str], concurrency: int, seconds: float, rows: int = 1) -> dict:
    """A closed loop of `concurrency` over `targets` round-robin; `run_one(target, concurrency, seconds)` is one cell.

    With at least one caller per target the callers are split evenly over the targets, side by
    side (each load process on its own target); with fewer (c=1 over two instances) the cell is
    cut in turns of equal length, one target after the other: a round-robin client at c=1 sees
    each instance's latency half of the time, which is what the turns measure.
    """
    if len(targets) == 1:
        return run_one(targets[0], concurrency, seconds)
    if concurrency >= len(targets):
        shares = [concurrency // len(targets) + (i < concurrency % len(targets)) for i in range(len(targets))]
        parts: list = [None] * len(targets)

        def go(index: int) -> None:
            parts[index] = run_one(targets[index], shares[index], seconds)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(targets))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if any(part is None for part in parts):
            raise RuntimeError("a load process of the round-robin cell failed (see above)")
        merged = merge_cells(parts, seconds)
    else:
        turn = seconds / len(targets)
        merged = merge_cells([run_one(target, concurrency, turn) for target in targets], seconds)
    merged.update(concurrency=concurrency, rows=rows, targets=list(targets))
    return merged


def measure(run_cell, watch: dict[str, list[int]]) -> dict:
    """Run `run_cell()` and add ``cpu_us_per_request`` for each group in `watch` and for the load processes."""
    before, load_before = group_cpu(watch), children_cpu()
    cell = run_cell()
    after, load_after = group_cpu(watch), children_cpu()
    answers = max(cell.get("answers_total") or cell["requests"], 1)
    cpu = {name: (after[name] - before[name]) * 1e6 / answers for name in watch}
    cpu["loadgen"] = (load_after - load_before) * 1e6 / answers
    cell["cpu_us_per_request"] = cpu
    return cell
