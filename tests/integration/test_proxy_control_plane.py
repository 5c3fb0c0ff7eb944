"""End to end: the real control plane starts model servers and streams routes; the proxy serves them."""

from __future__ import annotations

import io
import time

import numpy as np
import onnxruntime as ort
import pytest

import mve
from mve.sdk import ClientError
from mve.examples import load_eval_data

pytestmark = pytest.mark.integration


def test_an_endpoint_created_on_the_control_plane_is_served_by_the_proxy(services, example_models, tmp_path):
    control = services(["control-plane", "--data-dir", str(tmp_path / "data"), "--port", "0"])
    proxy = services(["proxy", "--control-plane", control.address, "--port", "0"])
    sm = mve.client("sagemaker", address=control.address)
    runtime = mve.client("sagemaker-runtime", address=proxy.address)
    for name in ("cancer-weak", "cancer-strong"):
        sm.create_model(
            ModelName=name, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(example_models[name])}
        )
    sm.create_endpoint_config(
        EndpointConfigName="cancer-config",
        ProductionVariants=[
            {"VariantName": "weak", "ModelName": "cancer-weak", "InitialInstanceCount": 1,
             "InstanceType": "ml.cpu.small", "InitialVariantWeight": 1.0},
            {"VariantName": "strong", "ModelName": "cancer-strong", "InitialInstanceCount": 1,
             "InstanceType": "ml.cpu.small", "InitialVariantWeight": 0.0},
        ],
    )
    sm.create_endpoint(EndpointName="cancer", EndpointConfigName="cancer-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="cancer", WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})

    x = np.asarray(load_eval_data()[0][:8], dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, x)
    body = buffer.getvalue()

    def invoke(**fields):
        deadline = time.monotonic() + 15
        while True:  # the proxy learns the table a moment after InService
            try:
                return runtime.invoke_endpoint(EndpointName="cancer", Body=body, ContentType="application/x-npy", **fields)
            except ClientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    for variant, model in (("weak", "cancer-weak"), ("strong", "cancer-strong")):
        response = invoke(TargetVariant=variant)
        assert response["InvokedProductionVariant"] == variant
        session = ort.InferenceSession(str(example_models[model]), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(np.load(io.BytesIO(response["Body"].read())), session.run(["label"], {"input": x})[0])
    assert {invoke()["InvokedProductionVariant"] for _ in range(20)} == {"weak"}

    sm.update_endpoint_weights_and_capacities(
        EndpointName="cancer",
        DesiredWeightsAndCapacities=[{"VariantName": "weak", "DesiredWeight": 0.0},
                                     {"VariantName": "strong", "DesiredWeight": 1.0}],
    )
    deadline = time.monotonic() + 15
    while invoke()["InvokedProductionVariant"] != "strong":
        assert time.monotonic() < deadline, "the new weights never reached the proxy"
        time.sleep(0.05)
    assert {invoke()["InvokedProductionVariant"] for _ in range(20)} == {"strong"}
