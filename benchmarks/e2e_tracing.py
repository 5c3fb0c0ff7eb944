"""bench_e2e's tracing rows: the proxy's c=64 throughput with tracing off, sampled at 1% and at 100%.

One control plane and its two model servers (tracing off, so only the proxy's cost is measured);
three proxies on the same routing table, identical but for their OTEL_* environment:

- ``off``: no OTEL_* at all;
- ``sampled 1%``: ``OTEL_TRACES_EXPORTER=otlp``, ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``,
  ``OTEL_TRACES_SAMPLER_ARG=0.01``;
- ``sampled 100%``: the same with ``parentbased_always_on``.

Both traced proxies really export, over OTLP/gRPC, to a throwaway receiver (benchmarks/otlp_sink.py)
that counts what arrives. Cells alternate between the three proxies round after round (the order
rotating each round) so the machine's drift falls on all three alike; the medians are compared,
next to each proxy's CPU per request (less sensitive to a busy machine than req/s).

Then the same three settings in this process, without gRPC or a model server: the CPU of the
proxy's own code per ModelInfer (`RawModelInfer` -> `DataPlane` -> an upstream call that answers
at once), spans exported to the same receiver. What tracing adds there is what it adds to a
proxy, free of the network and of the other processes on the machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mve
from mve.mesh import Mesh
from mve.supervise import Child

SINK = Path(__file__).parent / "otlp_sink.py"
TARGET_1PCT_RATIO = 0.95  # sampled at 1% costs at most 5% of the throughput with tracing off

EXPORT = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
SETTINGS = {
    "off": {},
    "sampled 1%": {**EXPORT, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    "sampled 100%": {**EXPORT, "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
}


@contextmanager
def otlp_sink():
    """benchmarks/otlp_sink.py as a process; yields (endpoint, counts) and fills counts when it stops."""
    process = subprocess.Popen([sys.executable, str(SINK)], stdout=subprocess.PIPE, text=True)
    counts: dict[str, int] = {}
    try:
        address = json.loads(process.stdout.readline())["address"]
        yield f"http://{address}", counts
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=15)
        for line in out.splitlines():
            if line.startswith("{") and '"spans"' in line:
                counts.update(json.loads(line)["spans"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proxy_env(name: str, endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(SETTINGS[name])
    if SETTINGS[name]:
        env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": f"bench-{name}"})
    return env


def run_tracing_rows(model_path: Path, work: Path, mode: tuple, concurrency: int, rounds: int, *,
                     run_loadgen, deploy, log) -> dict:
    """The three settings' cells at `concurrency`, `rounds` alternating rounds; medians and ratios."""
    cells: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with otlp_sink() as (endpoint, spans):
        with Mesh(work / "mesh-tracing", log_path=work / "mesh-tracing.log") as mesh:
            sm = mve.client("sagemaker", address=mesh.control_plane_address)
            sm.create_model(ModelName="mlp", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(model_path)})
            deploy(sm, mesh.proxy_address, "mlp", 2, None)
            proxies = {}
            try:
                for name in SETTINGS:
                    proxies[name] = Child(f"proxy-{name}", lambda port: [
                        "proxy", "--control-plane", mesh.control_plane_address, "--port", str(port),
                        "--metrics-port", "0", "--log-level", "WARNING"], 0, log, _proxy_env(name, endpoint))
                    proxies[name].start(60.0)
                for round_index in range(rounds):
                    names = list(SETTINGS)
                    names = names[round_index % len(names):] + names[:round_index % len(names)]
                    for name in names:
                        pid = proxies[name].process.pid
                        cpu_before = cpu_seconds(pid)
                        cell = run_loadgen(proxies[name].address, "mlp", concurrency=concurrency, rows=1, mode=mode)
                        # The proxy's CPU per request: robust to a noisy machine where req/s is not. The
                        # warm-up's requests are not counted by the load process; they ran at the same rate.
                        sent = cell["requests"] * (cell["seconds"] + mode[1]) / cell["seconds"]
                        cell["proxy_cpu_us_per_request"] = (cpu_seconds(pid) - cpu_before) * 1e6 / max(sent, 1)
                        cells[name].append(cell)
                        print(f"  tracing {name} c={concurrency} round {round_index + 1}: "
                              f"{cell['throughput_rps']:.0f} req/s p50 {cell['p50_ms']:.2f} ms errors {cell['errors']} "
                              f"proxy CPU {cell['proxy_cpu_us_per_request']:.0f} us/req", file=sys.stderr)
            finally:
                for proxy in proxies.values():
                    proxy.stop(10.0)  # SIGTERM: a traced proxy flushes its queued spans first
        inprocess = inprocess_cost(endpoint)
    out = {"concurrency": concurrency, "rounds": rounds, "receiver": "OTLP/gRPC no-op (benchmarks/otlp_sink.py)",
           "settings": {}, "inprocess": inprocess}
    off = statistics.median(c["throughput_rps"] for c in cells["off"])
    off_cpu = statistics.median(c["proxy_cpu_us_per_request"] for c in cells["off"])
    for name, runs in cells.items():
        median = statistics.median(c["throughput_rps"] for c in runs)
        out["settings"][name] = {
            "env": SETTINGS[name],
            "throughput_rps": [c["throughput_rps"] for c in runs],
            "median_rps": median,
            "ratio_vs_off": median / off if off else None,
            "proxy_cpu_us_per_request": statistics.median(c["proxy_cpu_us_per_request"] for c in runs),
            "cpu_ratio_vs_off": statistics.median(c["proxy_cpu_us_per_request"] for c in runs) / off_cpu
            if off_cpu else None,
            "p50_ms": statistics.median(c["p50_ms"] for c in runs),
            "p99_ms": statistics.median(c["p99_ms"] for c in runs),
            "errors": sum(c["errors"] for c in runs),
            "requests": sum(c["requests"] for c in runs),
            # Warm-up requests are traced too, so spans can exceed the counted requests a little.
            "spans_exported": spans.get(f"bench-{name}", 0) if SETTINGS[name] else 0,
        }
    ratio = out["settings"]["sampled 1%"]["ratio_vs_off"]
    out["target"] = {"name": "c=64 throughput: sampled 1% / off", "value": ratio, "limit": TARGET_1PCT_RATIO,
                     "met": None if ratio is None else ratio >= TARGET_1PCT_RATIO}
    return out


