"""Autoscaling under a ramp of load: how fast a variant scales out, how fast it comes back, and what
the callers' latency does meanwhile.

Starts a control plane and a proxy (processes on 127.0.0.1, temp data dir), deploys the example MLP
as one variant with one instance, registers it with MinCapacity 1 and MaxCapacity 3, and puts a
target tracking policy on SageMakerVariantInvocationsPerInstance. Then a bounded ramp: `--high`
seconds of load from `--clients` threads, then `--idle` seconds of none. Every 0.5 s it samples
the variant's instance count (DescribeEndpoint) and the tracked metric (GetMetricStatistics over
the policy's window, per instance per minute); every request's latency is recorded by the client.

Prints a table (time to scale out, time back to the minimum, p99 before / during / after the
scale-out) and writes ``benchmarks/results/autoscaling.json`` and the timeline (requests per
second, the metric against its target, instances, p99 per second) as
``benchmarks/results/autoscaling.png`` (matplotlib: ``pip install -e '.[bench]'``).

    python benchmarks/bench_autoscaling.py [--high 30] [--idle 40] [--clients 4] [--target 3000]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
WINDOW_S = 10


def _start(args: list[str]):
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from procs import start_service

    return start_service(args)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class Ramp:
    """Client threads sending requests for `high_s`, recording (end time, latency s, ok)."""

    def __init__(self, address: str, clients: int, high_s: float, body: bytes):
        import mve

        self.records: list[tuple[float, float, bool]] = []
        self.lock = threading.Lock()
        self.stop_at = time.monotonic() + high_s
        self.threads = [threading.Thread(target=self._run, args=(mve.client("sagemaker-runtime", address=address), body))
                        for _ in range(clients)]

    def _run(self, runtime, body: bytes) -> None:
        from mve.sdk import ClientError

        while time.monotonic() < self.stop_at:
            started = time.monotonic()
            try:
                runtime.invoke_endpoint(EndpointName="bench", Body=body, ContentType="application/x-npy")
                ok = True
            except ClientError:
                ok = False
            ended = time.monotonic()
            with self.lock:
                self.records.append((ended, ended - started, ok))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)


def _p99(latencies) -> float:
    return float(np.percentile(latencies, 99) * 1000) if len(latencies) else float("nan")


def run(high_s: float, idle_s: float, clients: int, target: float) -> dict:
    import mve
    from mve.examples import build_example_models

    work = Path(tempfile.mkdtemp(prefix="mve-bench-autoscaling-"))
    models = build_example_models(work / "models")
    cp = _start(["control-plane", "--data-dir", str(work / "cp"), "--port", "0", "--autoscaling-interval", "1",
                 "--autoscaling-window", str(WINDOW_S), "--drain-seconds", "0.5"])
    proxy = _start(["proxy", "--control-plane", cp.address, "--port", "0", "--stats-interval", "0.5"])
    try:
        sm = mve.client("sagemaker", address=cp.address)
        cw = mve.client("cloudwatch", address=cp.address)
        aas = mve.client("application-autoscaling", address=cp.address)
        sm.create_model(ModelName="mlp", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(models["mlp"])})
        sm.create_endpoint_config(EndpointConfigName="bench", ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": "mlp", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
            "InitialVariantWeight": 1.0}])
        sm.create_endpoint(EndpointName="bench", EndpointConfigName="bench")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="bench", WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
        keys = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/bench/variant/AllTraffic",
                "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
        aas.register_scalable_target(**keys, MinCapacity=1, MaxCapacity=3)
        aas.put_scaling_policy(PolicyName="ipi", **keys, PolicyType="TargetTrackingScaling",
                               TargetTrackingScalingPolicyConfiguration={
                                   "TargetValue": target,
                                   "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                                   "ScaleOutCooldown": 10, "ScaleInCooldown": 10})
        body = _npy(np.ones((1, 16), np.float32))
        time.sleep(1.0)  # the proxy has the table
        dims = [{"Name": "EndpointName", "Value": "bench"}, {"Name": "VariantName", "Value": "AllTraffic"}]
        samples = []
        t0 = time.monotonic()
        ramp = Ramp(proxy.address, clients, high_s, body)
        ramp.start()
        while time.monotonic() - t0 < high_s + idle_s:
            variant = sm.describe_endpoint(EndpointName="bench")["ProductionVariants"][0]
            now = datetime.now(timezone.utc)
            points = cw.get_metric_statistics(
                Namespace="AWS/SageMaker", MetricName="InvocationsPerInstance", Dimensions=dims,
                StartTime=now - timedelta(seconds=WINDOW_S + 2), EndTime=now - timedelta(seconds=2), Period=1,
                Statistics=["Sum"])["Datapoints"]
            metric = sum(p["Sum"] for p in points) * 60.0 / WINDOW_S
            samples.append((time.monotonic() - t0, variant["CurrentInstanceCount"], variant["DesiredInstanceCount"], metric))
            time.sleep(0.5)
        ramp.join()
        activities = aas.describe_scaling_activities(ServiceNamespace="sagemaker")["ScalingActivities"]
    finally:
        proxy.stop()
        cp.stop()

    records = [(t - t0, latency, ok) for t, latency, ok in ramp.records]
    out_at = next((t for t, current, _, _ in samples if current >= 3), None)
    first_out = next((t for t, _, desired, _ in samples if desired > 1), None)
    back_at = next((t for t, current, _, _ in samples if t > high_s and current == 1), None)
    before = [lat for t, lat, _ in records if first_out is None or t < first_out]
    scaling = [lat for t, lat, _ in records if first_out is not None and first_out <= t < (out_at or high_s)]
    during = [lat for t, lat, _ in records if out_at is not None and t >= out_at]
    seconds = int(high_s) + 1
    per_second = [[lat for t, lat, _ in records if s <= t < s + 1] for s in range(seconds)]
    result = {
        "machine": platform.platform(),
        "high_s": high_s, "idle_s": idle_s, "clients": clients, "target_per_instance_per_minute": target,
        "requests": len(records), "failed": sum(1 for _, _, ok in records if not ok),
        "first_scale_out_s": first_out, "at_max_s": out_at,
        "back_to_min_after_load_s": (back_at - high_s) if back_at is not None else None,
        "p99_ms_before_scale_out": _p99(before), "p99_ms_while_scaling": _p99(scaling), "p99_ms_at_max": _p99(during),
        "requests_per_s_before": len(before) / first_out if first_out else None,
        "requests_per_s_at_max": len(during) / (high_s - out_at) if out_at and out_at < high_s else None,
        "activities": [{"start": a["StartTime"].isoformat(), "description": a["Description"], "status": a["StatusCode"]}
                       for a in reversed(activities)],
        "samples": samples,
        "p99_ms_per_second": [_p99(x) for x in per_second],
        "requests_per_second": [len(x) for x in per_second],
    }
    return result


def draw(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in result["samples"]]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    seconds = range(len(result["requests_per_second"]))
    axes[0].step(seconds, result["requests_per_second"], where="post")
    axes[0].set_ylabel("requests/s")
    axes[1].plot(t, [s[3] for s in result["samples"]], label="InvocationsPerInstance / min")
    axes[1].axhline(result["target_per_instance_per_minute"], color="gray", linestyle="--", label="target")
    axes[1].legend(loc="upper right")
    axes[1].set_ylabel("per instance / min")
    axes[2].step(t, [s[1] for s in result["samples"]], where="post", label="current")
    axes[2].step(t, [s[2] for s in result["samples"]], where="post", linestyle="--", label="desired")
    axes[2].set_ylabel("instances")
    axes[2].set_ylim(0, 4)
    axes[2].legend(loc="upper right")
    axes[3].plot(list(seconds), result["p99_ms_per_second"], marker=".")
    axes[3].set_ylabel("p99 ms")
    axes[3].set_xlabel("seconds since the load started")
    for ax in axes:
        ax.axvline(result["high_s"], color="red", linewidth=0.8)
    fig.suptitle("mve autoscaling: target tracking on SageMakerVariantInvocationsPerInstance, min 1 max 3")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--high", type=float, default=30.0, help="seconds of load (1-300)")
    parser.add_argument("--idle", type=float, default=40.0, help="seconds without load afterwards (1-600)")
    parser.add_argument("--clients", type=int, default=4, help="client threads during the load (1-64)")
    parser.add_argument("--target", type=float, default=3000.0, help="TargetValue, requests per instance per minute")
    args = parser.parse_args(argv)
    if not (1 <= args.high <= 300 and 1 <= args.idle <= 600 and 1 <= args.clients <= 64 and args.target > 0):
        parser.error("--high 1-300, --idle 1-600, --clients 1-64, --target > 0")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("bench_autoscaling needs matplotlib: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    result = run(args.high, args.idle, args.clients, args.target)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "autoscaling.json").write_text(json.dumps(result, indent=2, default=str))
    draw(result, RESULTS / "autoscaling.png")

    def fmt(value, unit=""):
        return "-" if value is None else f"{value:.1f}{unit}"

    print(f"autoscaling ramp: {args.clients} clients for {args.high:g} s, then {args.idle:g} s idle; "
          f"target {args.target:g} per instance per minute, min 1 max 3, cooldowns 10 s, window {WINDOW_S} s")
    print(f"{'figure':44} {'value':>10}")
    for label, value in (
        ("requests (failed)", f"{result['requests']} ({result['failed']})"),
        ("first scale-out after the load started", fmt(result["first_scale_out_s"], " s")),
        ("3 instances serving after", fmt(result["at_max_s"], " s")),
        ("back to 1 instance after the load stopped", fmt(result["back_to_min_after_load_s"], " s")),
        ("p99 before the scale-out", fmt(result["p99_ms_before_scale_out"], " ms")),
        ("p99 while instances start", fmt(result["p99_ms_while_scaling"], " ms")),
        ("p99 with 3 instances", fmt(result["p99_ms_at_max"], " ms")),
        ("requests/s before the scale-out", fmt(result["requests_per_s_before"])),
        ("requests/s with 3 instances", fmt(result["requests_per_s_at_max"])),
    ):
        print(f"{label:44} {value:>10}")
    for activity in result["activities"]:
        print(f"  activity {activity['start']}  {activity['description']}  {activity['status']}")
    print(f"wrote {RESULTS / 'autoscaling.json'} and {RESULTS / 'autoscaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
