"""The end-to-end benchmark's targets (ratios in one run) and its printed table."""

from __future__ import annotations

SCENARIO_LABELS = {
    "direct": "direct (round-robin)",
    "nginx": "nginx split_clients 50/50",
    "envoy": "envoy weighted 50/50",
    "mve": "mve proxy, batching off",
    "mve_batched": "mve proxy, batching on",
    "noop": "grpc.aio no-op server",
}

# (name, what it compares, limit, direction)
TARGET_C64_VS_DIRECT = 3.0
TARGET_C64_VS_NGINX = 2.0
TARGET_C1_P50 = 1.8
TARGET_RSS_MB = 200.0
# Issue 18: Envoy is the anchor (ratios in one run).
TARGET_CPU_VS_ENVOY = 1.0
TARGET_C1_MEAN_VS_ENVOY = 1.0
TARGET_COMPUTE_BOUND_OF_ALONE = 0.85


def _cell(results: dict, scenario: str, concurrency: int) -> dict | None:
    cells = results["scenarios"].get(scenario)
    if not isinstance(cells, dict) or "cells" not in cells:
        return None
    return cells["cells"].get(str(concurrency))


def _top(results: dict) -> int:
    return max(results["settings"]["concurrency"])


def _ratio(a, b):
    return a / b if a is not None and b else None


def evaluate_targets(results: dict) -> list[dict]:
    """Each target with its measured value (None when a scenario did not run) and met/missed."""
    targets = []

    def add(name: str, value, limit: float, at_least: bool) -> None:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        targets.append({"name": name, "value": value, "limit": limit, "at_least": at_least, "met": met})

    top = max(results["settings"]["concurrency"])
    low = min(results["settings"]["concurrency"])
    batched, direct, nginx = (_cell(results, s, top) for s in ("mve_batched", "direct", "nginx"))
    add(f"c={top} throughput: mve batched / direct",
        _ratio(batched and batched["throughput_rps"], direct and direct["throughput_rps"]), TARGET_C64_VS_DIRECT, True)
    add(f"c={top} throughput: mve batched / nginx",
        _ratio(batched and batched["throughput_rps"], nginx and nginx["throughput_rps"]), TARGET_C64_VS_NGINX, True)
    hop = results.get("c1_hop")
    if hop:
        add("c=1 p50 latency: mve / direct (interleaved)", hop["ratio_of_medians"], TARGET_C1_P50, False)
    else:
        mve_low, direct_low = _cell(results, "mve", low), _cell(results, "direct", low)
        add(f"c={low} p50 latency: mve / direct",
            _ratio(mve_low and mve_low["p50_ms"], direct_low and direct_low["p50_ms"]), TARGET_C1_P50, False)
    mve_ratios = (results["scenarios"].get("mve") or {}).get("ratios") or {}
    add(f"c={top} proxy CPU/request: mve / envoy", mve_ratios.get(str(top), {}).get("proxy_cpu_vs_envoy"),
        TARGET_CPU_VS_ENVOY, False)
    add(f"c={low} mean latency: mve / envoy", mve_ratios.get(str(low), {}).get("mean_ms_vs_envoy"),
        TARGET_C1_MEAN_VS_ENVOY, False)
    compute = results.get("compute_bound")
    add(f"MLP c={top}: mve batched / onnxruntime alone", compute and compute["mve_batched_over_alone"],
        TARGET_COMPUTE_BOUND_OF_ALONE, True)
    add("proxy RSS after the load (MB)", results.get("proxy_rss_mb"), TARGET_RSS_MB, False)
    return targets


def _fmt(value, spec: str) -> str:
    if value is None:
        width = spec.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 0)
    return format(value, spec)


