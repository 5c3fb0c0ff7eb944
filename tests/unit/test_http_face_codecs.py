"""The control plane's HTTP face against the real boto3, with a fake SDK behind it.

The face runs on loopback in a background event loop; boto3 clients (the real serializers,
signers, parsers, retry handlers and error factories) call it. The SDK clients the face calls are
fakes that record the params they get and answer canned dicts or mve's SDK exceptions, so these
tests pin the wire: what botocore sends arrives as the same params, what mve answers is what boto3
returns, and every error has the code, class, status and retry behaviour AWS gives it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import boto3
import botocore.model
import cbor2
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError as BotoClientError

from mve.control.http_face import HttpFace
from mve.control.http_operations import OperationFailure, load_faces
from mve.control.http_protocols import ErrorReply
from mve.sdk.exceptions import ClientError, EndpointConnectionError, ParamValidationError, response_metadata

T0 = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)
NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})


class FakeClient:
    """An SDK client: records (method, params), answers `answers[method]` (a dict, or an exception to raise)."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.answers: dict = {}
        self.gate: threading.Event | None = None  # when set, calls wait for it (in-flight bound tests)

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(**params):
            self.calls.append((method, params))
            if self.gate is not None:
                self.gate.wait(10)
            answer = self.answers.get(method, {})
            if isinstance(answer, BaseException):
                raise answer
            return {**answer, "ResponseMetadata": response_metadata("sdk-request-id")}

        return call

    def close(self) -> None:
        pass


class FaceThread:
    """An `HttpFace` served from its own event loop thread."""

    def __init__(self, faces, **options):
        self.clients = {name: FakeClient() for name in faces}
        self.face = HttpFace("127.0.0.1:1", faces=faces, clients=self.clients, **options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.address = self._run(self.face.start("127.0.0.1", 0))

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def stop(self) -> None:
        self._run(self.face.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@pytest.fixture(scope="module")
def faces():
    return load_faces()


@pytest.fixture(scope="module")
def server(faces):
    running = FaceThread(faces)
    yield running
    running.stop()


@pytest.fixture
def fakes(server):
    for client in server.clients.values():
        client.calls.clear()
        client.answers.clear()
    return server.clients


@contextmanager
def _protocol_first(protocol: str | None):
    """botocore picks a service's protocol from its priority list; put `protocol` first while a client is made."""
    if protocol is None:
        yield
        return
    saved = botocore.model.PRIORITY_ORDERED_SUPPORTED_PROTOCOLS
    botocore.model.PRIORITY_ORDERED_SUPPORTED_PROTOCOLS = (protocol, *[p for p in saved if p != protocol])
    try:
        yield
    finally:
        botocore.model.PRIORITY_ORDERED_SUPPORTED_PROTOCOLS = saved


def boto(server, service: str, protocol: str | None = None, config: Config = NO_RETRY, secret: str = "secret"):
    with _protocol_first(protocol):
        client = boto3.client(
            service, endpoint_url=server.url, region_name="us-east-1",
            aws_access_key_id="AKIDMVETEST", aws_secret_access_key=secret, config=config,
        )
        assert client.meta.service_model.resolved_protocol == (protocol or client.meta.service_model.resolved_protocol)
    return client


def raw_post(server, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    host, port = server.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _error(code: str, message: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": response_metadata("x", status)},
                       "Op")


# --- what botocore sends arrives as the params boto3 was given --------------------------------------


def test_sagemaker_json_request_reaches_the_sdk_as_boto3_params(server, fakes):
    sm = boto(server, "sagemaker")
    variants = [
        {"VariantName": "A", "ModelName": "m1", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large",
         "InitialVariantWeight": 0.25, "RoutingConfig": {"RoutingStrategy": "RANDOM"}},
        {"VariantName": "B", "ModelName": "m2", "InitialInstanceCount": 2, "InstanceType": "ml.m5.large",
         "InitialVariantWeight": 0.75},
    ]
    fakes["sagemaker"].answers["create_endpoint_config"] = {"EndpointConfigArn": "arn:mve:ec/ab"}
    answer = sm.create_endpoint_config(EndpointConfigName="ab", ProductionVariants=variants,
                                       Tags=[{"Key": "team", "Value": "ml"}])
    assert answer["EndpointConfigArn"] == "arn:mve:ec/ab"
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert answer["ResponseMetadata"]["RequestId"] == "sdk-request-id"
    assert fakes["sagemaker"].calls == [
        ("create_endpoint_config", {"EndpointConfigName": "ab", "ProductionVariants": variants,
                                    "Tags": [{"Key": "team", "Value": "ml"}]})
    ]


def test_application_autoscaling_is_routed_by_its_target_prefix(server, fakes):
    aas = boto(server, "application-autoscaling")
    fakes["application-autoscaling"].answers["register_scalable_target"] = {"ScalableTargetARN": "arn:t"}
    answer = aas.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId="endpoint/ab/variant/A",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=1, MaxCapacity=3,
    )
    assert answer["ScalableTargetARN"] == "arn:t"
    assert fakes["application-autoscaling"].calls[0] == ("register_scalable_target", {
        "ServiceNamespace": "sagemaker", "ResourceId": "endpoint/ab/variant/A",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount", "MinCapacity": 1, "MaxCapacity": 3,
    })
    assert fakes["sagemaker"].calls == []


@pytest.mark.parametrize("protocol", ["json", "smithy-rpc-v2-cbor"])
def test_cloudwatch_timestamps_arrive_as_utc_datetimes(server, fakes, protocol):
    cw = boto(server, "cloudwatch", protocol)
    cw.get_metric_statistics(
        Namespace="AWS/SageMaker", MetricName="Invocations", Dimensions=[{"Name": "EndpointName", "Value": "ab"}],
        StartTime=T0, EndTime=T0 + timedelta(minutes=5), Period=60, Statistics=["Sum", "SampleCount"],
    )
    (method, params), = fakes["cloudwatch"].calls
    assert method == "get_metric_statistics"
    assert params["StartTime"] == T0 and params["StartTime"].tzinfo is not None
    assert params["EndTime"] == T0 + timedelta(minutes=5)
    assert params["Period"] == 60 and params["Statistics"] == ["Sum", "SampleCount"]


def test_update_endpoint_deployment_config_arrives_whole(server, fakes):
    deployment = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 30,
                                            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20}},
            "TerminationWaitInSeconds": 0, "MaximumExecutionTimeoutInSeconds": 900,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "errors"}]},
    }
    fakes["sagemaker"].answers["update_endpoint"] = {"EndpointArn": "arn:e"}
    boto(server, "sagemaker").update_endpoint(EndpointName="ab", EndpointConfigName="ab-2", DeploymentConfig=deployment,
                                              RetainAllVariantProperties=False)
    assert fakes["sagemaker"].calls == [("update_endpoint", {
        "EndpointName": "ab", "EndpointConfigName": "ab-2", "DeploymentConfig": deployment,
        "RetainAllVariantProperties": False})]


