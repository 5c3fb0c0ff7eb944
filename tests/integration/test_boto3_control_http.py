"""The real boto3 against a real control plane's HTTP face (its own process, SigV4 required).

One control plane (``--port 0 --http-port 0``, auth on) serves the module; the access key boto3
signs with is created with mve's SDK (``mve.client("iam").create_access_key``). The flow is the article's, through
``boto3.client("sagemaker" | "application-autoscaling" | "cloudwatch", endpoint_url=...)`` alone:
models, a two-variant config, endpoints, botocore's own waiters, list paginators, weights, scaling
targets and policies, metrics and alarms (CloudWatch over both protocols it speaks), deletion, and
every error as the `ClientError` and code boto3 users catch.
"""

from __future__ import annotations

import http.client
import json
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import boto3
import botocore.model
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import mve
from tiny_models import build_model

pytestmark = pytest.mark.integration

ENDPOINT = "ab"
WAIT = {"Delay": 0.5, "MaxAttempts": 240}
# No retries: an error must arrive once, classified as AWS would (a 4xx is never retried anyway).
ONE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1})


@pytest.fixture(scope="module")
def control_plane(module_services, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cp")
    service = module_services([
        "control-plane", "--data-dir", str(data_dir), "--port", "0", "--http-port", "0", "--auth", "sigv4",
        "--drain-seconds", "0", "--utilization-interval", "0.2",
    ])
    assert service.ready["http_address"].startswith("127.0.0.1:")
    return service


@pytest.fixture(scope="module")
def access_key(control_plane):
    with mve.client("iam", address=control_plane.address) as iam:
        created = iam.create_access_key(Description="boto3 integration test")["AccessKey"]
    return created["AccessKeyId"], created["SecretAccessKey"]


@contextmanager
def _protocol_first(protocol: str | None):
    """botocore takes a service's first protocol it supports; put `protocol` first while a client is made."""
    saved = botocore.model.PRIORITY_ORDERED_SUPPORTED_PROTOCOLS
    if protocol is not None:
        botocore.model.PRIORITY_ORDERED_SUPPORTED_PROTOCOLS = (protocol, *[p for p in saved if p != protocol])
    try:
        yield
    finally:
        botocore.model.PRIORITY_ORDERED_SUPPORTED_PROTOCOLS = saved


@pytest.fixture(scope="module")
def boto(control_plane, access_key):
    """``boto(service, protocol=None, secret=None, key_id=None)``: a boto3 client of the HTTP face."""

    def make(service: str, protocol: str | None = None, secret: str | None = None, key_id: str | None = None):
        with _protocol_first(protocol):
            client = boto3.client(
                service, endpoint_url=f"http://{control_plane.ready['http_address']}", region_name="us-east-1",
                aws_access_key_id=key_id or access_key[0], aws_secret_access_key=secret or access_key[1],
                config=ONE_ATTEMPT,
            )
        if protocol is not None:
            assert client.meta.service_model.resolved_protocol == protocol
        return client

    return make


@pytest.fixture(scope="module")
def sm(boto):
    return boto("sagemaker")


def _variant(name: str, model: str, weight: float) -> dict:
    return {"VariantName": name, "ModelName": model, "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
            "InitialVariantWeight": weight, "ContainerStartupHealthCheckTimeoutInSeconds": 60}


@pytest.fixture(scope="module")
def endpoint(sm, tmp_path_factory):
    """Models m-a and m-b, config ab-config (A 0.5 / B 0.5), endpoints ab and solo, both InService."""
    models = tmp_path_factory.mktemp("models")
    for name in ("m-a", "m-b"):
        path = models / f"{name}.onnx"
        build_model(path, "plus")
        answer = sm.create_model(ModelName=name, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(path)},
                                 ExecutionRoleArn="arn:aws:iam::123456789012:role/ignored")
        assert answer["ModelArn"].endswith(f"model/{name}")
    sm.create_endpoint_config(EndpointConfigName="ab-config",
                              ProductionVariants=[_variant("A", "m-a", 0.5), _variant("B", "m-b", 0.5)])
    sm.create_endpoint_config(EndpointConfigName="solo-config", ProductionVariants=[_variant("A", "m-a", 1.0)])
    answer = sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="ab-config")
    assert answer["EndpointArn"].endswith(f"endpoint/{ENDPOINT}")
    sm.create_endpoint(EndpointName="solo", EndpointConfigName="solo-config")
    waiter = sm.get_waiter("endpoint_in_service")
    waiter.wait(EndpointName=ENDPOINT, WaiterConfig=WAIT)
    waiter.wait(EndpointName="solo", WaiterConfig=WAIT)
    return ENDPOINT


