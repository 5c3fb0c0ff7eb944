"""The end-to-end benchmark's main rows: the mve proxy beside its peers, on the same model servers.

The endpoint ``mlp`` (two equal variants, one instance each, started by a real control plane)
gives two model servers; every row sends the same 1-row ModelInfer to those same two:

- ``direct``: straight to the two instances, round-robin (the callers split evenly over both; at
  c=1, half the cell on each): the fair baseline, no hop;
- ``nginx``: ``split_clients`` 50/50 + ``grpc_pass`` (benchmarks/nginx_split.py), one worker per core;
- ``envoy``: weighted clusters 50/50, upstream HTTP/2, one worker thread per core
  (benchmarks/envoy_split.py): what an Istio user would run;
- ``mve`` (and ``mve_grpc_aio``): the mve proxy on each transport of the run, batching off (one
  proxy per transport on the same control plane, benchmarks/e2e_proxies.py);
- ``mve_batched`` (and ``mve_batched_grpc_aio``): the same proxies with ``Batching`` on the endpoint
  ``mlp-batched`` (its own two instances of the same model, same settings; its direct baseline is
  ``direct``'s).

Rows run in alternating rounds (forward, then reversed) at each concurrency; each cell reads the
CPU of the proxy or peer, of the model servers and of the load process (benchmarks/e2e_cpu.py).
A scenario's cell is the median of its rounds; its ratios are medians of the per-round ratios to
``direct`` and to ``envoy`` of the same round (the machine's drift cancels within a round), and,
for the native proxy's rows, to the grpc-aio proxy's rows of the same round.
"""

from __future__ import annotations

import os
import statistics
import sys
from contextlib import ExitStack

PEERS = ("direct", "nginx", "envoy")
TARGETS = {"direct": "model servers, round-robin", "nginx": "nginx", "envoy": "envoy"}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_cell(runs: list[dict]) -> dict:
    """The median of each figure over rounds; counts summed."""
    cpu_names = sorted({name for r in runs for name in r.get("cpu_us_per_request", {})})
    variants: dict = {}
    for run in runs:
        for key, value in run.get("variants", {}).items():
            variants[key] = variants.get(key, 0) + value
    return {
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "seconds": sum(r["seconds"] for r in runs),
        "throughput_rps": _median(r["throughput_rps"] for r in runs),
        "p50_ms": _median(r["p50_ms"] for r in runs),
        "p99_ms": _median(r["p99_ms"] for r in runs),
        "mean_ms": _median(r.get("mean_ms") for r in runs),
        "cpu_us_per_request": {n: _median(r["cpu_us_per_request"].get(n) for r in runs) for n in cpu_names},
        "variants": variants,
        "concurrency": runs[0]["concurrency"],
        "rows": runs[0]["rows"],
        "rounds": len(runs),
    }


def _ratio(a, b):
    return a / b if a is not None and b else None


def round_ratios(runs: list[dict], reference: list[dict] | None, prefix: str) -> dict:
    """Medians of per-round ratios of `runs` to `reference` (same rounds): req/s, p50, mean, CPU/request."""
    if not reference:
        return {}
    pairs = list(zip(runs, reference))
    out = {
        f"throughput_vs_{prefix}": _median(_ratio(a["throughput_rps"], b["throughput_rps"]) for a, b in pairs),
        f"p50_vs_{prefix}": _median(_ratio(a["p50_ms"], b["p50_ms"]) for a, b in pairs),
        f"mean_ms_vs_{prefix}": _median(_ratio(a.get("mean_ms"), b.get("mean_ms")) for a, b in pairs),
    }
    for name in ("proxy", "model_servers"):
        out[f"{name}_cpu_vs_{prefix}"] = _median(
            _ratio(a["cpu_us_per_request"].get(name), b["cpu_us_per_request"].get(name)) for a, b in pairs)
    return {k: v for k, v in out.items() if v is not None}


def transport_pairs(proxies) -> dict[str, tuple[str, str]]:
    """``{native scenario: (grpc-aio scenario, "grpc_aio")}`` for the unbatched and batched rows, when both ran."""
    by_transport = {p.transport: p for p in proxies}
    native, aio = by_transport.get("native"), by_transport.get("grpc-aio")
    if native is None or aio is None:
        return {}
    return {native.scenario: (aio.scenario, "grpc_aio"), native.batched_scenario: (aio.batched_scenario, "grpc_aio")}


