"""The real boto3 against ``mve up``: the article's whole flow, every error by boto3's own class, and
who may call.

One ``mve up`` process on a temporary data dir (HTTP faces on free ports, SigV4 on, as by default);
boto3 reads the first access key from ``<data-dir>/credentials``, where ``mve up`` wrote it, and
talks to the control plane's HTTP face (``sagemaker``, ``application-autoscaling``, ``cloudwatch``)
and the proxy's (``sagemaker-runtime``) with nothing but ``endpoint_url`` changed. The flow is the
one of shared/reference/seed-sagemaker-multi-variant-endpoints.txt: two models, a two-variant
config at weights 1 and 1, the endpoint, boto3's ``endpoint_in_service`` waiter, invocations with
and without TargetVariant, the invocations per variant in CloudWatch, weights moved to 25/75 and
then 0/1, a target-tracking scaling policy, describe, and delete with ``endpoint_deleted``.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from unittest import mock

import boto3
import botocore
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from mve.first_key import read_credentials
from tiny_models import build_model, npy

pytestmark = pytest.mark.integration

REGION = "us-east-1"
ARN = "arn:mve:sagemaker:local:000000000000"
ROWS = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)  # "broken" answers 3 rows, fails 1 or 2
FAST = {"Delay": 0.25, "MaxAttempts": 240}


@pytest.fixture(scope="module")
def up(module_services, tmp_path_factory):
    """``mve up`` with its HTTP faces on free ports; the models "plus", "minus" and "broken" built."""
    work = tmp_path_factory.mktemp("boto3")
    service = module_services([
        "up", "--data-dir", str(work / "data"), "--control-plane-port", "0", "--proxy-port", "0",
        "--control-plane-http-port", "0", "--proxy-http-port", "0",
        "--control-plane-metrics-port", "-1", "--proxy-metrics-port", "-1",
    ], timeout=120)
    for kind in ("plus", "minus", "broken"):
        build_model(work / f"{kind}.onnx", kind)
    key_id, secret = read_credentials(work / "data" / "credentials")
    assert service.ready["auth"] == "sigv4" and service.ready["credentials"] == str((work / "data" / "credentials").resolve())
    return {"ready": service.ready, "key_id": key_id, "secret": secret, "models": work}


def _client(up, service: str, *, key_id: str | None = None, secret: str | None = None, **config):
    """A boto3 client of `service` pointed at mve's HTTP face for it, signing with the data dir's key."""
    face = up["ready"]["proxy_http"] if service == "sagemaker-runtime" else up["ready"]["control_plane_http"]
    return boto3.client(
        service, endpoint_url=f"http://{face}", region_name=REGION,
        aws_access_key_id=key_id or up["key_id"], aws_secret_access_key=secret or up["secret"],
        config=Config(retries={"total_max_attempts": 1}, **config),
    )


@pytest.fixture(scope="module")
def sm(up):
    return _client(up, "sagemaker")


@pytest.fixture(scope="module")
def runtime(up):
    return _client(up, "sagemaker-runtime")


def _variant(name: str, model: str, weight: float = 1.0) -> dict:
    # SageMaker's instance type names work as they are (mve/control/instance_types.py).
    return {"VariantName": name, "ModelName": model, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large",
            "InitialVariantWeight": weight}


def _invoke(runtime, endpoint: str, **fields) -> tuple[dict, np.ndarray]:
    response = runtime.invoke_endpoint(EndpointName=endpoint, Body=npy(ROWS), ContentType="application/x-npy",
                                       Accept="application/x-npy", **fields)
    return response, np.load(io.BytesIO(response["Body"].read()))


def _until_routed(runtime, endpoint: str, **fields) -> dict:
    """The first answer of `endpoint` (the proxy learns a new table a moment after InService)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return _invoke(runtime, endpoint, **fields)[0]
        except ClientError as error:
            assert error.response["Error"]["Code"] == "ValidationError", error.response
            assert time.monotonic() < deadline, f"the proxy never routed {endpoint}"
            time.sleep(0.05)


def _split(runtime, endpoint: str, calls: int) -> Counter:
    """How many of `calls` invocations without a TargetVariant each variant answered (checking its answer)."""
    seen: Counter = Counter()
    for _ in range(calls):
        response, y = _invoke(runtime, endpoint)
        variant = response["InvokedProductionVariant"]
        np.testing.assert_array_equal(y, ROWS + 1 if variant == "Variant1" else ROWS - 1)
        seen[variant] += 1
    return seen


