"""The end-to-end benchmark's compute-bound rows: an MLP where batching pays on CPU as it does on GPU.

The example MLP (16→32→4) costs nothing to compute, so it measures the transport. This one,
1024→4096→4096→16 (~21 M multiply-adds a row, ~84 MB of FP32 weights, built node by node with
onnx.helper like ``mve/examples/mlp.py``, seeded), is bound by the model server's arithmetic: one
row at a time reads every weight for one row's work, a batch of 32 reads them once. At c=64 on
one instance with one thread (ml.cpu.small), in alternating rounds:

- ``direct``: the closed loop straight to the instance, 1 row per request (no batching anywhere);
- ``mve_batched`` (and ``mve_batched_grpc_aio``): the same loop through the proxy with ``Batching``
  (MaxBatchSize as the run's), on each transport of the run (one proxy per transport,
  benchmarks/e2e_proxies.py);
- ``onnxruntime alone``: the model in a fresh process, same thread count, batches of
  MaxBatchSize rows back to back: the rows/s that instance can give at most.

The target: mve batched reaches at least 85% of onnxruntime alone's rows/s, on each transport.

    python benchmarks/e2e_mlp.py --alone MODEL.onnx --rows 32 --threads 1 --seconds 3   # one JSON line
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

INPUTS, HIDDEN, OUTPUTS = 1024, 4096, 16
SEED = 0
MODEL_NAME = "mlp-big"
TARGET_OF_ALONE = 0.85


def build_big_mlp(path: Path) -> Path:
    """Write the ONNX model ``input`` FP32 [-1, 1024] -> ``output`` FP32 [-1, 16] to `path` (once)."""
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    if path.is_file():
        return path
    rng = np.random.default_rng(SEED)

    def dense(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(rows))).astype(np.float32)

    weights = {
        "w1": dense(INPUTS, HIDDEN), "b1": np.zeros(HIDDEN, np.float32),
        "w2": dense(HIDDEN, HIDDEN), "b2": np.zeros(HIDDEN, np.float32),
        "w3": dense(HIDDEN, OUTPUTS), "b3": np.zeros(OUTPUTS, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["x1"]), helper.make_node("Add", ["x1", "b1"], ["h1p"]),
        helper.make_node("Relu", ["h1p"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w2"], ["x2"]), helper.make_node("Add", ["x2", "b2"], ["h2p"]),
        helper.make_node("Relu", ["h2p"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w3"], ["x3"]), helper.make_node("Add", ["x3", "b3"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp_big",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", INPUTS])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", OUTPUTS])],
        initializer=[numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, producer_name="mve-bench", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def onnxruntime_alone(model_path: Path, rows: int, threads: int, seconds: float) -> dict:
    """Rows/s of the model run back to back on batches of `rows` in a fresh process (the model server's options)."""
    command = [sys.executable, __file__, "--alone", str(model_path), "--rows", str(rows), "--threads", str(threads),
               "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"onnxruntime alone failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _alone_main(model_path: str, rows: int, threads: int, seconds: float) -> dict:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # as mve/modelserver/runtime.py's OnnxModel
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).standard_normal((rows, INPUTS)).astype(np.float32)}
    for _ in range(3):
        session.run(["output"], feed)
    runs, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        session.run(["output"], feed)
        runs += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # CPU per row is what the machine's other load does not change (rows/s is, on a shared VM).
    return {"rows": rows, "threads": threads, "runs": runs, "seconds": elapsed,
            "rows_per_s": runs * rows / elapsed, "ms_per_run": elapsed * 1e3 / runs,
            "cpu_us_per_row": cpu * 1e6 / (runs * rows)}


