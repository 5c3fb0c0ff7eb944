"""ShadowProductionVariants and DataCaptureConfig: what CreateEndpointConfig accepts, fills in and refuses.

Every refusal is a ValidationError whose message names the field, so a person can fix the request.
"""

from __future__ import annotations

import asyncio

import pytest

from mve.control.records import VariantSpec
from mve.control.validation import Limits, validate_data_capture, validate_variant, validate_variant_set
from mve.errors import NotFound, ValidationError
from test_control_service import FakeProvider, Plane, write_model


def variant(name: str, model: str = "m", weight: float = 1.0) -> VariantSpec:
    return VariantSpec(name, model, 1, "ml.cpu.small", weight, "RANDOM", 600)


ENABLED = {"enable_capture": True, "initial_sampling_percentage": 50, "destination_s3_uri": "/var/capture"}


@pytest.mark.parametrize(
    "capture, field",
    [
        ({**ENABLED, "initial_sampling_percentage": 101}, "DataCaptureConfig.InitialSamplingPercentage"),
        ({**ENABLED, "initial_sampling_percentage": -1}, "DataCaptureConfig.InitialSamplingPercentage"),
        ({"enable_capture": True, "initial_sampling_percentage": 10}, "DataCaptureConfig.DestinationS3Uri is required"),
        ({**ENABLED, "destination_s3_uri": "s3://bucket/capture"}, "DataCaptureConfig.DestinationS3Uri"),
        ({**ENABLED, "destination_s3_uri": "https://example.com/capture"}, "DataCaptureConfig.DestinationS3Uri"),
        ({**ENABLED, "destination_s3_uri": "relative/dir"}, "DataCaptureConfig.DestinationS3Uri"),
        ({**ENABLED, "destination_s3_uri": "file://host/capture"}, "DataCaptureConfig.DestinationS3Uri"),
        ({**ENABLED, "destination_s3_uri": "/" + "d" * 512}, "DataCaptureConfig.DestinationS3Uri must be at most 512"),
        ({"enable_capture": False, "destination_s3_uri": "s3://bucket/x"}, "DataCaptureConfig.DestinationS3Uri"),
        ({**ENABLED, "capture_modes": ["Both"]}, "DataCaptureConfig.CaptureOptions.CaptureMode"),
        ({**ENABLED, "capture_modes": ["Input"] * 33}, "DataCaptureConfig.CaptureOptions may hold at most 32"),
        ({**ENABLED, "csv_content_types": ["text"]}, "CaptureContentTypeHeader.CsvContentTypes"),
        ({**ENABLED, "json_content_types": ["application/json; charset=utf-8"]}, "CaptureContentTypeHeader.JsonContentTypes"),
        ({**ENABLED, "json_content_types": ["application/" + "j" * 260]}, "CaptureContentTypeHeader.JsonContentTypes"),
        ({**ENABLED, "csv_content_types": [f"text/csv{i}" for i in range(11)]}, "CsvContentTypes may hold at most 10"),
    ],
)
def test_bad_data_capture_configs_are_refused_naming_the_field(capture, field):
    with pytest.raises(ValidationError, match=field):
        validate_data_capture(capture)


def test_an_s3_destination_is_refused_saying_where_mve_writes():
    with pytest.raises(ValidationError, match="mve writes captures to a local directory or file:// URI on the proxies' machines"):
        validate_data_capture({**ENABLED, "destination_s3_uri": "s3://bucket/capture"})


def test_a_valid_data_capture_config_is_filled_in():
    assert validate_data_capture(None) == {}
    assert validate_data_capture({**ENABLED, "destination_s3_uri": "file:///var/capture", "capture_modes": ["Input"],
                                  "csv_content_types": ["text/csv"], "json_content_types": ["application/jsonlines"]}) == {
        "enable_capture": True,
        "initial_sampling_percentage": 50,
        "destination_s3_uri": "file:///var/capture",
        "capture_modes": ["Input"],
        "csv_content_types": ["text/csv"],
        "json_content_types": ["application/jsonlines"],
    }
    disabled = validate_data_capture({"initial_sampling_percentage": 5})
    assert disabled["enable_capture"] is False and disabled["destination_s3_uri"] == ""