def test_describe_endpoint_after_botocores_waiter(sm, endpoint):
    answer = sm.describe_endpoint(EndpointName=endpoint)
    assert answer["EndpointStatus"] == "InService"
    assert isinstance(answer["CreationTime"], datetime) and answer["CreationTime"].tzinfo is not None
    assert abs(answer["CreationTime"] - datetime.now(timezone.utc)) < timedelta(minutes=10)
    variants = {v["VariantName"]: v for v in answer["ProductionVariants"]}
    assert set(variants) == {"A", "B"}
    assert variants["A"]["CurrentWeight"] == 0.5 and variants["B"]["CurrentInstanceCount"] == 1
    config = sm.describe_endpoint_config(EndpointConfigName="ab-config")
    assert [v["InstanceType"] for v in config["ProductionVariants"]] == ["ml.cpu.small", "ml.cpu.small"]
    model = sm.describe_model(ModelName="m-a")
    assert model["PrimaryContainer"]["Image"] == "onnxruntime"


def test_list_paginators(sm, endpoint):
    pages = list(sm.get_paginator("list_endpoints").paginate(PaginationConfig={"PageSize": 1}))
    assert len(pages) == 2
    assert sorted(e["EndpointName"] for page in pages for e in page["Endpoints"]) == ["ab", "solo"]
    models = [m["ModelName"] for page in sm.get_paginator("list_models").paginate(PaginationConfig={"PageSize": 1})
              for m in page["Models"]]
    assert sorted(models) == ["m-a", "m-b"]
    configs = sm.list_endpoint_configs(NameContains="solo")["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in configs] == ["solo-config"]


def test_update_weights(sm, endpoint):
    sm.update_endpoint_weights_and_capacities(
        EndpointName=endpoint, DesiredWeightsAndCapacities=[{"VariantName": "A", "DesiredWeight": 0.2}])
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    variants = {v["VariantName"]: v for v in sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]}
    assert variants["A"]["DesiredWeight"] == pytest.approx(0.2)
    assert variants["B"]["DesiredWeight"] == pytest.approx(0.5)


