"""The end-to-end benchmark still runs: `bench_e2e.py --smoke` (direct and mve, a few requests per cell)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_e2e.py"
CELL_KEYS = {"requests", "errors", "seconds", "throughput_rps", "p50_ms", "p99_ms", "concurrency", "rows"}


@pytest.mark.timeout(240)
def test_smoke_run_writes_every_scenario_sweep_and_target(tmp_path):
    out = tmp_path / "e2e.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--concurrency", "1,8", "--out", str(out)],
        capture_output=True, text=True, timeout=220,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "targets (ratios in this run)" in done.stdout

    results = json.loads(out.read_text())
    assert results["settings"]["mode"] == "smoke"
    assert results["settings"]["concurrency"] == [1, 8]
    for scenario in ("direct", "mve", "mve_batched"):
        cells = results["scenarios"][scenario]["cells"]
        assert set(cells) == {"1", "8"}
        for cell in cells.values():
            assert CELL_KEYS <= cell.keys()
            assert cell["requests"] > 0 and cell["errors"] == 0
            assert cell["cpu_us_per_request"]["model_servers"] > 0
    # The direct baseline goes to the proxy's own two instances, round-robin; the proxy's CPU is measured.
    assert len(results["scenarios"]["direct"]["instances"]) == 2
    assert results["scenarios"]["mve"]["cells"]["8"]["cpu_us_per_request"]["proxy"] > 0
    assert results["scenarios"]["mve"]["ratios"]["8"]["throughput_vs_direct"] > 0
    assert "skipped" in results["scenarios"]["nginx"] and "skipped" in results["scenarios"]["envoy"]
    # The no-op grpc.aio ceiling and the interleaved c=1 hop measurement ran.
    assert results["scenarios"]["noop"]["cells"]["8"]["requests"] > 0
    hop = results["c1_hop"]
    assert len(hop["direct_p50_ms"]) == len(hop["forwarder_p50_ms"]) == len(hop["mve_p50_ms"]) == hop["rounds"] >= 1
    assert hop["ratio_of_medians"] > 0 and hop["forwarder_ratio_of_medians"] > 0
    # Both variants of the mve endpoint answered (the proxy names the variant in every response).
    assert set(results["scenarios"]["mve"]["cells"]["8"]["variants"]) <= {"Variant1", "Variant2"}
    assert set(results["variants_sweep"]["cells"]) == {"1"}
    assert set(results["rows_sweep"]["cells"]) == {"1", "16"}
    assert results["rows_sweep"]["cells"]["16"]["rows"] == 16
    assert 0 < results["proxy_rss_mb"] < 10_000
    names = [target["name"] for target in results["targets"]]
    assert len(names) == 7 and any("nginx" in name for name in names) and any("envoy" in name for name in names)
    by_met = {target["name"]: target["met"] for target in results["targets"]}
    # nginx, Envoy and the compute-bound MLP do not run in --smoke.
    peers = ("nginx", "envoy", "onnxruntime")
    assert all(met is None for name, met in by_met.items() if any(peer in name for peer in peers))
    assert all(isinstance(met, bool) for name, met in by_met.items() if not any(peer in name for peer in peers))
    # The door rows: InvokeEndpoint over the proxy's HTTP door and its gRPC door, and their ratios.
    doors = results["doors"]
    for door in ("grpc", "http"):
        for concurrency in ("1", "8"):
            cell = doors["doors"][door][concurrency]
            assert cell["requests"] > 0 and cell["errors"] == 0 and cell["proxy_cpu_us_per_request"] > 0
        assert set(doors["doors"][door]["8"]["variants"]) <= {"Variant1", "Variant2"}
    assert all(ratio["throughput_http_over_grpc"] > 0 for ratio in doors["ratios"].values())
    assert "InvokeEndpoint by door" in done.stdout