@pytest.mark.parametrize(
    "production, shadows, message",
    [
        ([], [variant("S")], "ProductionVariants must have at least 1 variant when ShadowProductionVariants are given"),
        ([variant("A")], [variant("A")], "VariantName 'A' appears more than once; names must be unique across"),
        ([variant("A")], [variant("S"), variant("S")], "VariantName 'S' appears more than once"),
        ([variant(f"P{i}") for i in range(6)], [variant(f"S{i}") for i in range(5)],
         "ProductionVariants and ShadowProductionVariants have 11 variants together; at most 10"),
        ([variant("A", weight=0.0)], [variant("S")], "sum of the variant weights must be greater than 0"),
    ],
)
def test_bad_shadow_variant_sets_are_refused(production, shadows, message):
    with pytest.raises(ValidationError, match=message):
        validate_variant_set(production, shadows)


def test_several_production_and_several_shadow_variants_are_allowed():
    validate_variant_set([variant(f"P{i}") for i in range(5)], [variant(f"S{i}") for i in range(5)])


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"initial_instance_count": 0}, "InitialInstanceCount of variant 'S'"),
        ({"initial_variant_weight": -1.0}, "InitialVariantWeight of variant 'S'"),
        ({"routing_strategy": "ROUND_ROBIN"}, "RoutingStrategy 'ROUND_ROBIN' of variant 'S'"),
        ({"startup_health_check_timeout_s": 10}, "ContainerStartupHealthCheckTimeoutInSeconds of variant 'S'"),
        ({"variant_name": "bad name"}, "VariantName 'bad name' is invalid"),
    ],
)
def test_a_shadow_variant_is_validated_like_a_production_variant(overrides, field):
    raw = VariantSpec(**{**variant("S").__dict__, **overrides})
    with pytest.raises(ValidationError, match=field):
        validate_variant(raw, Limits(), weight_given=True, instance_type_given=True, timeout_given=True, strategy_given=True)


def test_a_shadow_variant_gets_the_production_defaults():
    raw = VariantSpec("S", "m", 1, "", 0.0, "", 0)
    filled = validate_variant(raw, Limits(), weight_given=False, instance_type_given=False, timeout_given=False,
                              strategy_given=False)
    assert (filled.initial_variant_weight, filled.instance_type, filled.routing_strategy,
            filled.startup_health_check_timeout_s) == (1.0, "ml.cpu.small", "RANDOM", 600)


def test_the_service_stores_shadows_and_capture_and_checks_shadow_models(tmp_path):
    plane = Plane(tmp_path, FakeProvider())
    asyncio.run(plane.service.create_model("m", "", str(write_model(tmp_path / "m.onnx")), {}, {}))
    with pytest.raises(NotFound, match="variant 'S'"):
        plane.service.create_endpoint_config("c", [variant("A")], None, {}, [variant("S", model="missing")])
    with pytest.raises(ValidationError, match="DataCaptureConfig.DestinationS3Uri"):
        plane.service.create_endpoint_config("c", [variant("A")], {**ENABLED, "destination_s3_uri": "s3://b"}, {})
    assert plane.store.get_config("c") is None  # nothing stored by a refused request

    plane.service.create_endpoint_config("c", [variant("A")], ENABLED, {}, [variant("S", weight=0.5)])
    stored = plane.store.get_config("c")
    assert [v.variant_name for v in stored.shadow_variants] == ["S"]
    assert stored.variant("S").initial_variant_weight == 0.5 and stored.is_shadow("S") and not stored.is_shadow("A")
    assert stored.data_capture["destination_s3_uri"] == "/var/capture"
    assert plane.store.configs_using_model("m") == ["c"]
