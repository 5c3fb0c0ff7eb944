"""Autoscaling end to end: a real control plane, proxy and model servers; a bounded ramp of load
(high, then idle) at a variant with MinCapacity 1 and MaxCapacity 3 and a target tracking policy on
SageMakerVariantInvocationsPerInstance. It scales out under the load and back to 1 after it, with
no failed request, and the scaling activities say what happened."""

from __future__ import annotations

import time

import pytest
from procs import wait_until
from test_updates import EP, Load
from tiny_models import build_model

import mve

pytestmark = pytest.mark.integration

RESOURCE = f"endpoint/{EP}/variant/AllTraffic"
TARGET = {"ServiceNamespace": "sagemaker", "ResourceId": RESOURCE, "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}


def instances(sm) -> tuple[int, int]:
    variant = sm.describe_endpoint(EndpointName=EP)["ProductionVariants"][0]
    return variant["CurrentInstanceCount"], variant["DesiredInstanceCount"]


def test_target_tracking_scales_out_under_load_and_back_in_when_idle(services, tmp_path):
    build_model(tmp_path / "plus.onnx", "plus")
    cp = services(["control-plane", "--data-dir", str(tmp_path / "cp"), "--port", "0", "--autoscaling-interval", "0.5",
                   "--autoscaling-window", "5", "--drain-seconds", "0.5"])
    proxy = services(["proxy", "--control-plane", cp.address, "--port", "0", "--stats-interval", "0.2"])
    sm = mve.client("sagemaker", address=cp.address)
    aas = mve.client("application-autoscaling", address=cp.address)
    sm.create_model(ModelName="plus", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(tmp_path / "plus.onnx")})
    sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "plus", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
        "InitialVariantWeight": 1.0}])
    sm.create_endpoint(EndpointName=EP, EndpointConfigName="c")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=EP, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    aas.register_scalable_target(**TARGET, MinCapacity=1, MaxCapacity=3)
    aas.put_scaling_policy(
        PolicyName="invocations", **TARGET, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            # 10 requests per second per instance: any real load asks for more than 3 instances.
            "TargetValue": 600.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            # Scale-in goes one instance at a time whatever the cooldown; 1 s keeps the 3 -> 2 -> 1 steps apart.
            "ScaleOutCooldown": 5, "ScaleInCooldown": 1,
        },
    )
    timeline = []
    started = time.monotonic()
    with Load(proxy.address, threads=3, limit_s=60) as load:
        wait_until(lambda: instances(sm) == (3, 3), timeout=30, what="scale-out to 3 under load")
        timeline.append(("out", time.monotonic() - started))
        time.sleep(3)  # at 3 instances the load is still far above target: it stays at the maximum
        assert instances(sm) == (3, 3)
    idle = time.monotonic()
    wait_until(lambda: instances(sm) == (1, 1), timeout=40, what="scale-in to 1 when idle")
    timeline.append(("in", time.monotonic() - idle))
    print(f"\nautoscaling: {load.sent} requests, failures {len(load.failures)}; scaled out to 3 after "
          f"{timeline[0][1]:.1f} s of load, back to 1 {timeline[1][1]:.1f} s after it stopped")
    assert load.failures == []

    def activities():
        return aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=RESOURCE)["ScalingActivities"]

    wait_until(lambda: all(a["StatusCode"] != "InProgress" for a in activities()), timeout=10, what="activities settle")
    activities = activities()
    assert all(a["StatusCode"] == "Successful" for a in activities), activities
    counts = [int(a["Description"].split()[-1].rstrip(".")) for a in reversed(activities)]
    # Out (in one step, or two if the first evaluation saw part of the window) to 3, then in one at a time.
    peak = counts.index(3)
    assert counts[: peak + 1] == sorted(set(counts[: peak + 1])) and peak <= 1, counts
    assert counts[peak:] == [3, 2, 1], counts
    out = activities[-1]
    assert "SageMakerVariantInvocationsPerInstance" in out["Cause"] and f"from 1 to {counts[0]}" in out["Cause"]
    assert out["EndTime"] >= out["StartTime"]

    # A manual count is clamped to the registered range.
    sm.update_endpoint_weights_and_capacities(
        EndpointName=EP, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 9}])
    assert instances(sm)[1] == 3