def inprocess_cost(endpoint: str, rounds: int = 7, requests: int = 3000) -> dict:
    """Median CPU microseconds of the proxy's own code per ModelInfer, per setting (see the docstring)."""
    import asyncio

    from mve._proto import control_pb2
    from mve._proto import grpc_predict_v2_pb2 as pb
    from mve.proxy.dataplane import DataPlane
    from mve.proxy.routing.router import Router
    from mve.proxy.transport.grpc_servicers import RawModelInfer
    from mve.proxy.stats import StatsBook
    from mve.tracing import setup_tracing

    answer = pb.ModelInferResponse(model_name="mlp", raw_output_contents=[bytes(16)])
    answer.outputs.add(name="output", datatype="FP32", shape=[1, 4])
    answer = answer.SerializeToString()
    request = pb.ModelInferRequest(model_name="ep", raw_input_contents=[bytes(64)])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    request = request.SerializeToString()

    class Upstream:  # UpstreamPool's raw ModelInfer, answering at once, with no in-flight bounds
        max_in_flight = 0
        max_in_flight_per_instance = 0

        def __init__(self, tracing: bool):
            self.tracing = tracing
            self.in_flight = 0

        def raw_model_infer(self, address):
            async def call(data, timeout=None, metadata=None):
                return answer
            return call

    class Context:  # what RawModelInfer reads of a grpc.aio call
        metadata = (("user-agent", "grpc-python-asyncio/1.0"), ("content-type", "application/grpc"))

        def time_remaining(self):
            return 10.0

        def invocation_metadata(self):
            return self.metadata

    def handler(tracer):
        router = Router(seed=1)
        router.apply(control_pb2.RoutingTable(version=1, endpoints=[control_pb2.EndpointRoute(
            endpoint_name="ep", variants=[control_pb2.VariantRoute(
                variant_name="v1", model_name="mlp", weight=1,
                instances=[control_pb2.InstanceRoute(instance_id="i0", address="a0")],
                inputs=[control_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 16])])])]))
        return RawModelInfer(DataPlane(router, Upstream(tracer is not None), StatsBook(), tracer=tracer))

    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    tracings, handlers = [], {}
    try:
        for name, env in SETTINGS.items():
            for key in [k for k in os.environ if k.startswith("OTEL_")]:
                del os.environ[key]
            os.environ.update(env)
            if env:
                os.environ.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "bench-inprocess"})
            tracing = setup_tracing("bench-inprocess")
            if tracing is not None:
                tracings.append(tracing)
            handlers[name] = handler(tracing.tracer if tracing is not None else None)
    finally:
        for key in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[key]
        os.environ.update(saved)

    async def measure(call) -> float:
        context = Context()
        started = time.process_time()
        for _ in range(requests):
            await call(request, context)
        return (time.process_time() - started) * 1e6 / requests

    async def main():
        samples: dict[str, list[float]] = {name: [] for name in handlers}
        for _ in range(rounds):
            for name, call in handlers.items():
                samples[name].append(await measure(call))
        return samples

    samples = asyncio.run(main())
    for tracing in tracings:
        tracing.shutdown()
    off = statistics.median(samples["off"])
    return {name: {"cpu_us_per_request": statistics.median(v), "min_us": min(v),
                   "added_us": statistics.median(v) - off} for name, v in samples.items()}


def print_tracing(rows: dict, out=None) -> None:
    """The tracing rows as a table, with the 1% target."""
    write = (out or sys.stdout).write
    write(f"\ntracing: mve proxy, 2 variants, c={rows['concurrency']}, {rows['rounds']} alternating round(s), "
          f"spans exported to an {rows['receiver']}\n")
    write(f"{'setting':<14} {'req/s':>9} {'vs off':>7} {'CPU us/req':>10} {'vs off':>7} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'errors':>7} {'requests':>9} {'spans':>9}  per round req/s\n")
    for name, row in rows["settings"].items():
        ratio = "-" if row["ratio_vs_off"] is None else f"{row['ratio_vs_off']:.3f}"
        cpu_ratio = "-" if row["cpu_ratio_vs_off"] is None else f"{row['cpu_ratio_vs_off']:.3f}"
        rounds = " ".join(f"{v:.0f}" for v in row["throughput_rps"])
        write(f"{name:<14} {row['median_rps']:>9.0f} {ratio:>7} {row['proxy_cpu_us_per_request']:>10.0f} "
              f"{cpu_ratio:>7} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['errors']:>7} {row['requests']:>9} "
              f"{row['spans_exported']:>9}  {rounds}\n")
    inprocess = rows.get("inprocess")
    if inprocess:
        write("in-process, the proxy's own code per ModelInfer (no gRPC, no model server): CPU us/request "
              + ", ".join(f"{name} {row['cpu_us_per_request']:.1f} (+{row['added_us']:.1f})"
                          for name, row in inprocess.items()) + "\n")
    target = rows["target"]
    verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
    value = "-" if target["value"] is None else f"{target['value']:.3f}"
    write(f"  {target['name']:<46} {value:>8}  (>= {target['limit']:g})  {verdict}\n")
