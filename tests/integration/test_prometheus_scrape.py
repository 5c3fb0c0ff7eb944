"""Prometheus text from a real control plane and proxy: counts per variant exact after real calls."""

from __future__ import annotations

import io
import socket
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import mve
from mve.examples import load_eval_data
from procs import run_mve, wait_until

pytestmark = pytest.mark.integration

CALLS = {"weak": 7, "strong": 4}


def scrape(address: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from http://address/metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(metrics: dict, name: str, **labels) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def test_proxy_and_control_plane_serve_exact_per_variant_metrics(services, example_models, tmp_path):
    control = services(["control-plane", "--data-dir", str(tmp_path / "data"), "--port", "0", "--metrics-port", "0"])
    proxy = services(["proxy", "--control-plane", control.address, "--port", "0", "--metrics-port", "0"])
    cp_metrics, proxy_metrics = control.ready["metrics_address"], proxy.ready["metrics_address"]
    assert cp_metrics.startswith("127.0.0.1:") and proxy_metrics.startswith("127.0.0.1:")

    sm = mve.client("sagemaker", address=control.address)
    runtime = mve.client("sagemaker-runtime", address=proxy.address)
    for name in ("cancer-weak", "cancer-strong"):
        sm.create_model(ModelName=name, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(example_models[name])})
    sm.create_endpoint_config(
        EndpointConfigName="cancer-config",
        ProductionVariants=[
            {"VariantName": "weak", "ModelName": "cancer-weak", "InitialInstanceCount": 1,
             "InstanceType": "ml.cpu.small", "InitialVariantWeight": 0.5},
            {"VariantName": "strong", "ModelName": "cancer-strong", "InitialInstanceCount": 1,
             "InstanceType": "ml.cpu.small", "InitialVariantWeight": 0.5},
        ],
    )
    sm.create_endpoint(EndpointName="cancer", EndpointConfigName="cancer-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="cancer", WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})

    # The proxy's own gauges say when it has the table with both variants' instances.
    wait_until(
        lambda: all(sample(scrape(proxy_metrics), "mve_proxy_variant_instances", endpoint="cancer", variant=v) == 1
                    for v in CALLS),
        what="the proxy's routing table to list both variants",
    )
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(load_eval_data()[0][:4], dtype=np.float32))
    for variant, n in CALLS.items():
        for _ in range(n):
            response = runtime.invoke_endpoint(
                EndpointName="cancer", Body=buffer.getvalue(), ContentType="application/x-npy", TargetVariant=variant
            )
            assert response["InvokedProductionVariant"] == variant

    metrics = scrape(proxy_metrics)
    for variant, n in CALLS.items():
        labels = {"endpoint": "cancer", "variant": variant}
        assert sample(metrics, "mve_invocations_total", **labels) == n
        assert sample(metrics, "mve_invocation_4xx_errors_total", **labels) == 0
        assert sample(metrics, "mve_invocation_5xx_errors_total", **labels) == 0
        assert sample(metrics, "mve_invocations_per_instance_total", **labels) == n  # one instance each
        for histogram in ("mve_model_latency_seconds", "mve_overhead_latency_seconds"):
            assert sample(metrics, histogram + "_count", **labels) == n
            assert sample(metrics, histogram + "_bucket", le="+Inf", **labels) == n
            assert 0 < sample(metrics, histogram + "_sum", **labels) < 60 * n
        assert sample(metrics, "mve_proxy_variant_weight", **labels) == 0.5

    cp = wait_until(
        lambda: (m := scrape(cp_metrics)) and sample(m, "mve_proxies_subscribed") == 1 and m,
        what="the control plane to count the proxy's WatchRoutes stream",
    )
    assert sample(cp, "mve_endpoint_status", endpoint="cancer", status="InService") == 1
    assert sample(cp, "mve_endpoint_status", endpoint="cancer", status="Creating") == 0
    for variant in CALLS:
        assert sample(cp, "mve_variant_instances", endpoint="cancer", variant=variant) == 1
        assert sample(cp, "mve_variant_desired_instances", endpoint="cancer", variant=variant) == 1
        assert sample(cp, "mve_variant_current_weight", endpoint="cancer", variant=variant) == 0.5
    wait_until(
        lambda: sample(scrape(cp_metrics), "mve_routing_table_version")
        == sample(scrape(proxy_metrics), "mve_proxy_routing_table_version"),
        what="the proxy to serve on the control plane's routing table version",
    )


@pytest.mark.parametrize("service", ["proxy", "control-plane"])
@pytest.mark.parametrize("port", ["70000", "-2"])
def test_a_bad_metrics_port_exits_2_naming_the_flag(service, port, tmp_path):
    args = ["proxy"] if service == "proxy" else ["control-plane", "--data-dir", str(tmp_path)]
    result = run_mve([*args, "--port", "0", "--metrics-port", port])
    assert result.returncode == 2
    assert f"--metrics-port must be 0-65535 (0 picks a free port, -1 turns the exporter off), got {port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("service", ["proxy", "control-plane"])
def test_a_busy_metrics_port_exits_1_and_says_so(service, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["proxy"] if service == "proxy" else ["control-plane", "--data-dir", str(tmp_path)]
        result = run_mve([*args, "--port", "0", "--metrics-port", str(port)], timeout=60)
    assert result.returncode == 1
    assert f"cannot bind the metrics port 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_port_minus_1_turns_the_exporter_off(services):
    proxy = services(["proxy", "--port", "0", "--metrics-port", "-1"])
    assert proxy.ready["metrics_address"] == ""


# The metrics addresses of `mve up` and of a Mesh whose proxy is restarted are checked in test_mesh.py, on
# the meshes its own tests start (test_mve_up_announces_its_metrics_addresses_runs_until_sigterm_and_leaves_nothing,
# test_mesh_restarts_a_crashed_proxy_on_the_same_ports_and_surfaces_both_metrics_addresses).