def run_compute_bound(sm, *, proxies, control_plane_pid: int, model_path: Path, concurrency: int,
                      batching: dict, threads: int, rounds: int, seconds: float, cell, deploy, undeploy,
                      instance_addresses, control_plane: str) -> dict:
    """The rows above in `rounds` alternating rounds; medians and the ratios, for each proxy of `proxies`.

    `proxies`: the run's mve proxies (benchmarks/e2e_proxies.py's `MveProxy`), each a row named by its
    ``batched_scenario``. `cell(name, targets, model, concurrency, watch)` runs one measured cell
    (bench_e2e's, with CPU per request of the processes in `watch`).
    """
    from e2e_cpu import busiest_thread_split, cpu_by_thread, listening_pid, wait_idle

    sm.create_model(ModelName=MODEL_NAME, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(model_path)})
    deploy(sm, [p.address for p in proxies], MODEL_NAME, 1, batching, model=MODEL_NAME)
    address = instance_addresses(control_plane, MODEL_NAME)[0]
    server_pid = listening_pid(int(address.rsplit(":", 1)[1]), control_plane_pid)
    servers = [server_pid] if server_pid else []
    by_row = {p.batched_scenario: p for p in proxies}
    proxy_pids = [p.pid for p in proxies]
    order = ["direct", *by_row, "onnxruntime_alone"]
    runs: dict[str, list[dict]] = {name: [] for name in order}
    for index in range(rounds):
        for name in order if index % 2 == 0 else reversed(order):
            # A closed loop that ends leaves up to `concurrency` rows queued in the server: let it drain.
            wait_idle(servers + proxy_pids)
            threads_before = cpu_by_thread(server_pid) if server_pid else {}
            if name == "onnxruntime_alone":
                result = onnxruntime_alone(model_path, batching["MaxBatchSize"], threads, seconds)
            elif name == "direct":
                result = cell(name, [address], MODEL_NAME, concurrency, {"model_servers": servers})
            else:
                proxy = by_row[name]
                result = cell(name, [proxy.address], MODEL_NAME, concurrency,
                              {"proxy": [proxy.pid], "model_servers": servers})
            if server_pid and name != "onnxruntime_alone":
                # The model server's CPU split: its inference thread (the busiest) and the rest (gRPC, decoding).
                inference, rest = busiest_thread_split(threads_before, cpu_by_thread(server_pid))
                answers = max(result.get("answers_total") or result["requests"], 1)
                result["server_cpu_us_per_row"] = {"inference_thread": inference * 1e6 / answers,
                                                   "other_threads": rest * 1e6 / answers}
            runs[name].append(result)
            rate = result.get("rows_per_s") or result.get("throughput_rps")
            print(f"  compute-bound {name} round {index + 1}: {rate:.0f} rows/s", file=sys.stderr)
    undeploy(sm, MODEL_NAME)
    rows_per_s = {name: [r.get("rows_per_s", r.get("throughput_rps")) for r in results]
                  for name, results in runs.items()}
    alone_cpu = [r.get("cpu_us_per_row") for r in runs["onnxruntime_alone"]]
    by_transport = {}
    for name, proxy in by_row.items():
        per_round_alone = [b / a for b, a in zip(rows_per_s[name], rows_per_s["onnxruntime_alone"]) if a]
        per_round_direct = [b / d for b, d in zip(rows_per_s[name], rows_per_s["direct"]) if d]
        # Rows per CPU second of the model server under mve batched over onnxruntime alone's: the same
        # question asked of CPU time, which other load on a shared machine does not move.
        server_cpu = [r.get("cpu_us_per_request", {}).get("model_servers") for r in runs[name]]
        per_round_cpu = [a / b for a, b in zip(alone_cpu, server_cpu) if a and b]
        by_transport[proxy.transport] = {
            "row": name,
            "over_alone": _median(per_round_alone),
            "over_direct": _median(per_round_direct),
            "server_rows_per_cpu_s_over_alone": _median(per_round_cpu),
        }
    primary = by_transport[proxies[0].transport]
    return {
        "model": f"MLP {INPUTS}->{HIDDEN}->{HIDDEN}->{OUTPUTS} FP32, 1 row per request",
        "concurrency": concurrency, "instances": 1, "threads": threads, "batching": batching, "rounds": rounds,
        "rows_per_s": {name: _median(values) for name, values in rows_per_s.items()},
        "runs": runs,
        "transports": {name: proxy.transport for name, proxy in by_row.items()},
        "by_transport": by_transport,
        # The first transport's figures under the names earlier runs used.
        "mve_batched_over_alone": primary["over_alone"],
        "mve_batched_over_direct": primary["over_direct"],
        "server_rows_per_cpu_s_mve_batched_over_alone": primary["server_rows_per_cpu_s_over_alone"],
        "target_of_alone": TARGET_OF_ALONE,
    }


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def print_compute_bound(result: dict, out=None) -> None:
    """The compute-bound rows as plain text: each row's medians, then each transport's ratios."""
    write = (out or sys.stdout).write
    write(f"\ncompute-bound: {result['model']}, c={result['concurrency']}, one instance, {result['threads']} "
          f"thread(s), MaxBatchSize {result['batching']['MaxBatchSize']}; medians of {result['rounds']} "
          f"alternating rounds\n")
    write(f"{'row':<40} {'rows/s':>9} {'p50 ms':>8} {'proxy CPU us/req':>17} {'server CPU us/row':>18} "
          f"{'inference thread':>17} {'other threads':>14}\n")
    transports = result.get("transports", {"mve_batched": "mve"})
    labels = {"direct": "direct (1 row per request)",
              **{name: f"mve {transport}, batching on" for name, transport in transports.items()},
              "onnxruntime_alone": f"onnxruntime alone, {result['batching']['MaxBatchSize']} rows a run"}
    for name, label in labels.items():
        runs = result["runs"][name]
        p50 = [r["p50_ms"] for r in runs if r.get("p50_ms") is not None]
        cpu = [r.get("cpu_us_per_request", {}) for r in runs]
        proxy = [c["proxy"] for c in cpu if "proxy" in c]
        server = [c["model_servers"] for c in cpu if "model_servers" in c] or \
            [r["cpu_us_per_row"] for r in runs if r.get("cpu_us_per_row")]
        write(f"{label:<40} {result['rows_per_s'][name]:>9.0f} "
              f"{statistics.median(p50) if p50 else float('nan'):>8.2f} "
              f"{statistics.median(proxy) if proxy else float('nan'):>17.0f} "
              f"{statistics.median(server) if server else float('nan'):>18.0f} "
              f"{_split_median(runs, 'inference_thread'):>17.0f} {_split_median(runs, 'other_threads'):>14.0f}\n")
    for transport, ratios in result.get("by_transport", {}).items():
        write(f"mve {transport} batched / onnxruntime alone: {_fmt(ratios['over_alone'])} (target >= "
              f"{result['target_of_alone']:.2f}); / direct: {_fmt(ratios['over_direct'])}x; model server's rows per "
              f"CPU second / onnxruntime alone's: {_fmt(ratios['server_rows_per_cpu_s_over_alone'])} "
              f"(medians of per-round ratios; CPU time is free of the machine's other load)\n")


def _split_median(runs: list[dict], part: str) -> float:
    values = [r["server_cpu_us_per_row"][part] for r in runs if "server_cpu_us_per_row" in r]
    return statistics.median(values) if values else float("nan")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alone", required=True, metavar="MODEL.onnx", help="time onnxruntime alone on this model")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    print(json.dumps(_alone_main(args.alone, args.rows, args.threads, args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
