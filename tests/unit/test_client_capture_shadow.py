"""The sagemaker and sagemaker-runtime clients' parts of issue 16 against in-test gRPC servers:
ShadowProductionVariants and DataCaptureConfig both ways, DescribeEndpoint's DataCaptureConfig
summary and AutomaticWeightChanges, InvokeEndpoint's InferenceId, and mve.session passing them."""

from __future__ import annotations

from concurrent import futures
from datetime import datetime, timezone

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

import mve
from mve._proto import control_pb2 as pb
from mve._proto import control_pb2_grpc, runtime_pb2, runtime_pb2_grpc
from mve.sdk import ParamValidationError
from mve.session import Predictor, Session

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
NOWHERE = "127.0.0.1:1"
VARIANT = {"VariantName": "Variant1", "ModelName": "weak", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small"}
SHADOW = {"VariantName": "Shadow1", "ModelName": "strong", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
          "InitialVariantWeight": 0.5}


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


class FakeControl(control_pb2_grpc.EndpointControlServicer):
    """Keeps the last CreateEndpointConfig and answers Describe* from it."""

    def __init__(self):
        self.created: pb.CreateEndpointConfigRequest | None = None

    def CreateEndpointConfig(self, request, context):  # noqa: N802 - gRPC's name
        self.created = request
        return pb.CreateEndpointConfigResponse(endpoint_config_arn=f"arn:{request.endpoint_config_name}")

    def DescribeEndpointConfig(self, request, context):  # noqa: N802
        created = self.created
        return pb.DescribeEndpointConfigResponse(
            endpoint_config_name=created.endpoint_config_name, endpoint_config_arn="arn:cfg",
            production_variants=created.production_variants,
            shadow_production_variants=created.shadow_production_variants,
            data_capture_config=created.data_capture_config if created.HasField("data_capture_config") else None,
            creation_time=_ts(T0))

    def DescribeEndpoint(self, request, context):  # noqa: N802
        summary = pb.ProductionVariantSummary
        response = pb.DescribeEndpointResponse(
            endpoint_name=request.endpoint_name, endpoint_arn="arn:ep", endpoint_config_name="cfg",
            endpoint_status="InService",
            production_variants=[summary(variant_name="Variant1", current_weight=0.3, desired_weight=0.3,
                                         current_instance_count=1, desired_instance_count=1)],
            shadow_production_variants=[summary(variant_name="Shadow1", current_weight=0.5, desired_weight=0.5,
                                                current_instance_count=1, desired_instance_count=1)])
        if request.endpoint_name == "captured":
            response.data_capture_config.CopyFrom(pb.DataCaptureConfigSummary(
                enable_capture=True, capture_status="Started", current_sampling_percentage=20,
                destination_s3_uri="file:///var/capture"))
            response.automatic_weight_changes.append(pb.WeightChange(
                time=_ts(T0), source="bandit", reason="P(best): Variant1 0.9",
                weights=[pb.VariantWeight(variant_name="Variant1", weight=0.3)]))
        return response


class FakeRuntime(runtime_pb2_grpc.EndpointRuntimeServicer):
    """Echoes the caller's InferenceId, or makes one up when none is given."""

    def InvokeEndpoint(self, request, context):  # noqa: N802
        return runtime_pb2.InvokeEndpointResponse(
            body=b"[1]", content_type="application/json", invoked_production_variant="Variant1",
            inference_id=request.inference_id or "made-by-the-proxy")


@pytest.fixture(scope="module")
def address():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    fake = FakeControl()
    control_pb2_grpc.add_EndpointControlServicer_to_server(fake, server)
    runtime_pb2_grpc.add_EndpointRuntimeServicer_to_server(FakeRuntime(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", fake
    server.stop(grace=None)


def test_shadow_variants_and_data_capture_round_trip(address):
    where, fake = address
    sm = mve.client("sagemaker", address=where)
    sm.create_endpoint_config(
        EndpointConfigName="cfg", ProductionVariants=[VARIANT], ShadowProductionVariants=[SHADOW],
        DataCaptureConfig={"InitialSamplingPercentage": 20, "DestinationS3Uri": "file:///var/capture",
                           "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                           "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"],
                                                        "JsonContentTypes": ["application/json"]}})
    request = fake.created
    (shadow,) = request.shadow_production_variants
    assert (shadow.variant_name, shadow.model_name, shadow.initial_variant_weight) == ("Shadow1", "strong", 0.5)
    capture = request.data_capture_config
    # EnableCapture left out is true, as in SageMaker
    assert capture.enable_capture and capture.initial_sampling_percentage == 20
    assert (capture.destination_s3_uri, list(capture.capture_modes)) == ("file:///var/capture", ["Input", "Output"])
    assert (list(capture.csv_content_types), list(capture.json_content_types)) == (["text/csv"], ["application/json"])

    described = sm.describe_endpoint_config(EndpointConfigName="cfg")
    assert described["ShadowProductionVariants"] == [SHADOW]
    assert described["DataCaptureConfig"] == {
        "EnableCapture": True, "InitialSamplingPercentage": 20, "DestinationS3Uri": "file:///var/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]}}


def test_capture_off_both_directions_and_no_capture(address):
    where, fake = address
    sm = mve.client("sagemaker", address=where)
    sm.create_endpoint_config(EndpointConfigName="off", ProductionVariants=[VARIANT], DataCaptureConfig={
        "EnableCapture": False, "InitialSamplingPercentage": 100, "DestinationS3Uri": "/tmp/capture",
        "CaptureOptions": [{"CaptureMode": "InputAndOutput"}]})
    assert not fake.created.data_capture_config.enable_capture
    assert list(fake.created.data_capture_config.capture_modes) == ["Input", "Output"]
    sm.create_endpoint_config(EndpointConfigName="both", ProductionVariants=[VARIANT], DataCaptureConfig={
        "InitialSamplingPercentage": 5, "DestinationS3Uri": "/tmp/capture"})
    assert sm.describe_endpoint_config(EndpointConfigName="both")["DataCaptureConfig"]["CaptureOptions"] == [
        {"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    sm.create_endpoint_config(EndpointConfigName="plain", ProductionVariants=[VARIANT])
    assert not fake.created.HasField("data_capture_config") and not fake.created.shadow_production_variants
    described = sm.describe_endpoint_config(EndpointConfigName="plain")
    assert "DataCaptureConfig" not in described and "ShadowProductionVariants" not in described


def test_kms_key_and_missing_capture_fields_are_refused_before_any_call():
    sm = mve.client("sagemaker", address=NOWHERE)
    with pytest.raises(ParamValidationError) as caught:
        sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[VARIANT], DataCaptureConfig={
            "EnableCapture": True, "KmsKeyId": "arn:aws:kms:key", "CaptureOptions": [{}]})
    report = caught.value.report
    assert "Unsupported parameter DataCaptureConfig.KmsKeyId: mve writes capture files to a local directory" in report
    assert 'Missing required parameter in DataCaptureConfig: "InitialSamplingPercentage"' in report
    assert 'Missing required parameter in DataCaptureConfig: "DestinationS3Uri"' in report
    assert 'Missing required parameter in DataCaptureConfig.CaptureOptions[0]: "CaptureMode"' in report
    with pytest.raises(ParamValidationError, match='Missing required parameter in ShadowProductionVariants\\[0\\]: '
                                                   '"ModelName"'):
        sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[VARIANT],
                                  ShadowProductionVariants=[{"VariantName": "S"}])


def test_describe_endpoint_shows_shadows_capture_and_automatic_weight_changes(address):
    where, _ = address
    sm = mve.client("sagemaker", address=where)
    described = sm.describe_endpoint(EndpointName="captured")
    assert [v["VariantName"] for v in described["ShadowProductionVariants"]] == ["Shadow1"]
    assert described["ShadowProductionVariants"][0]["CurrentWeight"] == 0.5
    assert described["DataCaptureConfig"] == {"EnableCapture": True, "CaptureStatus": "Started",
                                              "CurrentSamplingPercentage": 20,
                                              "DestinationS3Uri": "file:///var/capture"}
    assert described["AutomaticWeightChanges"] == [{"Time": T0, "Source": "bandit",
                                                    "Weights": [{"VariantName": "Variant1", "Weight": 0.3}],
                                                    "Reason": "P(best): Variant1 0.9"}]
    plain = sm.describe_endpoint(EndpointName="plain")
    assert "DataCaptureConfig" not in plain and "AutomaticWeightChanges" not in plain


def test_invoke_endpoint_returns_the_inference_id(address):
    where, _ = address
    smr = mve.client("sagemaker-runtime", address=where)
    assert smr.invoke_endpoint(EndpointName="ab", Body=b"1,2")["InferenceId"] == "made-by-the-proxy"
    assert smr.invoke_endpoint(EndpointName="ab", Body=b"1,2", InferenceId="mine")["InferenceId"] == "mine"


def test_session_passes_shadows_and_capture_and_the_predictor_keeps_the_inference_id(address):
    where, fake = address
    session = Session(address=where, runtime_address=where)

    session.wait_for_endpoint = lambda name: {}
    session.sagemaker_client.create_endpoint = lambda **kwargs: {}
    capture = {"EnableCapture": True, "InitialSamplingPercentage": 50, "DestinationS3Uri": "/tmp/capture",
               "CaptureOptions": [{"CaptureMode": "Output"}]}
    session.endpoint_from_production_variants("ab", [VARIANT], data_capture_config_dict=capture,
                                              shadow_production_variants=[SHADOW])
    assert fake.created.data_capture_config.initial_sampling_percentage == 50
    assert list(fake.created.data_capture_config.capture_modes) == ["Output"]
    assert [v.variant_name for v in fake.created.shadow_production_variants] == ["Shadow1"]

    predictor = Predictor("ab", sagemaker_session=session, content_type="application/json")
    assert predictor.predict([[1.0, 2.0]], inference_id="row-7") == [1]
    assert predictor.last_inference_id == "row-7" and predictor.last_invoked_variant == "Variant1"
    predictor.predict(np.array([[1.0]]))
    assert predictor.last_inference_id == "made-by-the-proxy"
    session.close()
