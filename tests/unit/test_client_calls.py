"""The SDK against an in-test gRPC server: response shapes, error names, connection failures."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from datetime import datetime, timezone

import grpc
import pytest
from google.protobuf import timestamp_pb2

import mve
from mve._proto import control_pb2 as pb
from mve._proto import control_pb2_grpc, runtime_pb2, runtime_pb2_grpc
from mve.sdk import ClientError, EndpointConnectionError, ReadTimeoutError
import botocore.exceptions

from mve.errors import RUNTIME, ModelError, NotFound, ResourceAlreadyExists, ValidationError, to_status

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


class FakeControl(control_pb2_grpc.EndpointControlServicer):
    """Answers DescribeEndpoint for "ab", raises the domain error named by the endpoint otherwise."""

    def __init__(self):
        self.requests: list = []
        self.metadata: list = []

    def DescribeEndpoint(self, request, context):  # noqa: N802 - gRPC's name
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        errors = {
            "missing": NotFound('Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/missing".'),
            "invalid": ValidationError("EndpointName is too long"),
            "exists": ResourceAlreadyExists("Cannot create already existing endpoint \"exists\"."),
        }
        if request.endpoint_name in errors:
            context.abort_with_status(to_status(errors[request.endpoint_name]))
        if request.endpoint_name == "slow":
            time.sleep(1.0)
        return pb.DescribeEndpointResponse(
            endpoint_name=request.endpoint_name,
            endpoint_arn="arn:mve:sagemaker:local:endpoint/ab",
            endpoint_config_name="ab-config",
            endpoint_status="InService",
            creation_time=_ts(CREATED),
            last_modified_time=_ts(CREATED),
            production_variants=[
                pb.ProductionVariantSummary(variant_name="Variant1", current_weight=1, desired_weight=1,
                                            current_instance_count=1, desired_instance_count=1,
                                            variant_status=[pb.ProductionVariantStatus(status="Baking")]),
            ],
        )

    def ListEndpoints(self, request, context):  # noqa: N802
        page = int(request.next_token or 0)
        token = str(page + 1) if page < 2 else ""
        return pb.ListEndpointsResponse(
            endpoints=[pb.EndpointSummary(endpoint_name=f"e{page}", endpoint_status="InService",
                                          creation_time=_ts(CREATED))],
            next_token=token,
        )


class FakeRuntime(runtime_pb2_grpc.EndpointRuntimeServicer):
    def InvokeEndpoint(self, request, context):  # noqa: N802
        if request.endpoint_name == "broken":
            context.abort_with_status(to_status(ModelError(
                "Received server error (500) from model", original_status_code=500, original_message="boom"), RUNTIME))
        if request.endpoint_name == "missing":
            context.abort_with_status(to_status(NotFound("Endpoint missing of account 000000000000 not found."), RUNTIME))
        return runtime_pb2.InvokeEndpointResponse(
            body=request.body[::-1], content_type=request.accept or request.content_type,
            invoked_production_variant=request.target_variant or "Variant1",
            custom_attributes=request.custom_attributes,
        )


@pytest.fixture(scope="module")
def fake_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    control = FakeControl()
    control_pb2_grpc.add_EndpointControlServicer_to_server(control, server)
    runtime_pb2_grpc.add_EndpointRuntimeServicer_to_server(FakeRuntime(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", control
    server.stop(grace=None)


def test_describe_endpoint_has_boto3_shape(fake_server):
    address, control = fake_server
    with mve.client("sagemaker", address=address) as sm:
        response = sm.describe_endpoint(EndpointName="ab")
    assert response["EndpointStatus"] == "InService"
    assert response["CreationTime"] == CREATED and response["CreationTime"].tzinfo is not None
    assert "FailureReason" not in response
    assert response["ProductionVariants"] == [{
        "VariantName": "Variant1", "CurrentWeight": 1.0, "DesiredWeight": 1.0, "CurrentInstanceCount": 1,
        "DesiredInstanceCount": 1, "VariantStatus": [{"Status": "Baking"}]}]
    request_id = response["ResponseMetadata"]["RequestId"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert control.metadata[-1]["x-mve-request-id"] == request_id


@pytest.mark.parametrize("endpoint", ["missing", "invalid", "exists"])
def test_service_errors_carry_the_sagemaker_error_name(fake_server, endpoint):
    """SageMaker answers ValidationException (HTTP 400) to a missing name, a bad one and a taken one."""
    address, _ = fake_server
    sm = mve.client("sagemaker", address=address)
    with pytest.raises(ClientError) as caught:
        sm.describe_endpoint(EndpointName=endpoint)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert isinstance(caught.value, sm.exceptions.ValidationException)
    assert isinstance(caught.value, botocore.exceptions.ClientError)  # `except ClientError` code works unchanged
    assert caught.value.operation_name == "DescribeEndpoint"
    assert "An error occurred (ValidationException) when calling the DescribeEndpoint operation" in str(caught.value)


def test_a_missing_endpoint_says_could_not_find_with_its_arn(fake_server):
    address, _ = fake_server
    with pytest.raises(ClientError) as caught:
        mve.client("sagemaker", address=address).describe_endpoint(EndpointName="missing")
    assert caught.value.response["Error"]["Message"] == (
        'Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/missing".')


def test_invoking_a_missing_endpoint_is_the_runtimes_validation_error(fake_server):
    address, _ = fake_server
    smr = mve.client("sagemaker-runtime", address=address)
    with pytest.raises(smr.exceptions.ValidationError) as caught:
        smr.invoke_endpoint(EndpointName="missing", Body=b"1")
    assert caught.value.response["Error"] == {
        "Code": "ValidationError", "Message": "Endpoint missing of account 000000000000 not found."}
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert isinstance(caught.value, botocore.exceptions.ClientError)


def test_model_error_keeps_the_original_status(fake_server):
    address, _ = fake_server
    smr = mve.client("sagemaker-runtime", address=address)
    with pytest.raises(smr.exceptions.ModelError) as caught:
        smr.invoke_endpoint(EndpointName="broken", Body=b"1")
    assert caught.value.response["OriginalStatusCode"] == 500
    assert caught.value.response["OriginalMessage"] == "boom"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert caught.value.response["Error"]["Code"] == "ModelError"


def test_invoke_endpoint_returns_a_streaming_body(fake_server):
    address, _ = fake_server
    smr = mve.client("sagemaker-runtime", address=address)
    response = smr.invoke_endpoint(EndpointName="ab", Body="1,2,3", ContentType="text/csv",
                                   TargetVariant="Variant2", CustomAttributes="c=1")
    assert response["Body"].read() == b"3,2,1"
    assert response["Body"].read() == b""
    assert response["ContentType"] == "text/csv"
    assert response["InvokedProductionVariant"] == "Variant2"
    assert response["CustomAttributes"] == "c=1"
    lines = smr.invoke_endpoint(EndpointName="ab", Body=b"b\na", ContentType="text/csv")["Body"]
    assert list(lines.iter_lines()) == [b"a", b"b"]


def test_paginator_follows_next_token(fake_server):
    address, _ = fake_server
    sm = mve.client("sagemaker", address=address)
    pages = list(sm.get_paginator("list_endpoints").paginate())
    assert [p["Endpoints"][0]["EndpointName"] for p in pages] == ["e0", "e1", "e2"]
    assert "NextToken" not in pages[-1]


def test_no_server_is_an_endpoint_connection_error():
    sm = mve.client("sagemaker", address="127.0.0.1:1")
    with pytest.raises(EndpointConnectionError, match="127.0.0.1:1"):
        sm.list_models()


def test_deadline_is_a_read_timeout(fake_server):
    address, _ = fake_server
    sm = mve.client("sagemaker", address=address, timeout=0.2)
    with pytest.raises(ReadTimeoutError, match="DescribeEndpoint"):
        sm.describe_endpoint(EndpointName="slow")


def test_a_client_is_usable_from_several_threads(fake_server):
    address, _ = fake_server
    sm = mve.client("sagemaker", address=address)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(sm.describe_endpoint(EndpointName="ab")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