# --- what mve answers is what boto3 returns ---------------------------------------------------------


def test_describe_endpoint_answer_parses_with_datetimes_and_only_modeled_members(server, fakes):
    fakes["sagemaker"].answers["describe_endpoint"] = {
        "EndpointName": "ab", "EndpointArn": "arn:e", "EndpointConfigName": "ab", "EndpointStatus": "InService",
        "CreationTime": T0, "LastModifiedTime": T0 + timedelta(seconds=3),
        "ProductionVariants": [{
            "VariantName": "A", "CurrentWeight": 1, "DesiredWeight": 1.0, "CurrentInstanceCount": 1,
            "DesiredInstanceCount": 1, "Batching": {"MaxBatchSize": 8},  # mve's own: not in botocore's shape
            "VariantStatus": [{"Status": "Baking", "StartTime": T0}],
        }],
        "MveExtra": "not in the shape",
    }
    answer = boto(server, "sagemaker").describe_endpoint(EndpointName="ab")
    assert answer["CreationTime"] == T0  # sub-second precision kept
    assert answer["LastModifiedTime"] == T0 + timedelta(seconds=3)
    variant = answer["ProductionVariants"][0]
    assert variant["CurrentWeight"] == 1.0 and isinstance(variant["CurrentWeight"], float)
    assert variant["VariantStatus"] == [{"Status": "Baking", "StartTime": T0}]
    assert "Batching" not in variant and "MveExtra" not in answer


def test_list_endpoints_paginator_follows_next_token(server, fakes):
    pages = iter([
        {"Endpoints": [{"EndpointName": "a", "EndpointArn": "x", "CreationTime": T0, "LastModifiedTime": T0,
                        "EndpointStatus": "InService"}], "NextToken": "t1"},
        {"Endpoints": [{"EndpointName": "b", "EndpointArn": "y", "CreationTime": T0, "LastModifiedTime": T0,
                        "EndpointStatus": "Creating"}]},
    ])
    client = fakes["sagemaker"]
    original = client.__getattr__("list_endpoints")

    def list_endpoints(**params):
        client.answers["list_endpoints"] = next(pages)
        return original(**params)

    client.__dict__["list_endpoints"] = list_endpoints
    try:
        sm = boto(server, "sagemaker")
        names = [e["EndpointName"] for page in sm.get_paginator("list_endpoints").paginate(PaginationConfig={"PageSize": 1})
                 for e in page["Endpoints"]]
    finally:
        del client.__dict__["list_endpoints"]
    assert names == ["a", "b"]
    assert [params for _, params in client.calls] == [{"MaxResults": 1}, {"MaxResults": 1, "NextToken": "t1"}]


