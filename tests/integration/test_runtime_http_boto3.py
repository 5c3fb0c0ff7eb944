"""The real boto3 ``sagemaker-runtime`` client against the proxy's HTTP door, with a real control
plane (``--auth none``), proxy and model servers: routing, errors and counters as on the gRPC door."""

from __future__ import annotations

import time
import urllib.request

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

import mve
from tiny_models import build_model, npy

pytestmark = pytest.mark.integration

X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def mesh(module_services, tmp_path_factory):
    """Control plane (no auth) + proxy; endpoint "pm" (variants Plus and Minus, 50/50) and "broken"."""
    work = tmp_path_factory.mktemp("runtime-http")
    control = module_services(["control-plane", "--data-dir", str(work / "data"), "--port", "0", "--auth", "none"])
    proxy = module_services(["proxy", "--control-plane", control.address, "--port", "0"])
    sm = mve.client("sagemaker", address=control.address)
    for kind in ("plus", "minus", "broken"):
        build_model(work / f"{kind}.onnx", kind)
        sm.create_model(ModelName=kind, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(work / f"{kind}.onnx")})

    def variant(name, model):
        return {"VariantName": name, "ModelName": model, "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
                "InitialVariantWeight": 1.0}

    sm.create_endpoint_config(EndpointConfigName="pm", ProductionVariants=[variant("Plus", "plus"), variant("Minus", "minus")])
    sm.create_endpoint_config(EndpointConfigName="broken", ProductionVariants=[variant("Broken", "broken")])
    for name in ("pm", "broken"):
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    for name in ("pm", "broken"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
    runtime = boto3.client(
        "sagemaker-runtime", endpoint_url=f"http://{proxy.ready['http_address']}", region_name="us-east-1",
        aws_access_key_id="MVEKANYTHING", aws_secret_access_key="anything",
        config=Config(retries={"total_max_attempts": 1}),
    )
    deadline = time.monotonic() + 15
    while True:  # the proxy learns the table a moment after InService
        try:
            runtime.invoke_endpoint(EndpointName="pm", Body=npy(X), ContentType="application/x-npy")
            break
        except ClientError:
            assert time.monotonic() < deadline, "the proxy never routed pm"
            time.sleep(0.05)
    return {"runtime": runtime, "proxy": proxy, "grpc_runtime": mve.client("sagemaker-runtime", address=proxy.address),
            "control": control}


def invoke(runtime, **fields):
    response = runtime.invoke_endpoint(EndpointName="pm", Body=npy(X), ContentType="application/x-npy",
                                       Accept="application/x-npy", **fields)
    import io

    return response, np.load(io.BytesIO(response["Body"].read()))


def test_target_variant_picks_the_variant_and_the_answer_names_it(mesh):
    for variant, expected in (("Plus", X + 1), ("Minus", X - 1)):
        response, y = invoke(mesh["runtime"], TargetVariant=variant)
        assert response["InvokedProductionVariant"] == variant
        np.testing.assert_array_equal(y, expected)
        assert response["ContentType"] == "application/x-npy"


def test_without_a_target_the_weights_split_the_traffic(mesh):
    seen = {}
    for _ in range(200):  # 50/50: both variants well before 200 calls (p of missing one < 1e-59)
        response, y = invoke(mesh["runtime"])
        variant = response["InvokedProductionVariant"]
        np.testing.assert_array_equal(y, X + 1 if variant == "Plus" else X - 1)
        seen[variant] = seen.get(variant, 0) + 1
        if len(seen) == 2:
            break
    assert set(seen) == {"Plus", "Minus"}


def test_inference_id_and_custom_attributes_go_through(mesh):
    response, _ = invoke(mesh["runtime"], InferenceId="http-id-1", CustomAttributes="trace=abc")
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-sagemaker-inference-id"] == "http-id-1"
    assert "CustomAttributes" not in response  # mve's ONNX model servers set none in their answers
    with pytest.raises(mesh["runtime"].exceptions.ValidationError, match="CustomAttributes is 1025 characters"):
        invoke(mesh["runtime"], CustomAttributes="a" * 1025)


def test_a_missing_endpoint_is_a_validation_error(mesh):
    runtime = mesh["runtime"]
    with pytest.raises(runtime.exceptions.ValidationError) as caught:
        runtime.invoke_endpoint(EndpointName="no-such-endpoint", Body=b"1,2", ContentType="text/csv")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "no-such-endpoint" in caught.value.response["Error"]["Message"]


def test_a_model_failure_is_a_model_error_with_its_original_status_code(mesh):
    runtime = mesh["runtime"]
    with pytest.raises(runtime.exceptions.ModelError) as caught:  # "broken" fails for 1 or 2 rows
        runtime.invoke_endpoint(EndpointName="broken", Body=b"1,2", ContentType="text/csv")
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 500  # the model server's INTERNAL, as an HTTP integer
    assert response["OriginalMessage"]
    assert isinstance(caught.value, ClientError) and response["Error"]["Code"] == "ModelError"


def test_bad_input_the_model_rejects_is_a_validation_error(mesh):
    runtime = mesh["runtime"]
    with pytest.raises(runtime.exceptions.ValidationError):
        runtime.invoke_endpoint(EndpointName="pm", Body=b"1,2,3", ContentType="text/csv")  # 3 columns, not 2


def counters(proxy) -> dict[tuple[str, str, str], float]:
    """(metric, endpoint, variant) -> value of the proxy's counters, from its Prometheus text."""
    with urllib.request.urlopen(f"http://{proxy.ready['metrics_address']}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total") and "endpoint" in sample.labels:
                out[(sample.name, sample.labels["endpoint"], sample.labels["variant"])] = sample.value
    return out


def test_the_proxy_counts_http_invocations_as_it_counts_grpc_ones(mesh):
    before = counters(mesh["proxy"])
    for _ in range(5):
        invoke(mesh["runtime"], TargetVariant="Plus")
        mesh["grpc_runtime"].invoke_endpoint(EndpointName="pm", Body=npy(X), ContentType="application/x-npy",
                                             TargetVariant="Plus")
    for client in (mesh["runtime"], mesh["grpc_runtime"]):
        with pytest.raises(client.exceptions.ModelError):
            client.invoke_endpoint(EndpointName="broken", Body=b"1,2", ContentType="text/csv")
    after = counters(mesh["proxy"])

    def delta(name, endpoint, variant):
        key = (name, endpoint, variant)
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("mve_invocations_total", "pm", "Plus") == 10  # 5 over HTTP, 5 over gRPC
    assert delta("mve_invocations_total", "pm", "Minus") == 0
    assert delta("mve_invocation_model_errors_total", "broken", "Broken") == 2
    assert delta("mve_invocation_5xx_errors_total", "broken", "Broken") == 2


def test_sigterm_drains_the_http_door_with_the_grpc_door(mesh, services):
    import http.client
    import json
    import signal

    control = mesh["control"]  # the module's control plane (--auth none): only its proxies are stopped here
    off = services(["proxy", "--control-plane", control.address, "--port", "0", "--http-port", "-1"])
    assert off.ready["http_address"] == ""
    proxy = services(["proxy", "--control-plane", control.address, "--port", "0"],
                     env={"MVE_PROXY_DRAIN_S": "3"})
    host, port = proxy.ready["http_address"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)  # one keep-alive connection

    def post() -> tuple[int, str, bool]:
        """(status, Connection, whether the message names the missing endpoint)."""
        connection.request("POST", "/endpoints/nope/invocations", body=b"1,2", headers={"Content-Type": "text/csv"})
        response = connection.getresponse()
        message = json.loads(response.read())["message"]
        return response.status, response.getheader("Connection", "keep-alive").lower(), "Endpoint nope" in message

    deadline = time.monotonic() + 15
    while (answer := post())[0] == 503:  # no routing table yet: ServiceUnavailable
        assert time.monotonic() < deadline, "the proxy never got its routing table"
        time.sleep(0.05)
    assert answer == (400, "keep-alive", True)
    proxy.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert post() == (400, "close", True)  # still served while draining, then closed
    connection.close()
    assert proxy.process.wait(15) == 0
    with pytest.raises(OSError):
        http.client.HTTPConnection(host, int(port), timeout=2).request("GET", "/")
    assert any("event=http_runtime_stopped" in line for line in proxy.output)
