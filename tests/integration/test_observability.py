"""Observability end to end: a real control plane, proxy and model servers; requests counted by the
test, some failing on purpose, must come back exactly from CloudWatch's GetMetricStatistics and the
proxy's Prometheus text; percentiles must match the proxy's own per-request measurements within a
histogram bucket; an alarm on Invocation5XXErrors goes OK -> ALARM -> OK as failures start and stop;
a proxy restart neither loses nor double-counts.

The model ("broken" of tests/tiny_models.py) reshapes [N, 2] to [-1, 3]: it answers for N = 3 and fails inside ONNX
Runtime for N = 1, which the model server reports as INTERNAL, a 5xx model error.
"""

from __future__ import annotations

import re
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from procs import wait_until

import mve
from mve.sdk import ClientError
from tiny_models import build_model, npy

pytestmark = pytest.mark.integration

EP = "obs"
GOOD = np.ones((3, 2), np.float32)
BAD = np.ones((1, 2), np.float32)
LOG_LINE = re.compile(r"event=request .*variant=(\w+) .*model_latency_us=(\d+)")


class Traffic:
    """Invokes variants by name and counts what happened, per variant."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.ok = {"A": 0, "B": 0}
        self.failed = {"A": 0, "B": 0}

    def send(self, variant: str, good: bool = True) -> None:
        try:
            self.runtime.invoke_endpoint(
                EndpointName=EP, Body=npy(GOOD if good else BAD), ContentType="application/x-npy", TargetVariant=variant
            )
        except ClientError as error:
            assert not good and error.response["Error"]["Code"] == "ModelError", error
            self.failed[variant] += 1
        else:
            assert good
            self.ok[variant] += 1

    def total(self, variant: str) -> int:
        return self.ok[variant] + self.failed[variant]


def scrape(address: str) -> dict[str, float]:
    """Prometheus samples as {'name{label="v",...}': value} (labels in the exporter's order)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


@pytest.fixture
def mesh(services, tmp_path, example_models):
    model = tmp_path / "reshape.onnx"
    build_model(model, "broken")
    cp = services(["control-plane", "--data-dir", str(tmp_path / "cp"), "--port", "0", "--alarm-interval", "0.2"])
    sm = mve.client("sagemaker", address=cp.address)
    sm.create_model(ModelName="reshape", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(model)})
    sm.create_endpoint_config(
        EndpointConfigName="obs-config",
        ProductionVariants=[
            {"VariantName": v, "ModelName": "reshape", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
             "InitialVariantWeight": 1.0}
            for v in ("A", "B")
        ],
    )
    sm.create_endpoint(EndpointName=EP, EndpointConfigName="obs-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=EP, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})

    def start_proxy():
        proxy = services(
            ["proxy", "--control-plane", cp.address, "--port", "0", "--stats-interval", "0.2", "--log-level", "DEBUG"]
        )
        runtime = mve.client("sagemaker-runtime", address=proxy.address)
        wait_until(lambda: _routable(runtime), timeout=20, what="the proxy has the endpoint")
        return proxy, runtime

    yield cp, sm, mve.client("cloudwatch", address=cp.address), start_proxy
    sm.close()


def _routable(runtime) -> bool:
    try:
        runtime.invoke_endpoint(EndpointName=EP, Body=npy(GOOD), ContentType="application/x-npy", TargetVariant="Z")
    except ClientError as error:
        return "Variant Z not found" in error.response["Error"]["Message"]
    return False


def statistics(cw, metric, variant, started, stats=("Sum",), extended=(), namespace="AWS/SageMaker"):
    """One datapoint over the whole test (Period one hour from the minute the test started)."""
    response = cw.get_metric_statistics(
        Namespace=namespace,
        MetricName=metric,
        Dimensions=[{"Name": "EndpointName", "Value": EP}, {"Name": "VariantName", "Value": variant}],
        StartTime=started,
        EndTime=started + timedelta(hours=1),
        Period=3600,
        **({"Statistics": list(stats)} if stats else {}),
        **({"ExtendedStatistics": list(extended)} if extended else {}),
    )
    points = response["Datapoints"]
    assert len(points) <= 1, points
    return points[0] if points else None


def alarm_state(cw) -> str:
    return cw.describe_alarms(AlarmNames=["a-errors"])["MetricAlarms"][0]["StateValue"]


def drive_until(traffic: Traffic, cw, state: str, good: bool, limit_s: float = 20.0) -> None:
    """Send requests to A (every fourth also to B) until the alarm reaches `state` (bounded)."""
    deadline = time.monotonic() + limit_s
    n = 0
    while alarm_state(cw) != state:
        assert time.monotonic() < deadline, f"the alarm did not reach {state} in {limit_s} s"
        traffic.send("A", good)
        if n % 4 == 0:
            traffic.send("B", good)
        n += 1
        time.sleep(0.02)


def test_metrics_prometheus_and_an_alarm_agree_with_the_requests_sent(mesh):
    cp, sm, cw, start_proxy = mesh
    started = datetime.now(timezone.utc) - timedelta(minutes=1)
    proxy, runtime = start_proxy()
    traffic = Traffic(runtime)
    cw.put_metric_alarm(
        AlarmName="a-errors", Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors",
        Dimensions=[{"Name": "EndpointName", "Value": EP}, {"Name": "VariantName", "Value": "A"}],
        Statistic="Sum", Period=1, EvaluationPeriods=2, DatapointsToAlarm=1, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching",
    )
    assert alarm_state(cw) in ("INSUFFICIENT_DATA", "OK")

    drive_until(traffic, cw, "OK", good=True)
    drive_until(traffic, cw, "ALARM", good=False)
    drive_until(traffic, cw, "OK", good=True)
    history = cw.describe_alarm_history(AlarmName="a-errors", HistoryItemType="StateUpdate", ScanBy="TimestampAscending")
    summaries = [h["HistorySummary"] for h in history["AlarmHistoryItems"]]
    assert summaries[-2:] == ["Alarm updated from OK to ALARM", "Alarm updated from ALARM to OK"]
    assert "Threshold Crossed" in cw.describe_alarms(StateValue="OK")["MetricAlarms"][0]["StateReason"]
    control_plane = scrape(cp.ready["metrics_address"])
    assert control_plane['mve_alarm_state{alarm="a-errors",state="OK"}'] == 1
    assert control_plane['mve_alarm_state{alarm="a-errors",state="ALARM"}'] == 0

    for _ in range(40):  # a known mix on B too
        traffic.send("B", good=True)
    for _ in range(7):
        traffic.send("B", good=False)
    assert traffic.failed["A"] > 0 and traffic.failed["B"] >= 7

    # Prometheus: the proxy's own totals, exactly.
    def prometheus_agrees() -> bool:
        samples = scrape(proxy.ready["metrics_address"])
        return all(
            samples.get(f'mve_invocations_total{{endpoint="{EP}",variant="{v}"}}') == traffic.total(v)
            and samples.get(f'mve_invocation_5xx_errors_total{{endpoint="{EP}",variant="{v}"}}') == traffic.failed[v]
            and samples.get(f'mve_model_latency_seconds_count{{endpoint="{EP}",variant="{v}"}}') == traffic.ok[v]
            for v in ("A", "B")
        )

    wait_until(prometheus_agrees, timeout=10, what="Prometheus totals equal to the requests sent")

    # CloudWatch: the same counts, once the proxy's reports have arrived.
    def cloudwatch_agrees() -> bool:
        point = statistics(cw, "Invocations", "B", started)
        return point is not None and point["Sum"] == traffic.total("B") and (
            statistics(cw, "Invocations", "A", started)["Sum"] == traffic.total("A")
        )

    wait_until(cloudwatch_agrees, timeout=10, what="GetMetricStatistics equal to the requests sent")
    for v in ("A", "B"):
        five = statistics(cw, "Invocation5XXErrors", v, started, ("Sum", "SampleCount"))
        assert (five["Sum"], five["SampleCount"]) == (traffic.failed[v], traffic.total(v))
        assert statistics(cw, "InvocationModelErrors", v, started)["Sum"] == traffic.failed[v]
        assert statistics(cw, "Invocation4XXErrors", v, started)["Sum"] == 0
        assert statistics(cw, "InvocationsPerInstance", v, started)["Sum"] == pytest.approx(traffic.total(v))
        latency = statistics(cw, "ModelLatency", v, started, ("SampleCount",), ("p50", "p90", "p99"))
        assert latency["SampleCount"] == traffic.ok[v] and latency["Unit"] == "Microseconds"

        # The proxy's per-request model latencies (its DEBUG lines) against the stored percentiles.
        measured = np.array(
            [int(m.group(2)) for line in proxy.output if (m := LOG_LINE.search(line)) and m.group(1) == v], float
        )
        assert len(measured) == traffic.ok[v]
        for stat, q in (("p50", 50), ("p90", 90), ("p99", 99)):
            expected = np.percentile(measured, q)
            assert latency["ExtendedStatistics"][stat] == pytest.approx(expected, rel=1 / 64, abs=2.0), stat

    # Each model server's CPU and memory, sampled by the control plane.
    for v in ("A", "B"):
        cpu = statistics(cw, "CPUUtilization", v, started, ("SampleCount", "Average", "Maximum"),
                         namespace="/aws/sagemaker/Endpoints")
        memory = statistics(cw, "MemoryUtilization", v, started, ("Average",), namespace="/aws/sagemaker/Endpoints")
        assert cpu["SampleCount"] >= 1 and 0 <= cpu["Average"] <= 100 * 64 and cpu["Unit"] == "Percent"
        assert 0 < memory["Average"] < 100
    names = {m["MetricName"] for m in cw.list_metrics(Dimensions=[{"Name": "VariantName", "Value": "A"}])["Metrics"]}
    assert {"Invocations", "ModelLatency", "OverheadLatency", "CPUUtilization", "MemoryUtilization"} <= names

    # A proxy restart: the stopping proxy flushes its last interval; the new one starts from zero.
    before = {v: traffic.total(v) for v in ("A", "B")}
    assert proxy.stop() == 0
    proxy, runtime = start_proxy()
    traffic.runtime = runtime
    for _ in range(5):
        traffic.send("A")
    wait_until(
        lambda: statistics(cw, "Invocations", "A", started)["Sum"] == traffic.total("A"),
        timeout=10, what="counts across a proxy restart",
    )
    time.sleep(1.0)  # later reports must not add anything more
    assert statistics(cw, "Invocations", "A", started)["Sum"] == traffic.total("A") == before["A"] + 5
