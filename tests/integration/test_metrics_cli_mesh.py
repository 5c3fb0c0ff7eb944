"""``mve top`` and ``mve metrics`` (run in-process) against a real control plane, proxy and model servers."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from procs import wait_until

import mve
from mve.cli import main
from mve.sdk import ClientError

pytestmark = pytest.mark.integration

EP = "top"


def build_identity_model(path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture
def endpoint(services, tmp_path):
    """Endpoint "top": variant A (weight 1) and B (weight 3), traffic sent in the background."""
    model = tmp_path / "identity.onnx"
    build_identity_model(model)
    cp = services(["control-plane", "--data-dir", str(tmp_path / "cp"), "--port", "0"])
    proxy = services(["proxy", "--control-plane", cp.address, "--port", "0", "--stats-interval", "0.2"])
    with mve.client("sagemaker", address=cp.address) as sm:
        sm.create_model(ModelName="id", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(model)})
        sm.create_endpoint_config(EndpointConfigName="top-config", ProductionVariants=[
            {"VariantName": v, "ModelName": "id", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
             "InitialVariantWeight": w} for v, w in (("A", 1.0), ("B", 3.0))])
        sm.create_endpoint(EndpointName=EP, EndpointConfigName="top-config")
        sm.get_waiter("endpoint_in_service").wait(EndpointName=EP, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
    body = io.BytesIO()
    np.save(body, np.ones((1, 2), np.float32))
    stop = threading.Event()

    def send() -> None:
        with mve.client("sagemaker-runtime", address=proxy.address) as runtime:
            while not stop.is_set():
                try:
                    runtime.invoke_endpoint(EndpointName=EP, Body=body.getvalue(), ContentType="application/x-npy")
                except ClientError:
                    pass  # until the proxy has the routing table
                stop.wait(0.01)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    yield cp.address
    stop.set()
    sender.join(10)


def _run(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_top_and_metrics_verbs_against_the_control_plane(endpoint, capsys):
    address = endpoint

    def both_variants_served():
        figures = _run(capsys, "top", EP, "--once", "--json", "--window", "5", "--control-plane", address)
        rows = {row["VariantName"]: row for row in figures["Variants"]}
        return figures if all(rows[v]["Invocations"] > 0 for v in ("A", "B")) else None

    figures = wait_until(both_variants_served, timeout=30, interval=0.5, what="top shows traffic on A and B")
    a, b = figures["Variants"]
    assert (a["WeightShare"], b["WeightShare"]) == (0.25, 0.75)
    assert (a["CurrentInstanceCount"], b["CurrentInstanceCount"]) == (1, 1)
    assert a["TrafficShare"] + b["TrafficShare"] == pytest.approx(1.0)
    assert a["ModelLatencyP50Ms"] > 0 and b["ModelLatencyP99Ms"] >= b["ModelLatencyP50Ms"]
    assert a["Invocation5XXErrors"] == 0

    listed = _run(capsys, "metrics", "list-metrics", "--namespace", "AWS/SageMaker", "--metric-name", "Invocations",
                  "--dimensions", f"Name=EndpointName,Value={EP}", "Name=VariantName", "--json",
                  "--control-plane", address)
    assert {d["Value"] for m in listed["Metrics"] for d in m["Dimensions"] if d["Name"] == "VariantName"} == {"A", "B"}

    assert main(["metrics", "put-metric-alarm", "--alarm-name", "top-5xx", "--namespace", "AWS/SageMaker",
                 "--metric-name", "Invocation5XXErrors", "--dimensions", f"Name=EndpointName,Value={EP}",
                 "Name=VariantName,Value=A", "--statistic", "Sum", "--period", "10", "--evaluation-periods", "3",
                 "--datapoints-to-alarm", "2", "--threshold", "1", "--comparison-operator",
                 "GreaterThanOrEqualToThreshold", "--control-plane", address]) == 0
    alarms = _run(capsys, "metrics", "describe-alarms", "--alarm-names", "top-5xx", "--json",
                  "--control-plane", address)["MetricAlarms"]
    assert [(x["AlarmName"], x["Statistic"], x["DatapointsToAlarm"]) for x in alarms] == [("top-5xx", "Sum", 2)]
    history = _run(capsys, "metrics", "describe-alarm-history", "--alarm-name", "top-5xx", "--json",
                   "--control-plane", address)["AlarmHistoryItems"]
    assert any(item["HistoryItemType"] == "ConfigurationUpdate" for item in history)
    assert main(["metrics", "delete-alarms", "--alarm-names", "top-5xx", "--control-plane", address]) == 0
    assert _run(capsys, "metrics", "describe-alarms", "--json", "--control-plane", address)["MetricAlarms"] == []

    capsys.readouterr()
    assert main(["top", "nothing-here", "--once", "--control-plane", address]) == 1
    assert "nothing-here" in capsys.readouterr().err
