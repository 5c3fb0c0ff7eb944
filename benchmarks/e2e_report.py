"""The end-to-end benchmark's targets (ratios in one run, for each proxy transport) and its printed table."""

from __future__ import annotations

import statistics

PEER_LABELS = {
    "direct": "direct (round-robin)",
    "nginx": "nginx split_clients 50/50",
    "envoy": "envoy weighted 50/50",
}
NOOP_LABEL = ("noop", "grpc.aio no-op server")

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


def _transports(results: dict) -> dict[str, dict]:
    """The run's proxies by transport (``scenario`` / ``batched_scenario``); a JSON of before them: ``mve``."""
    return results.get("transports") or {"mve": {"scenario": "mve", "batched_scenario": "mve_batched"}}


def scenario_labels(results: dict) -> dict[str, str]:
    """Printed label of every scenario of the run, in table order."""
    proxies = _transports(results)
    labels = dict(PEER_LABELS)
    labels.update({p["scenario"]: f"mve {t}" if t != "mve" else "mve proxy" for t, p in proxies.items()})
    labels.update({p["batched_scenario"]: f"mve {t}, batched" if t != "mve" else "mve proxy, batched"
                   for t, p in proxies.items()})
    labels[NOOP_LABEL[0]] = NOOP_LABEL[1]
    return labels


def evaluate_targets(results: dict, transport: str | None = None) -> list[dict]:
    """Each target for the proxy on `transport` (default: the run's first) with its measured value (None when a
    scenario did not run) and met/missed."""
    targets = []
    proxies = _transports(results)
    transport = transport or next(iter(proxies))
    plain, batched_name = proxies[transport]["scenario"], proxies[transport]["batched_scenario"]

    def add(name: str, value, limit: float, at_least: bool) -> None:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        targets.append({"name": name, "value": value, "limit": limit, "at_least": at_least, "met": met})

    top = max(results["settings"]["concurrency"])
    low = min(results["settings"]["concurrency"])
    batched, direct, nginx = (_cell(results, s, top) for s in (batched_name, "direct", "nginx"))
    add(f"c={top} throughput: mve batched / direct",
        _ratio(batched and batched["throughput_rps"], direct and direct["throughput_rps"]), TARGET_C64_VS_DIRECT, True)
    add(f"c={top} throughput: mve batched / nginx",
        _ratio(batched and batched["throughput_rps"], nginx and nginx["throughput_rps"]), TARGET_C64_VS_NGINX, True)
    hop = results.get("c1_hop")
    if hop:
        hop_ratio = hop["by_transport"][transport]["ratio_of_medians"] if "by_transport" in hop \
            else hop["ratio_of_medians"]
        add("c=1 p50 latency: mve / direct (interleaved)", hop_ratio, TARGET_C1_P50, False)
    else:
        mve_low, direct_low = _cell(results, plain, low), _cell(results, "direct", low)
        add(f"c={low} p50 latency: mve / direct",
            _ratio(mve_low and mve_low["p50_ms"], direct_low and direct_low["p50_ms"]), TARGET_C1_P50, False)
    mve_ratios = (results["scenarios"].get(plain) or {}).get("ratios") or {}
    add(f"c={top} proxy CPU/request: mve / envoy", mve_ratios.get(str(top), {}).get("proxy_cpu_vs_envoy"),
        TARGET_CPU_VS_ENVOY, False)
    add(f"c={low} mean latency: mve / envoy", mve_ratios.get(str(low), {}).get("mean_ms_vs_envoy"),
        TARGET_C1_MEAN_VS_ENVOY, False)
    compute = results.get("compute_bound")
    if compute and "by_transport" in compute:
        over_alone = compute["by_transport"].get(transport, {}).get("over_alone")
    else:
        over_alone = compute and compute["mve_batched_over_alone"]
    add(f"MLP c={top}: mve batched / onnxruntime alone", over_alone, TARGET_COMPUTE_BOUND_OF_ALONE, True)
    rss = proxies[transport].get("proxy_rss_mb", results.get("proxy_rss_mb"))
    add("proxy RSS after the load (MB)", rss, TARGET_RSS_MB, False)
    return targets