def _wait_weights(sm, runtime, endpoint: str, weights: dict[str, float]) -> None:
    """Until DescribeEndpoint shows `weights` InService and the proxy routes by them."""
    deadline = time.monotonic() + 30
    while True:
        described = sm.describe_endpoint(EndpointName=endpoint)
        current = {v["VariantName"]: v["CurrentWeight"] for v in described["ProductionVariants"]}
        if described["EndpointStatus"] == "InService" and current == weights:
            break
        assert time.monotonic() < deadline, f"weights never became {weights}: {described}"
        time.sleep(0.1)
    gone = [name for name, weight in weights.items() if weight == 0]
    while gone and _invoke(runtime, endpoint)[0]["InvokedProductionVariant"] in gone:
        assert time.monotonic() < deadline, "the proxy kept routing to a variant at weight 0"


def test_the_articles_flow_through_boto3(up, sm, runtime):
    models = up["models"]
    # Two models and a two-variant endpoint config, each variant at weight 1: a 50/50 split.
    for name, kind in (("model-a", "plus"), ("model-b", "minus")):
        created = sm.create_model(ModelName=name, PrimaryContainer={
            "Image": "onnxruntime", "ModelDataUrl": str(models / f"{kind}.onnx")})
        assert created["ModelArn"] == f"{ARN}:model/{name}"
    sm.create_endpoint_config(EndpointConfigName="ab-config",
                              ProductionVariants=[_variant("Variant1", "model-a"), _variant("Variant2", "model-b")])
    assert sm.create_endpoint(EndpointName="ab", EndpointConfigName="ab-config")["EndpointArn"] == f"{ARN}:endpoint/ab"
    sm.get_waiter("endpoint_in_service").wait(EndpointName="ab", WaiterConfig=FAST)
    _until_routed(runtime, "ab")

    # Invoke without a target: both variants answer, about half each.
    seen = _split(runtime, "ab", 60)
    assert set(seen) == {"Variant1", "Variant2"} and min(seen.values()) >= 10, seen  # p < 1e-5 by chance

    # A TargetVariant always lands on that variant.
    for variant, expected in (("Variant1", ROWS + 1), ("Variant2", ROWS - 1)):
        for _ in range(3):
            response, y = _invoke(runtime, "ab", TargetVariant=variant)
            assert response["InvokedProductionVariant"] == variant
            np.testing.assert_array_equal(y, expected)

    # CloudWatch has the invocations per variant (the proxy reports every second).
    cloudwatch = _client(up, "cloudwatch")
    deadline = time.monotonic() + 20
    while True:
        counts = {}
        for variant in ("Variant1", "Variant2"):
            points = cloudwatch.get_metric_statistics(
                Namespace="AWS/SageMaker", MetricName="Invocations", Statistics=["Sum"], Period=60,
                StartTime=datetime.now(timezone.utc) - timedelta(minutes=10), EndTime=datetime.now(timezone.utc),
                Dimensions=[{"Name": "EndpointName", "Value": "ab"}, {"Name": "VariantName", "Value": variant}],
            )["Datapoints"]
            counts[variant] = sum(p["Sum"] for p in points)
        if counts["Variant1"] >= seen["Variant1"] + 3 and counts["Variant2"] >= seen["Variant2"] + 3:
            break
        assert time.monotonic() < deadline, f"CloudWatch counts {counts} never reached the calls made {seen}"
        time.sleep(0.25)

    # Shift traffic: 25/75, then everything to Variant2.
    sm.update_endpoint_weights_and_capacities(EndpointName="ab", DesiredWeightsAndCapacities=[
        {"VariantName": "Variant1", "DesiredWeight": 25}, {"VariantName": "Variant2", "DesiredWeight": 75}])
    _wait_weights(sm, runtime, "ab", {"Variant1": 25.0, "Variant2": 75.0})
    sm.update_endpoint_weights_and_capacities(EndpointName="ab", DesiredWeightsAndCapacities=[
        {"VariantName": "Variant1", "DesiredWeight": 0}, {"VariantName": "Variant2", "DesiredWeight": 1}])
    _wait_weights(sm, runtime, "ab", {"Variant1": 0.0, "Variant2": 1.0})
    assert _split(runtime, "ab", 20) == Counter({"Variant2": 20})

    # Autoscaling as the article configures it: target tracking on invocations per instance.
    autoscaling = _client(up, "application-autoscaling")
    resource = "endpoint/ab/variant/Variant2"
    autoscaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource,
                                         ScalableDimension="sagemaker:variant:DesiredInstanceCount",
                                         MinCapacity=1, MaxCapacity=2)
    autoscaling.put_scaling_policy(
        PolicyName="invocations", ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount", PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 70.0, "ScaleInCooldown": 600, "ScaleOutCooldown": 300,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}})
    policies = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)
    assert [p["PolicyName"] for p in policies["ScalingPolicies"]] == ["invocations"]
    autoscaling.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource,
                                           ScalableDimension="sagemaker:variant:DesiredInstanceCount")

    # Describe, then delete with boto3's own waiter.
    described = sm.describe_endpoint(EndpointName="ab")
    assert described["EndpointStatus"] == "InService" and described["EndpointConfigName"] == "ab-config"
    assert [(v["VariantName"], v["CurrentWeight"], v["CurrentInstanceCount"]) for v in described["ProductionVariants"]] == [
        ("Variant1", 0.0, 1), ("Variant2", 1.0, 1)]
    assert described["ResponseMetadata"]["HTTPStatusCode"] == 200
    sm.delete_endpoint(EndpointName="ab")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="ab", WaiterConfig=FAST)
    sm.delete_endpoint_config(EndpointConfigName="ab-config")
    for name in ("model-a", "model-b"):
        sm.delete_model(ModelName=name)
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == []


