"""The SDK refuses bad parameters before any call, as botocore does, and builds the right requests."""

from __future__ import annotations

import io

import pytest

import mve
from mve._proto import control_pb2
from mve.sdk import ParamValidationError, default_address
from mve.sdk.convert import build_request
from mve.sdk.params import validate
from mve.sdk.runtime import _invoke_request

# Nothing listens on port 1: a call that got past validation would fail with a connection error.
NOWHERE = "127.0.0.1:1"


def test_unknown_service_name_is_a_value_error():
    with pytest.raises(ValueError, match="Unknown service"):
        mve.client("s3", address=NOWHERE)


def test_address_defaults_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MVE_CONTROL_PLANE", "127.0.0.1:7171")
    monkeypatch.delenv("MVE_ENDPOINT", raising=False)
    assert mve.client("sagemaker").address == "127.0.0.1:7171"
    assert mve.client("sagemaker-runtime").address == "127.0.0.1:8080"
    assert default_address("sagemaker-runtime") == "127.0.0.1:8080"


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:", "127.0.0.1:99999", ":80"])
def test_malformed_address_is_refused(address):
    with pytest.raises(ValueError, match="HOST:PORT"):
        mve.client("sagemaker", address=address)


def test_unknown_parameter_is_refused_before_any_call():
    sm = mve.client("sagemaker", address=NOWHERE)
    with pytest.raises(ParamValidationError, match='Unknown parameter in input: "EndpointNam"'):
        sm.describe_endpoint(EndpointNam="x")
    with pytest.raises(ParamValidationError, match="Missing required parameter"):
        sm.delete_model()


def test_every_problem_is_reported_at_once_with_its_path():
    with pytest.raises(ParamValidationError) as caught:
        validate(
            "CreateEndpointConfig",
            {
                "EndpointConfigName": 7,
                "ProductionVariants": [{"VariantName": "V1", "InitialInstanceCount": True, "Colour": "red"}],
            },
        )
    report = caught.value.report
    assert 'Missing required parameter in ProductionVariants[0]: "ModelName"' in report
    assert 'Unknown parameter in ProductionVariants[0]: "Colour"' in report
    assert "Invalid type for parameter EndpointConfigName, value: 7" in report
    # True is an int in Python, but not an Integer parameter.
    assert "Invalid type for parameter ProductionVariants[0].InitialInstanceCount, value: True" in report


def test_positional_arguments_are_refused():
    sm = mve.client("sagemaker", address=NOWHERE)
    with pytest.raises(TypeError):
        sm.describe_endpoint("x")


def test_weights_accept_ints_and_floats():
    validate("UpdateEndpointWeightsAndCapacities", {
        "EndpointName": "e", "DesiredWeightsAndCapacities": [{"VariantName": "V1", "DesiredWeight": 25},
                                                              {"VariantName": "V2", "DesiredWeight": 0.75}]})


def test_invoke_body_must_be_bytes_str_or_file_like():
    smr = mve.client("sagemaker-runtime", address=NOWHERE)
    with pytest.raises(ParamValidationError, match="Invalid type for parameter Body"):
        smr.invoke_endpoint(EndpointName="e", Body=123)
    with pytest.raises(ParamValidationError, match='Missing required parameter in input: "Body"'):
        smr.invoke_endpoint(EndpointName="e")
    for body in (b"1,2", "1,2", io.BytesIO(b"1,2"), io.StringIO("1,2"), bytearray(b"1,2")):
        validate("InvokeEndpoint", {"EndpointName": "e", "Body": body})
        assert _invoke_request({"EndpointName": "e", "Body": body}).body == b"1,2"


def test_create_endpoint_config_request_carries_every_variant_field():
    request = build_request("CreateEndpointConfig", {
        "EndpointConfigName": "cfg",
        "ProductionVariants": [
            {"VariantName": "Variant1", "ModelName": "weak", "InitialInstanceCount": 2, "InstanceType": "ml.cpu.small",
             "InitialVariantWeight": 0, "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
             "ContainerStartupHealthCheckTimeoutInSeconds": 120,
             "Batching": {"MaxBatchSize": 8, "MaxDelayMicroseconds": 2000, "MaxBatchesInFlightPerInstance": 2,
                          "MaxQueueRows": 256}},
            {"VariantName": "Variant2", "ModelName": "strong"},
        ],
        "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 50, "DestinationS3Uri": "/tmp/c",
                              "CaptureOptions": [{"CaptureMode": "InputAndOutput"}]},
    })
    assert isinstance(request, control_pb2.CreateEndpointConfigRequest)
    first, second = request.production_variants
    assert (first.variant_name, first.model_name, first.initial_instance_count) == ("Variant1", "weak", 2)
    # An explicit weight of 0 is sent; an absent weight is left unset for the server's default.
    assert first.HasField("initial_variant_weight") and first.initial_variant_weight == 0.0
    assert not second.HasField("initial_variant_weight")
    assert first.routing_config.routing_strategy == "LEAST_OUTSTANDING_REQUESTS"
    assert first.container_startup_health_check_timeout_in_seconds == 120
    assert (first.batching.max_batch_size, first.batching.max_delay_us) == (8, 2000)
    assert (first.batching.max_batches_in_flight_per_instance, first.batching.max_queue_rows) == (2, 256)
    assert list(request.data_capture_config.capture_modes) == ["Input", "Output"]


def test_update_weights_request_leaves_unset_fields_unset():
    request = build_request("UpdateEndpointWeightsAndCapacities", {
        "EndpointName": "e", "DesiredWeightsAndCapacities": [{"VariantName": "V1", "DesiredWeight": 25},
                                                              {"VariantName": "V2", "DesiredInstanceCount": 3}]})
    one, two = request.desired_weights_and_capacities
    assert one.desired_weight == 25.0 and not one.HasField("desired_instance_count")
    assert two.desired_instance_count == 3 and not two.HasField("desired_weight")