@pytest.mark.parametrize("protocol", ["json", "smithy-rpc-v2-cbor"])
def test_cloudwatch_metric_data_round_trips(server, fakes, protocol):
    fakes["cloudwatch"].answers["get_metric_data"] = {
        "MetricDataResults": [{"Id": "q1", "Label": "Invocations", "Timestamps": [T0, T0 + timedelta(minutes=1)],
                               "Values": [3, 4.5], "StatusCode": "Complete"}],
        "Messages": [],
    }
    answer = boto(server, "cloudwatch", protocol).get_metric_data(
        MetricDataQueries=[{"Id": "q1", "MetricStat": {
            "Metric": {"Namespace": "AWS/SageMaker", "MetricName": "Invocations"}, "Period": 60, "Stat": "Sum"}}],
        StartTime=T0, EndTime=T0 + timedelta(minutes=2),
    )
    result = answer["MetricDataResults"][0]
    assert result["Timestamps"] == [T0, T0 + timedelta(minutes=1)]
    assert result["Values"] == [3.0, 4.5]
    (_, params), = fakes["cloudwatch"].calls
    assert params["MetricDataQueries"][0]["MetricStat"]["Period"] == 60


def test_cbor_answers_carry_the_smithy_protocol_header(server, fakes):
    status, headers, body = raw_post(
        server, "/service/GraniteServiceVersion20100801/operation/ListMetrics", cbor2.dumps({}),
        {"smithy-protocol": "rpc-v2-cbor", "Content-Type": "application/cbor"},
    )
    assert status == 200
    assert headers["smithy-protocol"] == "rpc-v2-cbor" and headers["content-type"] == "application/cbor"
    assert cbor2.loads(body) == {}


# --- errors: code, class, status, retries -----------------------------------------------------------


def test_a_sagemaker_error_is_boto3s_class_with_its_code_and_is_not_retried(server, fakes):
    fakes["sagemaker"].answers["describe_endpoint"] = _error("ValidationException", 'Could not find endpoint "x".')
    sm = boto(server, "sagemaker", config=Config(retries={"mode": "standard", "total_max_attempts": 3}))
    with pytest.raises(BotoClientError) as caught:
        sm.describe_endpoint(EndpointName="x")
    response = caught.value.response
    assert response["Error"] == {"Code": "ValidationException", "Message": 'Could not find endpoint "x".'}
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["ResponseMetadata"]["RetryAttempts"] == 0
    assert len(fakes["sagemaker"].calls) == 1


def test_a_modeled_sagemaker_error_gets_its_exception_class(server, fakes):
    fakes["sagemaker"].answers["delete_model"] = _error("ResourceInUse", "model m is used by config c")
    sm = boto(server, "sagemaker")
    with pytest.raises(sm.exceptions.ResourceInUse):
        sm.delete_model(ModelName="m")


def test_autoscaling_errors_get_boto3s_classes(server, fakes):
    fakes["application-autoscaling"].answers["deregister_scalable_target"] = _error(
        "ObjectNotFoundException", "No scalable target registered")
    aas = boto(server, "application-autoscaling")
    with pytest.raises(aas.exceptions.ObjectNotFoundException) as caught:
        aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId="endpoint/a/variant/b",
                                       ScalableDimension="sagemaker:variant:DesiredInstanceCount")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_statuses_come_from_mves_error_table_and_agree_with_botocores_models(faces):
    from mve.errors import ERRORS

    assert faces["application-autoscaling"].status_for("InternalServiceException") == 500
    assert faces["cloudwatch"].status_for("ResourceNotFound") == 404
    assert faces["sagemaker"].status_for("ServiceUnavailable") == 503
    checked = 0
    for row in ERRORS:
        face = faces.get(row.service)
        shape = face.model.shape_for_error_code(row.name) if face is not None else None
        modeled = shape.metadata.get("error", {}).get("httpStatusCode") if shape is not None else None
        if modeled:
            assert face.status_for(row.name) == modeled, row
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("protocol", ["json", "smithy-rpc-v2-cbor"])
def test_cloudwatch_errors_use_the_query_codes_boto3_expects(server, fakes, protocol):
    fakes["cloudwatch"].answers["get_metric_statistics"] = _error("InvalidParameterValue", "Period must be 60")
    cw = boto(server, "cloudwatch", protocol)
    with pytest.raises(cw.exceptions.InvalidParameterValueException) as caught:
        cw.get_metric_statistics(Namespace="AWS/SageMaker", MetricName="Invocations", StartTime=T0, EndTime=T0,
                                 Period=7, Statistics=["Sum"])
    error = caught.value.response["Error"]
    assert error["Code"] == "InvalidParameterValue" and error["Message"] == "Period must be 60"
    assert error["Type"] == "Sender"
    headers = caught.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-query-error"] == "InvalidParameterValue;Sender"