def _service_error(call, **kwargs) -> dict:
    """The response of the ClientError that `call(**kwargs)` raises."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response


@pytest.mark.parametrize(
    ("operation", "params", "message"),
    [
        ("describe_endpoint", {"EndpointName": "nope"}, f'Could not find endpoint "{ARN}:endpoint/nope".'),
        ("delete_endpoint", {"EndpointName": "nope"}, f'Could not find endpoint "{ARN}:endpoint/nope".'),
        ("describe_model", {"ModelName": "nope"}, f'Could not find model "{ARN}:model/nope".'),
        ("delete_model", {"ModelName": "nope"}, f'Could not find model "{ARN}:model/nope".'),
        ("describe_endpoint_config", {"EndpointConfigName": "nope"},
         f'Could not find endpoint configuration "{ARN}:endpoint-config/nope".'),
        ("delete_endpoint_config", {"EndpointConfigName": "nope"},
         f'Could not find endpoint configuration "{ARN}:endpoint-config/nope".'),
        ("create_endpoint", {"EndpointName": "orphan", "EndpointConfigName": "nope"},
         f'Could not find endpoint configuration "{ARN}:endpoint-config/nope".'),
    ],
)
def test_a_missing_name_is_validation_exception_as_sagemaker_answers(sm, operation, params, message):
    with pytest.raises(ClientError) as caught:
        getattr(sm, operation)(**params)
    # SageMaker's service model does not model ValidationException: boto3 raises a plain ClientError.
    assert type(caught.value) is sm.exceptions.ClientError
    assert not isinstance(caught.value, sm.exceptions.ResourceNotFound)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert caught.value.response["Error"]["Message"] == message
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.fixture(scope="module")
def endpoints(up, sm, runtime):
    """Endpoint "pm" (Variant1 plus, Variant2 minus) and "broken" (the model that fails for 1 or 2 rows)."""
    models = up["models"]
    for kind in ("plus", "minus", "broken"):
        sm.create_model(ModelName=f"e-{kind}", PrimaryContainer={
            "Image": "onnxruntime", "ModelDataUrl": str(models / f"{kind}.onnx")})
    sm.create_endpoint_config(EndpointConfigName="pm",
                              ProductionVariants=[_variant("Variant1", "e-plus"), _variant("Variant2", "e-minus")])
    sm.create_endpoint_config(EndpointConfigName="broken", ProductionVariants=[_variant("Broken", "e-broken")])
    for name in ("pm", "broken"):
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    for name in ("pm", "broken"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST)
        _until_routed(runtime, name)
    return ("pm", "broken")


def test_invoking_a_missing_endpoint_is_the_runtimes_validation_error(runtime, endpoints):
    with pytest.raises(runtime.exceptions.ValidationError) as caught:
        runtime.invoke_endpoint(EndpointName="nope", Body=npy(ROWS), ContentType="application/x-npy")
    assert caught.value.response["Error"] == {"Code": "ValidationError",
                                              "Message": "Endpoint nope of account 000000000000 not found."}
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize(
    ("body", "content_type", "fields", "fragment"),
    [
        (npy(np.ones((2, 3), dtype=np.float32)), "application/x-npy", {}, "shape"),  # the model takes 2 columns
        (b"1,2\n3", "text/csv", {}, ""),
        (npy(ROWS), "application/x-npy", {"TargetVariant": "Variant9"}, "Variant Variant9 not found for endpoint pm"),
    ],
    ids=["wrong-shape", "ragged-csv", "unknown-variant"],
)
def test_input_the_model_rejects_is_the_runtimes_validation_error(runtime, endpoints, body, content_type, fields, fragment):
    with pytest.raises(runtime.exceptions.ValidationError) as caught:
        runtime.invoke_endpoint(EndpointName="pm", Body=body, ContentType=content_type, **fields)
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert fragment in caught.value.response["Error"]["Message"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_models_own_failure_is_model_error_with_an_http_original_status_code(runtime, endpoints):
    with pytest.raises(runtime.exceptions.ModelError) as caught:
        runtime.invoke_endpoint(EndpointName="broken", Body=npy(ROWS[:1]), ContentType="application/x-npy")
    response = caught.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 500 and isinstance(response["OriginalStatusCode"], int)
    assert "Reshape" in response["OriginalMessage"]  # ONNX Runtime's own words
    assert response["Error"]["Message"].startswith("Received server error (500) from model e-broken of variant Broken")
    # The same model answers 3 rows: the failure was the model's, for that input.
    _, y = _invoke(runtime, "broken")
    assert y.shape == (2, 3)


def test_a_bad_weight_is_validation_exception(sm, endpoints):
    response = _service_error(sm.update_endpoint_weights_and_capacities, EndpointName="pm", DesiredWeightsAndCapacities=[
        {"VariantName": "Variant1", "DesiredWeight": 0}, {"VariantName": "Variant2", "DesiredWeight": 0}])
    assert response["Error"]["Code"] == "ValidationException"
    assert "greater than 0" in response["Error"]["Message"]
    response = _service_error(sm.update_endpoint_weights_and_capacities, EndpointName="pm", DesiredWeightsAndCapacities=[
        {"VariantName": "Variant9", "DesiredWeight": 1}])
    assert response["Error"]["Code"] == "ValidationException" and "Variant9" in response["Error"]["Message"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_name_taken_is_validation_exception(sm, endpoints):
    response = _service_error(sm.create_endpoint, EndpointName="pm", EndpointConfigName="pm")
    assert response["Error"] == {"Code": "ValidationException",
                                 "Message": f'Cannot create already existing endpoint "{ARN}:endpoint/pm".'}


# ---------------------------------------------------------------- who may call


def _ten_minutes_ago(remove_tzinfo=True):
    moment = datetime.now(timezone.utc) - timedelta(minutes=10)
    return moment.replace(tzinfo=None) if remove_tzinfo else moment


def _call(service: str, client):
    if service == "sagemaker-runtime":
        return client.invoke_endpoint(EndpointName="pm", Body=npy(ROWS), ContentType="application/x-npy")
    return client.list_endpoints()


@pytest.mark.parametrize("service", ["sagemaker", "sagemaker-runtime"])
def test_a_correctly_signed_request_passes(up, endpoints, service):
    response = _call(service, _client(up, service))
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200


@pytest.mark.parametrize("service", ["sagemaker", "sagemaker-runtime"])
@pytest.mark.parametrize(
    ("case", "options", "code", "status"),
    [
        ("unsigned", {"signature_version": botocore.UNSIGNED}, "MissingAuthenticationTokenException", 403),
        ("wrong secret", {"secret": "not-the-secret"}, "InvalidSignatureException", 403),
        ("unknown key", {"key_id": "MVEKNOSUCHKEY0000000"}, "UnrecognizedClientException", 403),
    ],
)
def test_bad_callers_are_refused(up, endpoints, service, case, options, code, status):
    client = _client(up, service, **options)
    with pytest.raises(ClientError) as caught:
        _call(service, client)
    assert caught.value.response["Error"]["Code"] == code, caught.value.response["Error"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


@pytest.mark.parametrize("service", ["sagemaker", "sagemaker-runtime"])
def test_an_expired_signature_is_refused(up, endpoints, service):
    client = _client(up, service)
    with mock.patch("botocore.auth.get_current_datetime", _ten_minutes_ago):  # signed with a clock 10 minutes late
        with pytest.raises(ClientError) as caught:
            _call(service, client)
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert "Signature expired" in caught.value.response["Error"]["Message"]
    assert _call(service, client)["ResponseMetadata"]["HTTPStatusCode"] == 200  # the same client, on time, passes