def print_report(results: dict, out=None) -> None:
    """The scenario table, the sweeps and the targets, as plain text."""
    import sys

    write = (out or sys.stdout).write
    settings = results.get("settings", {})
    batching = settings.get("batching") or {}
    if batching:
        delay = batching.get("MaxDelayMicroseconds")
        write(f"load: {settings.get('loadgen', 'loadgen')}; batching on = MaxBatchSize {batching.get('MaxBatchSize')}, "
              f"MaxDelayMicroseconds {delay}{' (adaptive)' if delay == 0 else ''}"
              f"{'; proxy ' + ' '.join(settings['proxy_args']) if settings.get('proxy_args') else ''}\n")
    write(f"medians of {settings.get('rounds', 1)} alternating round(s); us = CPU us per request (utime+stime of all "
          f"threads / answers, warm-up included); x direct / x envoy = medians of per-round ratios\n")
    write(f"{'scenario':<28} {'conc':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>7} "
          f"{'proxy us':>8} {'servers us':>10} {'load us':>7} {'err':>4} | {'x direct':>8} "
          f"{'mean':>5} | {'x envoy':>7} {'mean':>5} {'CPU':>5}\n")
    for scenario, label in SCENARIO_LABELS.items():
        entry = results["scenarios"].get(scenario)
        if entry is None:
            continue
        if "skipped" in entry:
            write(f"{label:<28} skipped: {entry['skipped']}\n")
            continue
        for concurrency, cell in entry["cells"].items():
            cpu = cell.get("cpu_us_per_request") or {}
            ratios = (entry.get("ratios") or {}).get(concurrency, {})
            write(f"{label:<28} {concurrency:>5} {cell['throughput_rps']:>8.0f} {_fmt(cell['p50_ms'], '7.2f')} "
                  f"{_fmt(cell['p99_ms'], '7.2f')} {_fmt(cell.get('mean_ms'), '7.2f')} "
                  f"{_fmt(cpu.get('proxy'), '8.0f')} {_fmt(cpu.get('model_servers'), '10.0f')} "
                  f"{_fmt(cpu.get('loadgen'), '7.0f')} {cell['errors']:>4} | "
                  f"{_fmt(ratios.get('throughput_vs_direct'), '8.2f')} {_fmt(ratios.get('mean_ms_vs_direct'), '5.2f')} | "
                  f"{_fmt(ratios.get('throughput_vs_envoy'), '7.2f')} {_fmt(ratios.get('mean_ms_vs_envoy'), '5.2f')} "
                  f"{_fmt(ratios.get('proxy_cpu_vs_envoy'), '5.2f')}\n")
    if results.get("proxy_rss_mb") is not None:
        end = results.get("proxy_rss_mb_end")
        write(f"proxy RSS after these rows: {results['proxy_rss_mb']:.0f} MB"
              f"{'' if end is None else f'; at the end of the run: {end:.0f} MB'}\n")
    for key, title, unit in (("variants_sweep", "variants", "variants"), ("rows_sweep", "rows/request", "rows")):
        sweep = results.get(key)
        if not sweep:
            continue
        write(f"\nmve proxy (batching off), c={sweep['concurrency']}, by {title}\n")
        write(f"{unit:>9} {'req/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}\n")
        for n, cell in sweep["cells"].items():
            write(f"{n:>9} {cell['throughput_rps']:>9.0f} {cell['throughput_rps'] * cell['rows']:>10.0f} "
                  f"{_fmt(cell['p50_ms'], '8.2f')} {_fmt(cell['p99_ms'], '8.2f')} {cell['errors']:>7}\n")
    noop, direct = _cell(results, "noop", _top(results)), _cell(results, "direct", _top(results))
    if noop and direct:
        write(f"\nceiling: a grpc.aio server doing nothing serves {noop['throughput_rps']:.0f} req/s at "
              f"c={_top(results)}, {noop['throughput_rps'] / direct['throughput_rps']:.2f}x direct; no Python "
              f"proxy on these cores can pass that\n")
    hop = results.get("c1_hop")
    if hop and "forwarder_ratio_of_medians" in hop:
        write(f"floor: through a bare grpc.aio forwarder the c=1 p50 is {hop['forwarder_ratio_of_medians']:.2f}x "
              f"direct (mve: {hop['ratio_of_medians']:.2f}x), alternating rounds on the same model server\n")
    write("\ntargets (ratios in this run)\n")
    for target in results["targets"]:
        sign = ">=" if target["at_least"] else "<="
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        write(f"  {target['name']:<46} {_fmt(target['value'], '8.2f')}  ({sign} {target['limit']:g})  {verdict}\n")