def test_internal_failures_are_500_and_botocore_retries_them(server, fakes):
    fakes["sagemaker"].answers["list_models"] = _error("InternalFailure", "internal failure: KeyError", 500)
    sm = boto(server, "sagemaker", config=Config(retries={"mode": "standard", "total_max_attempts": 2}))
    with pytest.raises(BotoClientError) as caught:
        sm.list_models()
    assert caught.value.response["Error"]["Code"] == "InternalFailure"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert caught.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert len(fakes["sagemaker"].calls) == 2


def test_sdk_parameter_validation_is_a_validation_exception(server, fakes):
    fakes["sagemaker"].answers["create_model"] = ParamValidationError(
        'Unknown parameter in input: "VpcConfig", must be one of: ModelName, PrimaryContainer')
    sm = boto(server, "sagemaker")
    with pytest.raises(BotoClientError) as caught:
        sm.create_model(ModelName="m", PrimaryContainer={"Image": "onnxruntime"},
                        VpcConfig={"SecurityGroupIds": ["sg-1"], "Subnets": ["s-1"]})
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "VpcConfig" in caught.value.response["Error"]["Message"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_control_plane_unreachable_is_service_unavailable(server, fakes):
    fakes["sagemaker"].answers["list_models"] = EndpointConnectionError("127.0.0.1:1", "refused")
    with pytest.raises(BotoClientError) as caught:
        boto(server, "sagemaker").list_models()
    assert caught.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_an_unexpected_exception_is_an_internal_failure(server, fakes):
    fakes["sagemaker"].answers["list_models"] = RuntimeError("bug")
    with pytest.raises(BotoClientError) as caught:
        boto(server, "sagemaker").list_models()
    assert caught.value.response["Error"] == {"Code": "InternalFailure", "Message": "internal failure"}
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_an_operation_mve_does_not_implement_is_named(server, fakes):
    sm = boto(server, "sagemaker")
    with pytest.raises(BotoClientError) as caught:
        sm.list_training_jobs()
    error = caught.value.response["Error"]
    assert error["Code"] == "UnknownOperationException"
    assert "ListTrainingJobs" in error["Message"] and "mve does not implement" in error["Message"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert fakes["sagemaker"].calls == []


def test_an_unimplemented_cbor_operation_is_404(server, fakes):
    cw = boto(server, "cloudwatch", "smithy-rpc-v2-cbor")
    with pytest.raises(BotoClientError) as caught:
        cw.list_dashboards()
    assert caught.value.response["Error"]["Code"] == "UnknownOperationException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


# --- the wire, byte by byte -------------------------------------------------------------------------


JSON_HEADERS = {"X-Amz-Target": "SageMaker.ListModels", "Content-Type": "application/x-amz-json-1.1"}


@pytest.mark.parametrize("body", [b'{"MaxResults": ', b"[]", b'"text"', b"[" * 100_000])
def test_bad_json_is_a_serialization_exception(server, fakes, body):
    status, headers, answer = raw_post(server, "/", body, JSON_HEADERS)
    assert status == 400
    assert json.loads(answer)["__type"] == "SerializationException"
    assert headers["content-type"] == "application/x-amz-json-1.1" and headers["x-amzn-requestid"]
    assert fakes["sagemaker"].calls == []


@pytest.mark.parametrize("body", [b"\xff\xff", cbor2.dumps([1]), b"\x81" * 10_000 + b"\x00", cbor2.dumps({1: "x"})])
def test_bad_cbor_is_a_serialization_exception(server, fakes, body):
    status, headers, answer = raw_post(
        server, "/service/GraniteServiceVersion20100801/operation/ListMetrics", body,
        {"smithy-protocol": "rpc-v2-cbor", "Content-Type": "application/cbor"},
    )
    assert status == 400
    assert cbor2.loads(answer)["__type"] == "SerializationException"
    assert fakes["cloudwatch"].calls == []


def test_a_bad_base64_blob_is_a_serialization_exception(faces):
    protocol = faces["sagemaker"].protocols["json"]
    shape = botocore.model.ServiceModel({
        "metadata": {"protocol": "json", "jsonVersion": "1.1", "targetPrefix": "T"},
        "operations": {"Op": {"name": "Op", "http": {"method": "POST", "requestUri": "/"}, "input": {"shape": "In"}}},
        "shapes": {"In": {"type": "structure", "members": {"Body": {"shape": "B"}}}, "B": {"type": "blob"}},
    }).operation_model("Op")
    assert protocol.decode_params(b'{"Body": "aGk="}', shape) == {"Body": b"hi"}
    with pytest.raises(Exception, match="base64"):
        protocol.decode_params(b'{"Body": "not base64!"}', shape)


@pytest.mark.parametrize("target", ["", "Nope.ListModels", "SageMaker", "GraniteServiceVersion20100801x.ListMetrics"])
def test_an_unknown_target_is_an_unknown_operation(server, target):
    headers = {"Content-Type": "application/x-amz-json-1.1", **({"X-Amz-Target": target} if target else {})}
    status, _, answer = raw_post(server, "/", b"{}", headers)
    assert status == 400
    assert json.loads(answer)["__type"] == "UnknownOperationException"


def test_an_unknown_path_is_404(server):
    status, _, answer = raw_post(server, "/2015-05-01/things", b"{}", {"Content-Type": "application/json"})
    assert status == 404
    assert json.loads(answer)["__type"] == "UnknownOperationException"


def test_the_query_protocol_is_refused_in_xml(server):
    status, headers, answer = raw_post(
        server, "/", b"Action=ListMetrics&Version=2010-08-01", {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400
    assert headers["content-type"].startswith("text/xml")
    assert b"<Code>UnsupportedProtocol</Code>" in answer and b"query protocol" in answer


def test_a_body_over_6_mb_is_refused_with_413(server, fakes):
    body = b'{"NameContains": "' + b"x" * (6 * 1024 * 1024) + b'"}'
    status, _, answer = raw_post(server, "/", body, JSON_HEADERS)
    assert status == 413
    assert json.loads(answer)["__type"] == "RequestEntityTooLarge"
    assert fakes["sagemaker"].calls == []


def test_calls_past_the_in_flight_bound_are_throttled(faces):
    running = FaceThread(faces, max_in_flight=1, workers=1)
    try:
        gate = threading.Event()
        running.clients["sagemaker"].gate = gate
        first = threading.Thread(target=raw_post, args=(running, "/", b"{}", JSON_HEADERS))
        first.start()
        try:
            deadline = datetime.now() + timedelta(seconds=10)
            while not running.clients["sagemaker"].calls and datetime.now() < deadline:
                gate.wait(0.01)
            status, _, answer = raw_post(running, "/", b"{}", JSON_HEADERS)
        finally:
            gate.set()
            first.join(10)
        assert status == 400
        assert json.loads(answer)["__type"] == "ThrottlingException"
        assert len(running.clients["sagemaker"].calls) == 1
    finally:
        running.stop()


# --- the auth hook ----------------------------------------------------------------------------------


def _refuse_unsigned(request, body):
    async def check():
        if "Authorization" not in request.headers:
            raise OperationFailure(ErrorReply("MissingAuthenticationTokenException", "Missing Authentication Token", 403,
                                              query_code="MissingAuthenticationToken"))
        return "AKID"

    return check()


def test_the_authenticator_sees_every_request_and_its_refusal_is_in_each_protocol(faces):
    running = FaceThread(faces, authenticate=_refuse_unsigned)
    try:
        assert boto(running, "sagemaker").list_models()["ResponseMetadata"]["HTTPStatusCode"] == 200
        status, _, answer = raw_post(running, "/", b"{}", JSON_HEADERS)
        assert status == 403 and json.loads(answer)["__type"] == "MissingAuthenticationTokenException"
        status, _, answer = raw_post(running, "/", b"{}", {"X-Amz-Target": "Nope.X"})  # unknown, still checked first
        assert status == 403
        status, headers, answer = raw_post(
            running, "/service/GraniteServiceVersion20100801/operation/ListMetrics", cbor2.dumps({}),
            {"smithy-protocol": "rpc-v2-cbor"})
        assert status == 403 and cbor2.loads(answer)["__type"] == "MissingAuthenticationTokenException"
        assert headers["x-amzn-query-error"] == "MissingAuthenticationToken;Sender"
        assert [m for m, _ in running.clients["sagemaker"].calls] == ["list_models"]
        assert running.clients["cloudwatch"].calls == []
    finally:
        running.stop()
