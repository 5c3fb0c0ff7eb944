"""Benchmark of mve._fastroute's variant choice against the standard library and numpy.

Run: ``.venv/bin/python benchmarks/bench_fastroute.py`` (about 5 s). Prints a table and writes
``benchmarks/results/fastroute.json``. Each number is the best of many short timed rounds
(time.perf_counter, gc off) in which the contenders take turns, so that load from other
processes costs rounds rather than skewing one contender.

Single picks are timed the way the proxy makes them, one call per request in a Python loop,
loop overhead included on both sides. ``fill`` times the C loop alone; ``pick_many`` adds a new
output array, and for large n that can cost more than the picks: whether the allocator hands
back pages already mapped or fresh ones (page faults) depends on what was freed before it.

Targets: a single ``WeightedChooser.pick()`` at least 30x faster than
``random.choices(range(k), weights)[0]``; bulk ``pick_many``/``fill`` at least 10x faster per pick
than ``numpy.random.Generator.choice(k, size=n, p=weights)``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mve._fastroute import StickyChooser, WeightedChooser, _alias_simd

RESULTS = Path(__file__).parent / "results" / "fastroute.json"
WEIGHTS = {2: [0.9, 0.1], 3: [0.5, 0.3, 0.2], 10: [float(i) for i in range(1, 11)]}
SINGLE_TARGET = 30.0
BULK_TARGET = 10.0


def best_ns(contenders: dict[str, tuple[Callable[[], object], int]], rounds: int) -> dict[str, float]:
    """Nanoseconds per item of each contender, the best of ``rounds``.

    A contender is ``(run, items)``: ``run()`` handles ``items`` picks. The contenders take
    turns within each round, so a burst of load from other processes hits them alike.
    """
    best = {name: float("inf") for name in contenders}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, (run, items) in contenders.items():
                start = time.perf_counter()
                run()
                best[name] = min(best[name], (time.perf_counter() - start) / items * 1e9)
    finally:
        if enabled:
            gc.enable()
    return best


def python_loop(call: Callable[[], object], n: int) -> tuple[Callable[[], None], int]:
    """A contender that makes ``call()`` n times in a plain Python for loop."""

    def loop() -> None:
        for _ in range(n):
            call()

    return loop, n


def bench_k(k: int, args: argparse.Namespace) -> dict:
    weights = WEIGHTS[k]
    p = np.asarray(weights) / sum(weights)
    chooser = WeightedChooser(weights, seed=1)
    generator = np.random.default_rng(1)
    population = range(k)
    choices = random.choices

    def choices_pick() -> int:
        return choices(population, weights)[0]

    single = best_ns(
        {
            "fastroute_pick": python_loop(chooser.pick, args.single),
            "random_choices": python_loop(choices_pick, max(args.single // 10, 1000)),
            "numpy_choice": python_loop(lambda: generator.choice(k, p=p), max(args.single // 100, 100)),
        },
        args.repeats,
    )

    bulk = {}
    for n in args.bulk:
        out = np.empty(n, dtype=np.int64)
        bulk[str(n)] = best_ns(
            {
                "fastroute_pick_many": (lambda: chooser.pick_many(n), n),
                "fastroute_fill": (lambda: chooser.fill(out), n),
                "numpy_choice": (lambda: generator.choice(k, size=n, p=p), n),
            },
            args.repeats,
        )
        bulk[str(n)]["speedup_pick_many_vs_numpy"] = bulk[str(n)]["numpy_choice"] / bulk[str(n)]["fastroute_pick_many"]
        bulk[str(n)]["speedup_fill_vs_numpy"] = bulk[str(n)]["numpy_choice"] / bulk[str(n)]["fastroute_fill"]

    sticky = StickyChooser(weights)
    keys = [os.urandom(16) for _ in range(args.sticky)]
    sticky_pick = sticky.pick

    def sticky_loop() -> None:
        for key in keys:
            sticky_pick(key)

    sticky_ns = best_ns({"sticky": (sticky_loop, len(keys))}, args.repeats)["sticky"]
    return {
        "k": k,
        "weights": weights,
        "single_ns": single,
        "bulk_ns_per_pick": bulk,
        "sticky_ns_16_byte_key": sticky_ns,
        "single_speedup_vs_random_choices": single["random_choices"] / single["fastroute_pick"],
        "single_speedup_vs_numpy_choice": single["numpy_choice"] / single["fastroute_pick"],
    }


def _cython_version() -> str | None:
    # The version the extension was built with, from package metadata: Cython itself is a build
    # dependency, absent after a plain `pip install .`.
    from importlib import metadata

    try:
        return metadata.version("cython")
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cython": _cython_version(),
        "fastroute_alias_simd": _alias_simd(),
    }


def rate(ns: float) -> str:
    return f"{1e9 / ns / 1e6:,.2f} M/s"


def fill_ok(bulk: dict) -> bool:
    return bulk["speedup_fill_vs_numpy"] >= BULK_TARGET


def pick_many_ok(bulk: dict) -> bool:
    return bulk["speedup_pick_many_vs_numpy"] >= BULK_TARGET


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mve._fastroute variant choice (best of rounds; ns per pick and picks/s)")
    for column in ("k", "what", "n", "fastroute", "baseline", "speedup", "target"):
        table.add_column(column, justify="left" if column in ("what", "target") else "right")
    for row in rows:
        s, k = row["single_ns"], str(row["k"])
        single_ok = row["single_speedup_vs_random_choices"] >= SINGLE_TARGET
        table.add_row(
            k, "pick() vs random.choices()[0]", "1",
            f"{s['fastroute_pick']:.1f} ns  {rate(s['fastroute_pick'])}",
            f"{s['random_choices']:.1f} ns  {rate(s['random_choices'])}",
            f"{row['single_speedup_vs_random_choices']:.1f}x",
            f">= {SINGLE_TARGET:.0f}x {'ok' if single_ok else 'MISSED'}",
        )
        table.add_row(
            k, "pick() vs Generator.choice(k, p)", "1",
            f"{s['fastroute_pick']:.1f} ns",
            f"{s['numpy_choice']:.1f} ns  {rate(s['numpy_choice'])}",
            f"{row['single_speedup_vs_numpy_choice']:.0f}x", "",
        )
        for n, b in row["bulk_ns_per_pick"].items():
            table.add_row(
                k, "pick_many(n) vs Generator.choice(k, n, p)", f"{int(n):,}",
                f"{b['fastroute_pick_many']:.2f} ns  {rate(b['fastroute_pick_many'])}",
                f"{b['numpy_choice']:.2f} ns  {rate(b['numpy_choice'])}",
                f"{b['speedup_pick_many_vs_numpy']:.1f}x",
                f">= {BULK_TARGET:.0f}x {'ok' if pick_many_ok(b) else 'MISSED (new array)'}",
            )
            table.add_row(
                k, "fill(out) vs Generator.choice(k, n, p)", f"{int(n):,}",
                f"{b['fastroute_fill']:.2f} ns  {rate(b['fastroute_fill'])}",
                f"{b['numpy_choice']:.2f} ns",
                f"{b['speedup_fill_vs_numpy']:.1f}x",
                f">= {BULK_TARGET:.0f}x {'ok' if fill_ok(b) else 'MISSED'}",
            )
        table.add_row(
            k, "StickyChooser.pick(16-byte key)", "1",
            f"{row['sticky_ns_16_byte_key']:.1f} ns  {rate(row['sticky_ns_16_byte_key'])}", "", "", "",
            end_section=True,
        )
    Console(width=150).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=50_000, help="single picks per timed loop (10k..10M)")
    parser.add_argument(
        "--bulk", type=int, nargs="+", default=[10_000, 1_000_000], help="picks per bulk call (1k..100M each)"
    )
    parser.add_argument("--sticky", type=int, default=20_000, help="16-byte keys per sticky loop (1k..10M)")
    parser.add_argument("--repeats", type=int, default=25, help="timed rounds, best kept (1..200)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    for name, low, high in (("single", 10_000, 10**7), ("sticky", 1000, 10**7), ("repeats", 1, 200)):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be in [{low}, {high}]")
    if not all(1000 <= n <= 10**8 for n in args.bulk):
        parser.error("--bulk sizes must be in [1000, 100000000]")

    started = time.perf_counter()
    rows = [bench_k(k, args) for k in sorted(WEIGHTS)]
    elapsed = time.perf_counter() - started
    print_table(rows)
    single_ok = all(r["single_speedup_vs_random_choices"] >= SINGLE_TARGET for r in rows)
    bulk = [b for r in rows for b in r["bulk_ns_per_pick"].values()]
    fill_met, pick_many_met = all(map(fill_ok, bulk)), all(map(pick_many_ok, bulk))
    print(
        f"targets: single >= {SINGLE_TARGET:.0f}x {'met' if single_ok else 'MISSED'}; "
        f"bulk >= {BULK_TARGET:.0f}x: fill {'met' if fill_met else 'MISSED'}, "
        f"pick_many {'met' if pick_many_met else 'MISSED where its new array got fresh pages'}; "
        f"ran {elapsed:.1f} s"
    )

    result = {
        "benchmark": "fastroute",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"single": args.single, "bulk": args.bulk, "sticky": args.sticky, "repeats": args.repeats},
        "targets": {"single_vs_random_choices": SINGLE_TARGET, "bulk_vs_numpy_choice": BULK_TARGET,
                    "single_met": single_ok, "bulk_fill_met": fill_met, "bulk_pick_many_met": pick_many_met},
        "elapsed_s": elapsed,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