def run_peers(*, proxies, instances: dict[str, list[str]], server_pids: dict[str, list[int]],
              concurrencies, mode: tuple, rounds: int, peers: dict[str, str | None], cell, batching: dict) -> dict:
    """Every scenario at every concurrency in `rounds` alternating rounds; scenarios as bench_e2e's JSON wants them.

    `proxies`: the mve proxies of the run (benchmarks/e2e_proxies.py's `MveProxy`, one per transport).
    `instances` / `server_pids`: ``{"mlp": [...], "mlp-batched": [...]}``. `peers`: ``{"nginx": why
    skipped or None, "envoy": ...}``. `cell(targets, model, concurrency=, mode=, watch=)` is bench_e2e's
    measured_cell.
    """
    from e2e_cpu import wait_idle
    from envoy_split import EnvoySplit
    from nginx_split import NginxSplit

    workers = os.cpu_count() or 1
    upstreams = [(address, 1.0) for address in instances["mlp"]]
    scenarios: dict = {}
    with ExitStack() as stack:
        targets = {"direct": (instances["mlp"], "mlp", {"model_servers": server_pids["mlp"]})}
        for name, starter in (("nginx", NginxSplit), ("envoy", EnvoySplit)):
            if peers.get(name) is not None:
                scenarios[name] = {"skipped": peers[name]}
                continue
            try:
                peer = stack.enter_context(starter(upstreams, workers=workers))
            except RuntimeError as error:
                scenarios[name] = {"skipped": str(error)}
                print(f"  {name}: skipped ({error})", file=sys.stderr)
                continue
            targets[name] = ([peer.address], "mlp", {"proxy": [peer.process.pid], "model_servers": server_pids["mlp"]})
            scenarios[name] = {"target": TARGETS[name], "workers": workers}
        for proxy in proxies:
            targets[proxy.scenario] = ([proxy.address], "mlp", {"proxy": [proxy.pid],
                                                                "model_servers": server_pids["mlp"]})
            scenarios[proxy.scenario] = {"target": f"mve proxy ({proxy.transport})", "transport": proxy.transport}
        for proxy in proxies:
            targets[proxy.batched_scenario] = ([proxy.address], "mlp-batched", {
                "proxy": [proxy.pid], "model_servers": server_pids["mlp-batched"]})
            scenarios[proxy.batched_scenario] = {"target": f"mve proxy ({proxy.transport})",
                                                 "transport": proxy.transport, "batching": batching}
        order = [name for name in PEERS if name in targets] + [p.scenario for p in proxies] + \
            [p.batched_scenario for p in proxies]
        runs: dict[str, dict[str, list[dict]]] = {name: {str(c): [] for c in concurrencies} for name in order}
        for index in range(rounds):
            for concurrency in concurrencies:
                for name in order if index % 2 == 0 else reversed(order):
                    addresses, model, watch = targets[name]
                    # The previous cell's queue drained first: its tail is not this cell's CPU.
                    wait_idle(sorted({pid for _, _, w in targets.values() for pids in w.values() for pid in pids}))
                    result = cell(addresses, model, concurrency=concurrency, mode=mode, watch=watch)
                    runs[name][str(concurrency)].append(result)
                    cpu = result["cpu_us_per_request"]
                    print(f"  round {index + 1} {name:<20} c={concurrency:<4} {result['throughput_rps']:>7.0f} req/s "
                          f"p50 {_ms(result['p50_ms'])} mean {_ms(result.get('mean_ms'))} "
                          f"CPU us/req: proxy {_us(cpu.get('proxy'))} servers {_us(cpu.get('model_servers'))} "
                          f"load {_us(cpu.get('loadgen'))} errors {result['errors']}", file=sys.stderr)
    versus = transport_pairs(proxies)
    for name in order:
        entry = scenarios.setdefault(name, {"target": TARGETS.get(name, name)})
        if name == "direct":
            entry["instances"] = instances["mlp"]
        entry["cells"] = {c: median_cell(r) for c, r in runs[name].items()}
        entry["runs"] = runs[name]
        entry["ratios"] = {}
        for c, r in runs[name].items():
            ratios = {}
            if name != "direct":
                ratios.update(round_ratios(r, runs["direct"][c], "direct"))
            if "envoy" in runs and name != "envoy":
                ratios.update(round_ratios(r, runs["envoy"][c], "envoy"))
            if name in versus:
                reference, prefix = versus[name]
                ratios.update(round_ratios(r, runs[reference][c], prefix))
            entry["ratios"][c] = ratios
    return scenarios


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _us(value) -> str:
    return "-" if value is None else f"{value:.0f}"
