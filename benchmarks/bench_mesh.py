"""How long the control loop takes: CreateEndpoint -> InService, and a weight update -> the new split.

Starts a mesh (control plane + proxy as processes on 127.0.0.1, temp data dir), deploys the two
example breast-cancer classifiers as Variant1 and Variant2 (one instance each), then measures:

- ``create_to_in_service``: CreateEndpoint call until DescribeEndpoint says InService (polled
  every 10 ms), over several endpoints created one after the other;
- ``update_to_new_split``: UpdateEndpointWeightsAndCapacities moving all weight from one variant
  to the other, until the first InvokeEndpoint answered by the newly weighted variant (requests
  sent back to back), over several flips. With all weight on one variant, every request after the
  proxy applied the new routing table goes there, so this is the time for the change to reach the
  data plane.

Prints a table and writes ``benchmarks/results/mesh.json``. Bounded: a few endpoints, a few flips,
each wait capped at 30 s.

    python benchmarks/bench_mesh.py [--endpoints 3] [--flips 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import mve
from mve.examples import build_example_models, load_eval_data
from mve.mesh import Mesh

RESULTS = Path(__file__).parent / "results" / "mesh.json"
WAIT_CAP_S = 30.0


def _wait_in_service(sm, name: str) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < WAIT_CAP_S:
        status = sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
        if status == "InService":
            return time.perf_counter() - started
        if status == "Failed":
            raise RuntimeError(f"endpoint {name} failed")
        time.sleep(0.01)
    raise TimeoutError(f"endpoint {name} not InService after {WAIT_CAP_S} s")


def _time_create(sm, name: str) -> float:
    started = time.perf_counter()
    sm.create_endpoint(EndpointName=name, EndpointConfigName="bench-config")
    _wait_in_service(sm, name)
    return time.perf_counter() - started


def _time_flip(sm, runtime, endpoint: str, to_variant: str, body: bytes) -> tuple[float, int]:
    weights = {"Variant1": 0.0, "Variant2": 0.0, to_variant: 1.0}
    started = time.perf_counter()
    sm.update_endpoint_weights_and_capacities(
        EndpointName=endpoint,
        DesiredWeightsAndCapacities=[{"VariantName": v, "DesiredWeight": w} for v, w in weights.items()],
    )
    requests = 0
    while time.perf_counter() - started < WAIT_CAP_S:
        response = runtime.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="text/csv")
        requests += 1
        if response["InvokedProductionVariant"] == to_variant:
            return time.perf_counter() - started, requests
    raise TimeoutError(f"no request reached {to_variant} within {WAIT_CAP_S} s")


def _summary(values_s: list[float]) -> dict:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "min_ms": min(ms), "median_ms": statistics.median(ms), "max_ms": max(ms), "all_ms": ms}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=3, choices=range(1, 11), metavar="1-10")
    parser.add_argument("--flips", type=int, default=6, choices=range(1, 51), metavar="1-50")
    args = parser.parse_args(argv)

    x_test, _ = load_eval_data()
    body = ",".join(f"{v:.6g}" for v in np.asarray(x_test[0])).encode()
    with tempfile.TemporaryDirectory() as data_dir, Mesh(Path(data_dir) / "mesh", log_path=Path(data_dir) / "mesh.log") as mesh:
        models = build_example_models(Path(data_dir) / "models")
        sm = mve.client("sagemaker", address=mesh.control_plane_address)
        runtime = mve.client("sagemaker-runtime", address=mesh.proxy_address)
        for variant, model in (("Variant1", "cancer-weak"), ("Variant2", "cancer-strong")):
            sm.create_model(ModelName=model, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(models[model])})
        sm.create_endpoint_config(
            EndpointConfigName="bench-config",
            ProductionVariants=[
                {"VariantName": v, "ModelName": m, "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
                 "InitialVariantWeight": 1.0}
                for v, m in (("Variant1", "cancer-weak"), ("Variant2", "cancer-strong"))
            ],
        )
        create_s = []
        for i in range(args.endpoints):
            create_s.append(_time_create(sm, f"bench-{i}"))
            if i < args.endpoints - 1:
                sm.delete_endpoint(EndpointName=f"bench-{i}")
                sm.get_waiter("endpoint_deleted").wait(EndpointName=f"bench-{i}")
        endpoint = f"bench-{args.endpoints - 1}"
        runtime.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="text/csv")  # warm channels
        flip_s, flip_requests = [], []
        for i in range(args.flips):
            seconds, requests = _time_flip(sm, runtime, endpoint, "Variant2" if i % 2 == 0 else "Variant1", body)
            flip_s.append(seconds)
            flip_requests.append(requests)

    results = {
        "benchmark": "mesh",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "create_to_in_service": _summary(create_s),
        "update_to_new_split": {**_summary(flip_s), "requests_until_switch": flip_requests},
    }
    print(f"{'measure':<38} {'n':>3} {'min ms':>9} {'median ms':>10} {'max ms':>9}")
    for label, key in (("CreateEndpoint -> InService (2x1 inst)", "create_to_in_service"),
                       ("weight update -> new split at proxy", "update_to_new_split")):
        row = results[key]
        print(f"{label:<38} {row['n']:>3} {row['min_ms']:>9.1f} {row['median_ms']:>10.1f} {row['max_ms']:>9.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
