"""SageMaker's rules for names, variants, weights, counts, list requests; instance types; settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mve.control.instance_types import InstanceResources, instance_threads, resolve_instance_type
from mve.control.records import Batching, TensorSpec, VariantSpec
from mve.control.settings import SettingsError, load_settings
from mve.control.validation import (
    Limits,
    check_batchable,
    validate_batching,
    validate_instance_count,
    validate_list_query,
    validate_model_data_url,
    validate_name,
    validate_variant,
    validate_variant_set,
    validate_weight,
)
from mve.errors import ResourceLimitExceeded, ValidationError


@pytest.mark.parametrize("name", ["a", "A1", "my-endpoint", "a--b", "x" * 63, "0abc"])
def test_valid_names_pass(name):
    assert validate_name(name, "EndpointName") == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "a_b", "a.b", "x" * 64, "a b", "é"])
def test_invalid_names_are_rejected_with_the_field_named(name):
    with pytest.raises(ValidationError, match="EndpointName"):
        validate_name(name, "EndpointName")


@pytest.mark.parametrize("weight", [-0.1, math.inf, math.nan])
def test_weights_must_be_finite_and_not_negative(weight):
    with pytest.raises(ValidationError, match="finite number >= 0"):
        validate_weight(weight, "DesiredWeight")


def test_weight_zero_is_allowed():
    assert validate_weight(0.0, "DesiredWeight") == 0.0


def test_instance_count_range():
    limits = Limits(max_instances_per_variant=10)
    assert validate_instance_count(10, "n", limits) == 10
    with pytest.raises(ValidationError, match=">= 1"):
        validate_instance_count(0, "n", limits)
    with pytest.raises(ResourceLimitExceeded, match="limit of 10"):
        validate_instance_count(11, "n", limits)


def _variant(**overrides) -> VariantSpec:
    fields = dict(
        variant_name="A",
        model_name="m",
        initial_instance_count=1,
        instance_type="",
        initial_variant_weight=0.0,
        routing_strategy="",
        startup_health_check_timeout_s=0,
    )
    fields.update(overrides)
    return VariantSpec(**fields)


def _validate(variant: VariantSpec, limits: Limits = Limits(), **given) -> VariantSpec:
    flags = dict(weight_given=False, instance_type_given=False, timeout_given=False, strategy_given=False)
    flags.update(given)
    return validate_variant(variant, limits, **flags)


def test_variant_defaults_are_filled_in():
    variant = _validate(_variant())
    assert variant.initial_variant_weight == 1.0
    assert variant.instance_type == "ml.cpu.small"
    assert variant.routing_strategy == "RANDOM"
    assert variant.startup_health_check_timeout_s == 600
    assert variant.batching.max_batches_in_flight_per_instance == 2  # one batch runs, the next waits


def test_routing_strategy_must_be_known():
    with pytest.raises(ValidationError, match="LEAST_OUTSTANDING_REQUESTS, RANDOM"):
        _validate(_variant(routing_strategy="ROUND_ROBIN"), strategy_given=True)


@pytest.mark.parametrize("timeout", [59, 3601])
def test_startup_timeout_range_is_sagemakers(timeout):
    with pytest.raises(ValidationError, match="60-3600"):
        _validate(_variant(startup_health_check_timeout_s=timeout), timeout_given=True)


def test_startup_timeout_minimum_can_be_lowered_by_settings():
    variant = _validate(_variant(startup_health_check_timeout_s=2), Limits(min_startup_timeout_s=1), timeout_given=True)
    assert variant.startup_health_check_timeout_s == 2


@pytest.mark.parametrize(
    "batching, message",
    [
        (Batching(max_batch_size=1025), "MaxBatchSize"),
        (Batching(max_batch_size=-1), "MaxBatchSize"),
        (Batching(max_delay_us=1_000_001), "MaxDelayMicroseconds"),
        (Batching(max_batches_in_flight_per_instance=65), "MaxBatchesInFlight"),
        (Batching(max_batch_size=8, max_queue_rows=7), "MaxQueueRows"),
        (Batching(max_batch_size=8, max_queue_rows=1_048_577), "MaxQueueRows"),
    ],
)
def test_batching_ranges(batching, message):
    with pytest.raises(ValidationError, match=message):
        validate_batching(batching, "A")


def test_batching_defaults_and_queue_bound_are_kept():
    assert validate_batching(Batching(8, 500, 0, 0), "A") == Batching(8, 500, 2, 0)  # 0 in flight: the default, 2
    assert validate_batching(Batching(8, 500, 1, 8), "A") == Batching(8, 500, 1, 8)


def _io(*specs):
    return [(role, TensorSpec(name, "FP32", shape)) for role, name, shape in specs]


def test_batching_needs_a_dynamic_first_dimension_on_every_input_and_output():
    on = Batching(max_batch_size=8)
    check_batchable(on, "A", "m", _io(("input", "x", (-1, 3)), ("input", "z", (-1,)), ("output", "y", (-1, 2))))
    check_batchable(Batching(max_batch_size=1), "A", "m", _io(("input", "x", (2, 3)), ("output", "y", ())))
    for fixed, named in [
        (_io(("input", "x", (2, 3)), ("output", "y", (-1, 2))), "input 'x' [2, 3]"),
        (_io(("input", "x", (-1, 3)), ("input", "z", (3, -1)), ("output", "y", (-1,))), "input 'z' [3, -1]"),
        (_io(("input", "x", (-1, 3)), ("output", "y", (2,))), "output 'y' [2]"),
        (_io(("input", "x", (-1, 3)), ("output", "y", ())), "output 'y' []"),
    ]:
        with pytest.raises(ValidationError, match="not dynamic") as info:
            check_batchable(on, "A", "m", fixed)
        assert named in str(info.value)
    with pytest.raises(ValidationError, match="no inputs"):
        check_batchable(on, "A", "m", _io(("output", "y", (-1,))))


def test_variant_set_rules():
    with pytest.raises(ValidationError, match="at least 1 variant"):
        validate_variant_set([])
    with pytest.raises(ValidationError, match="at most 10"):
        validate_variant_set([_validate(_variant(variant_name=f"v{i}")) for i in range(11)])
    with pytest.raises(ValidationError, match="more than once"):
        validate_variant_set([_validate(_variant()), _validate(_variant())])
    zero = _validate(_variant(initial_variant_weight=0.0), weight_given=True)
    with pytest.raises(ValidationError, match="greater than 0"):
        validate_variant_set([zero])


@pytest.mark.parametrize(
    "instance_type, resources",
    [
        ("ml.cpu.small", InstanceResources("cpu", 1)),
        ("ml.cpu.large", InstanceResources("cpu", 2)),
        ("ml.cpu.xlarge", InstanceResources("cpu", 4)),
        ("ml.gpu.medium", InstanceResources("cuda", 1)),
    ],
)
def test_instance_types_map_to_local_resources(instance_type, resources):
    assert resolve_instance_type(instance_type) == resources


@pytest.mark.parametrize("instance_type", ["cpu", "ml.cpu.huge", "ml.tpu.small", "ml.m5", "m5.large"])
def test_unknown_instance_types_list_the_valid_forms(instance_type):
    with pytest.raises(ValidationError, match=r"ml\.cpu\.<size> or ml\.gpu\.<size>"):
        resolve_instance_type(instance_type)


def test_model_data_url_forms():
    assert validate_model_data_url("file:///tmp/m.onnx") == "/tmp/m.onnx"
    assert validate_model_data_url("/tmp/m.onnx") == "/tmp/m.onnx"
    with pytest.raises(ValidationError, match="file://"):
        validate_model_data_url("s3://bucket/m.onnx")


def test_list_query_defaults_and_ranges():
    query = validate_list_query("", 0, "", "", "")
    assert (query.max_results, query.sort_by, query.sort_order, query.offset) == (100, "CreationTime", "Descending", 0)
    with pytest.raises(ValidationError, match="MaxResults"):
        validate_list_query("", 101, "", "", "")
    with pytest.raises(ValidationError, match="SortBy"):
        validate_list_query("", 10, "", "Size", "")
    with pytest.raises(ValidationError, match="SortOrder"):
        validate_list_query("", 10, "", "Name", "Up")
    with pytest.raises(ValidationError, match="NextToken"):
        validate_list_query("", 10, "abc", "Name", "")
    with pytest.raises(ValidationError, match="StatusEquals"):
        validate_list_query("", 10, "", "Name", "", "Sleeping")


def test_settings_come_from_flags_then_env(tmp_path: Path):
    env = {"MVE_DATA_DIR": str(tmp_path), "MVE_CONTROL_PLANE_PORT": "0", "MVE_MODEL_SERVER_PREFIX": "nice -n 5"}
    settings = load_settings({"port": 7171}, env)
    assert settings.data_dir == tmp_path
    assert settings.port == 7171
    assert settings.model_server_prefix == ("nice", "-n", "5")


@pytest.mark.parametrize(
    "flags, message",
    [
        ({}, "--data-dir"),
        ({"data_dir": "d", "port": 70000}, "--port"),
        ({"data_dir": "d", "min_startup_timeout_s": 0}, "--min-startup-timeout"),
        ({"data_dir": "d", "default_startup_timeout_s": 4000}, "--default-startup-timeout"),
        ({"data_dir": "d", "drain_s": -1.0}, "--drain-seconds"),
        ({"data_dir": "d", "log_level": "loud"}, "--log-level"),
    ],
)
def test_settings_out_of_range_name_the_flag(flags, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(flags, {})


def test_settings_reject_bad_env_values():
    with pytest.raises(SettingsError, match="MVE_CONTROL_PLANE_PORT"):
        load_settings({"data_dir": "d"}, {"MVE_CONTROL_PLANE_PORT": "seven"})


@pytest.mark.parametrize(
    "type_threads, cores, instances, expected",
    [
        (4, 16, 1, 4),  # a lone server keeps its type's threads
        (4, 16, 4, 4),  # 16 cores // 4 servers = 4
        (8, 16, 4, 4),  # capped at the equal share
        (16, 8, 3, 2),  # 8 // 3 = 2
        (2, 2, 5, 1),  # more servers than cores: one thread each, never 0
        (1, 64, 0, 1),  # nothing counted yet: treated as one server
    ],
)
def test_instance_threads_never_oversubscribe_the_machine(type_threads, cores, instances, expected):
    assert instance_threads(type_threads, cores, instances) == expected


def test_instance_threads_rejects_nonsense():
    with pytest.raises(ValueError):
        instance_threads(0, 4, 1)
    with pytest.raises(ValueError):
        instance_threads(1, 0, 1)