def test_control_plane_errors_are_boto3_client_errors(sm, endpoint):
    cases = [
        (lambda: sm.describe_endpoint(EndpointName="missing"), "ValidationException", "Could not find endpoint"),
        (lambda: sm.update_endpoint_weights_and_capacities(
            EndpointName=endpoint, DesiredWeightsAndCapacities=[{"VariantName": "Nope", "DesiredWeight": 1.0}]),
         "ValidationException", "Nope"),
        (lambda: sm.create_endpoint_config(
            EndpointConfigName="dup", ProductionVariants=[_variant("A", "m-a", 1), _variant("A", "m-b", 1)]),
         "ValidationException", "A"),
        (lambda: sm.create_endpoint(EndpointName=endpoint, EndpointConfigName="ab-config"),
         "ValidationException", endpoint),
        (lambda: sm.create_model(ModelName="m-c", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": "x"},
                                 VpcConfig={"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]}),
         "ValidationException", "VpcConfig"),
        (lambda: sm.list_training_jobs(), "UnknownOperationException", "ListTrainingJobs"),
    ]
    for call, code, fragment in cases:
        with pytest.raises(ClientError) as caught:
            call()
        error, metadata = caught.value.response["Error"], caught.value.response["ResponseMetadata"]
        assert (error["Code"], fragment in error["Message"]) == (code, True), error
        assert metadata["HTTPStatusCode"] == 400 and metadata["RetryAttempts"] == 0
        assert metadata["RequestId"]


def test_application_autoscaling(boto, endpoint):
    aas = boto("application-autoscaling")
    target = {"ServiceNamespace": "sagemaker", "ResourceId": f"endpoint/{endpoint}/variant/B",
              "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
    aas.register_scalable_target(**target, MinCapacity=1, MaxCapacity=2)
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [
        (target["ResourceId"], 1, 2)]
    assert isinstance(targets[0]["CreationTime"], datetime)
    aas.put_scaling_policy(
        PolicyName="invocations", PolicyType="TargetTrackingScaling", **target,
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 1000.0, "ScaleInCooldown": 300, "ScaleOutCooldown": 60,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        },
    )
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert [p["PolicyName"] for p in policies] == ["invocations"]
    assert policies[0]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 1000.0
    with pytest.raises(ClientError) as caught:
        aas.register_scalable_target(**{**target, "ResourceId": "endpoint/missing/variant/B"},
                                     MinCapacity=1, MaxCapacity=2)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    aas.delete_scaling_policy(PolicyName="invocations", **target)
    aas.deregister_scalable_target(**target)
    with pytest.raises(aas.exceptions.ObjectNotFoundException):
        aas.deregister_scalable_target(**target)


@pytest.mark.parametrize("protocol", ["json", "smithy-rpc-v2-cbor"])
def test_cloudwatch(boto, endpoint, protocol):
    cw = boto("cloudwatch", protocol)
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "A"}]

    def utilization():
        now = datetime.now(timezone.utc)
        return cw.get_metric_statistics(
            Namespace="/aws/sagemaker/Endpoints", MetricName="CPUUtilization", Dimensions=dimensions,
            StartTime=now - timedelta(minutes=5), EndTime=now + timedelta(minutes=1), Period=60,
            Statistics=["Average", "SampleCount"],
        )["Datapoints"]

    deadline = time.monotonic() + 30
    points = utilization()
    while not points and time.monotonic() < deadline:
        time.sleep(0.5)
        points = utilization()
    assert points, "no CPUUtilization datapoint within 30 s"
    assert points[0]["SampleCount"] >= 1 and isinstance(points[0]["Timestamp"], datetime)
    names = {m["MetricName"] for m in cw.list_metrics(Namespace="/aws/sagemaker/Endpoints")["Metrics"]}
    assert "CPUUtilization" in names
    alarm = f"ab-invocations-{protocol}"
    cw.put_metric_alarm(
        AlarmName=alarm, Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors", Dimensions=dimensions,
        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=5.0, ComparisonOperator="GreaterThanThreshold",
    )
    cw.get_waiter("alarm_exists").wait(AlarmNames=[alarm], WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    alarms = [a for page in cw.get_paginator("describe_alarms").paginate(AlarmNames=[alarm]) for a in page["MetricAlarms"]]
    assert [(a["AlarmName"], a["Threshold"]) for a in alarms] == [(alarm, 5.0)]
    assert isinstance(alarms[0]["StateUpdatedTimestamp"], datetime)
    with pytest.raises(cw.exceptions.InvalidParameterValueException) as caught:
        cw.get_metric_statistics(Namespace="AWS/SageMaker", MetricName="Invocations", Dimensions=dimensions,
                                 StartTime=datetime.now(timezone.utc) - timedelta(minutes=5),
                                 EndTime=datetime.now(timezone.utc), Period=7, Statistics=["Sum"])
    assert caught.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert caught.value.response["ResponseMetadata"]["RetryAttempts"] == 0
    cw.delete_alarms(AlarmNames=[alarm])
    assert cw.describe_alarms(AlarmNames=[alarm])["MetricAlarms"] == []


def test_signatures_are_checked_on_every_protocol(control_plane, boto, access_key):
    with pytest.raises(ClientError) as caught:
        boto("sagemaker", secret="not-the-secret").list_models()
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as caught:
        boto("application-autoscaling", key_id="AKIDUNKNOWN0000000000").describe_scalable_targets(
            ServiceNamespace="sagemaker")
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"
    for protocol in ("json", "smithy-rpc-v2-cbor"):
        with pytest.raises(ClientError) as caught:
            boto("cloudwatch", protocol, secret="not-the-secret").list_metrics()
        assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"  # CloudWatch's query name
    host, port = control_plane.ready["http_address"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", "/", body=b"{}", headers={"X-Amz-Target": "SageMaker.ListModels",
                                                            "Content-Type": "application/x-amz-json-1.1"})
        response = connection.getresponse()
        assert response.status == 403
        assert json.loads(response.read())["__type"] == "MissingAuthenticationTokenException"
    finally:
        connection.close()


def test_delete_with_botocores_endpoint_deleted_waiter(sm, endpoint):
    # Last in the module: the other tests use the endpoint.
    sm.delete_endpoint(EndpointName="solo")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="solo", WaiterConfig=WAIT)
    sm.delete_endpoint(EndpointName=endpoint)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    for config in ("ab-config", "solo-config"):
        sm.delete_endpoint_config(EndpointConfigName=config)
    for model in ("m-a", "m-b"):
        sm.delete_model(ModelName=model)
    assert sm.list_endpoints()["Endpoints"] == []
    with pytest.raises(ClientError) as caught:
        sm.delete_endpoint(EndpointName=endpoint)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