def transport_ratios(results: dict) -> list[dict]:
    """The native proxy over the grpc-aio proxy, same run: medians of per-round ratios ([] unless both ran)."""
    proxies = results.get("transports") or {}
    if "native" not in proxies or "grpc-aio" not in proxies:
        return []
    top, low = max(results["settings"]["concurrency"]), min(results["settings"]["concurrency"])
    native = proxies["native"]
    out = []

    def versus(scenario: str, concurrency: int, key: str):
        ratios = ((results["scenarios"].get(scenario) or {}).get("ratios") or {}).get(str(concurrency), {})
        return ratios.get(f"{key}_vs_grpc_aio")

    for name, scenario, concurrency, key in (
            (f"c={top} proxy CPU per request, batching off", native["scenario"], top, "proxy_cpu"),
            (f"c={top} req/s, batching off", native["scenario"], top, "throughput"),
            (f"c={low} mean latency, batching off", native["scenario"], low, "mean_ms"),
            (f"c={top} proxy CPU per request, batched", native["batched_scenario"], top, "proxy_cpu"),
            (f"c={top} req/s, batched", native["batched_scenario"], top, "throughput")):
        out.append({"name": name, "value": versus(scenario, concurrency, key)})
    hop = (results.get("c1_hop") or {}).get("by_transport") or {}
    if "native" in hop and "grpc-aio" in hop:
        out.append({"name": "c=1 p50 latency (interleaved hop)",
                    "value": _ratio(statistics.median(hop["native"]["p50_ms"]),
                                    statistics.median(hop["grpc-aio"]["p50_ms"]))})
    compute = results.get("compute_bound") or {}
    rows = compute.get("by_transport") or {}
    if "native" in rows and "grpc-aio" in rows:
        pairs = zip(compute["runs"][rows["native"]["row"]], compute["runs"][rows["grpc-aio"]["row"]])
        per_round = [_ratio(a["throughput_rps"], b["throughput_rps"]) for a, b in pairs]
        per_round = [r for r in per_round if r is not None]
        out.append({"name": f"MLP c={compute['concurrency']} rows/s, batched",
                    "value": statistics.median(per_round) if per_round else None})
    return out


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
              f"MaxDelayMicroseconds {delay}{' (adaptive)' if delay == 0 else ''}, "
              f"MaxBatchesInFlightPerInstance {batching.get('MaxBatchesInFlightPerInstance', 1)}"
              f"{'; proxy ' + ' '.join(settings['proxy_args']) if settings.get('proxy_args') else ''}\n")
    write(f"medians of {settings.get('rounds', 1)} alternating round(s); us = CPU us per request (utime+stime of all "
          f"threads / answers, warm-up included); x direct / x envoy = medians of per-round ratios\n")
    write(f"{'scenario':<28} {'conc':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>7} "
          f"{'proxy us':>8} {'servers us':>10} {'load us':>7} {'err':>4} | {'x direct':>8} "
          f"{'mean':>5} | {'x envoy':>7} {'mean':>5} {'CPU':>5}\n")
    for scenario, label in scenario_labels(results).items():
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
    for transport, proxy in _transports(results).items():
        rss = proxy.get("proxy_rss_mb", results.get("proxy_rss_mb"))
        if rss is None:
            continue
        end = proxy.get("proxy_rss_mb_end", results.get("proxy_rss_mb_end"))
        write(f"proxy RSS ({transport}) after these rows: {rss:.0f} MB"
              f"{'' if end is None else f'; at the end of the run: {end:.0f} MB'}\n")
    for key, title, unit in (("variants_sweep", "variants", "variants"), ("rows_sweep", "rows/request", "rows")):
        sweep = results.get(key)
        if not sweep:
            continue
        first = next(iter(_transports(results)))
        write(f"\n{'mve proxy' if first == 'mve' else 'mve ' + first} (batching off), c={sweep['concurrency']}, "
              f"by {title}\n")
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
        proxies = ", ".join(f"mve {t}: {v['ratio_of_medians']:.2f}x" for t, v in hop["by_transport"].items()) \
            if "by_transport" in hop else f"mve: {hop['ratio_of_medians']:.2f}x"
        write(f"floor: through a bare grpc.aio forwarder the c=1 p50 is {hop['forwarder_ratio_of_medians']:.2f}x "
              f"direct ({proxies}), alternating rounds on the same model server\n")
    by_transport = results.get("targets_by_transport") or {"mve": results["targets"]}
    write("\ntargets (ratios in this run)\n")
    write(f"  {'':<46} {'limit':<8}" + "".join(f" {t:>21}" for t in by_transport) + "\n")
    for index, target in enumerate(next(iter(by_transport.values()))):
        sign = ">=" if target["at_least"] else "<="
        cells = ""
        for targets in by_transport.values():
            mine = targets[index]
            verdict = {True: "met", False: "MISSED", None: "not measured"}[mine["met"]]
            cells += f" {_fmt(mine['value'], '8.2f')} {verdict:>12}"
        limit = f"{sign} {target['limit']:g}"
        write(f"  {target['name']:<46} {limit:<8}{cells}\n")
    if results.get("transport_ratios"):
        write("\nnative / grpc-aio (the two proxies in the same rounds; medians of per-round ratios)\n")
        for ratio in results["transport_ratios"]:
            write(f"  {ratio['name']:<46} {_fmt(ratio['value'], '8.2f')}\n")
