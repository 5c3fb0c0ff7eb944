"""The end-to-end benchmark's compute-bound rows: an MLP where batching pays on CPU as it does on GPU.

The example MLP (16→32→4) costs nothing to compute, so it measures the transport. This one,
1024→4096→4096→16 (~21 M multiply-adds a row, ~84 MB of FP32 weights, built node by node with
onnx.helper like ``mve/examples/mlp.py``, seeded), is bound by the model server's arithmetic: one
row at a time reads every weight for one row's work, a batch of 32 reads them once. At c=64 on
one instance with one thread (ml.cpu.small), in alternating rounds:

- ``direct``: the closed loop straight to the instance, 1 row per request (no batching anywhere);
- ``mve_batched``: the same loop through the proxy with ``Batching`` (MaxBatchSize as the run's);
- ``onnxruntime alone``: the model in a fresh process, same thread count, batches of
  MaxBatchSize rows back to back: the rows/s that instance can give at most.

The target: mve batched reaches at least 85% of onnxruntime alone's rows/s.

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


def run_compute_bound(sm, *, proxy: str, control_plane_pid: int, model_path: Path, concurrency: int,
                      batching: dict, threads: int, rounds: int, seconds: float, cell, deploy, undeploy,
                      instance_addresses, control_plane: str, proxy_pids: list[int]) -> dict:
    """The three rows above in `rounds` alternating rounds; medians and the ratios.

    `cell(name, targets, model, concurrency, watch)` runs one measured cell (bench_e2e's, with
    CPU per request of the processes in `watch`).
    """
    from e2e_cpu import listening_pid, wait_idle

    sm.create_model(ModelName=MODEL_NAME, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(model_path)})
    deploy(sm, proxy, MODEL_NAME, 1, batching, model=MODEL_NAME)
    address = instance_addresses(control_plane, MODEL_NAME)[0]
    server_pid = listening_pid(int(address.rsplit(":", 1)[1]), control_plane_pid)
    servers = [server_pid] if server_pid else []
    runs: dict[str, list[dict]] = {"direct": [], "mve_batched": [], "onnxruntime_alone": []}
    order = list(runs)
    for index in range(rounds):
        for name in order if index % 2 == 0 else reversed(order):
            # A closed loop that ends leaves up to `concurrency` rows queued in the server: let it drain.
            wait_idle(servers + proxy_pids)
            if name == "onnxruntime_alone":
                result = onnxruntime_alone(model_path, batching["MaxBatchSize"], threads, seconds)
            elif name == "direct":
                result = cell(name, [address], MODEL_NAME, concurrency, {"model_servers": servers})
            else:
                result = cell(name, [proxy], MODEL_NAME, concurrency,
                              {"proxy": proxy_pids, "model_servers": servers})
            runs[name].append(result)
            rate = result.get("rows_per_s") or result.get("throughput_rps")
            print(f"  compute-bound {name} round {index + 1}: {rate:.0f} rows/s", file=sys.stderr)
    undeploy(sm, MODEL_NAME)
    rows_per_s = {
        "direct": [r["throughput_rps"] for r in runs["direct"]],
        "mve_batched": [r["throughput_rps"] for r in runs["mve_batched"]],
        "onnxruntime_alone": [r["rows_per_s"] for r in runs["onnxruntime_alone"]],
    }
    per_round_alone = [b / a for b, a in zip(rows_per_s["mve_batched"], rows_per_s["onnxruntime_alone"])]
    per_round_direct = [b / d for b, d in zip(rows_per_s["mve_batched"], rows_per_s["direct"]) if d]
    # Rows per CPU second of the model server under mve batched over onnxruntime alone's: the same
    # question asked of CPU time, which other load on a shared machine does not move.
    alone_cpu = [r.get("cpu_us_per_row") for r in runs["onnxruntime_alone"]]
    server_cpu = [r.get("cpu_us_per_request", {}).get("model_servers") for r in runs["mve_batched"]]
    per_round_cpu = [a / b for a, b in zip(alone_cpu, server_cpu) if a and b]
    return {
        "model": f"MLP {INPUTS}->{HIDDEN}->{HIDDEN}->{OUTPUTS} FP32, 1 row per request",
        "concurrency": concurrency, "instances": 1, "threads": threads, "batching": batching, "rounds": rounds,
        "rows_per_s": {name: statistics.median(values) for name, values in rows_per_s.items()},
        "runs": runs,
        "mve_batched_over_alone": statistics.median(per_round_alone),
        "mve_batched_over_direct": statistics.median(per_round_direct) if per_round_direct else None,
        "server_rows_per_cpu_s_mve_batched_over_alone": statistics.median(per_round_cpu) if per_round_cpu else None,
        "target_of_alone": TARGET_OF_ALONE,
    }


def print_compute_bound(result: dict, out=None) -> None:
    write = (out or sys.stdout).write
    write(f"\ncompute-bound: {result['model']}, c={result['concurrency']}, one instance, {result['threads']} "
          f"thread(s), MaxBatchSize {result['batching']['MaxBatchSize']}; medians of {result['rounds']} "
          f"alternating rounds\n")
    write(f"{'row':<40} {'rows/s':>9} {'p50 ms':>8} {'proxy CPU us/req':>17} {'server CPU us/row':>18}\n")
    labels = {"direct": "direct (1 row per request)", "mve_batched": "mve proxy, batching on",
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
              f"{statistics.median(server) if server else float('nan'):>18.0f}\n")
    direct = result["mve_batched_over_direct"]
    write(f"mve batched / onnxruntime alone: {result['mve_batched_over_alone']:.2f} (target >= "
          f"{result['target_of_alone']:.2f}); mve batched / direct: {'-' if direct is None else f'{direct:.2f}'}x "
          f"(medians of per-round ratios)\n")
    if result.get("server_rows_per_cpu_s_mve_batched_over_alone") is not None:
        write(f"rows per CPU second of the model server, mve batched / onnxruntime alone: "
              f"{result['server_rows_per_cpu_s_mve_batched_over_alone']:.2f} (CPU time: free of the machine's other "
              f"load)\n")


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
