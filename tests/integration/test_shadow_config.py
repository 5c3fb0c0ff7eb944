"""Shadow variants and data capture on a real control plane: the config round trip, the endpoint's
shadow model server, the routing table (sampling fraction, capture), DescribeEndpoint, a weight
change on the shadow, and a control-plane crash and restart that keeps all of it.

One endpoint: production variant "prod" (tiny model "plus", weight 2) and shadow variant "shadow"
(tiny model "minus", weight 1), capture on at 50% to a file:// directory.
"""

from __future__ import annotations

import numpy as np
import pytest

from control_plane_helpers import (
    RouteWatch,
    control_stub,
    create_model,
    describe,
    endpoint_route,
    infer,
    variant,
    wait_status,
)
from mve._proto import control_pb2 as pb
from tiny_models import build_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shadow-plane")


@pytest.fixture(scope="module")
def plane(module_services, data_dir):
    service = module_services(["control-plane", "--data-dir", str(data_dir), "--port", "0", "--drain-seconds", "0.2"])
    return service, control_stub(service.address)


@pytest.fixture(scope="module")
def capture_uri(tmp_path_factory) -> str:
    return "file://" + str(tmp_path_factory.mktemp("capture"))


@pytest.fixture(scope="module")
def config_request(capture_uri) -> pb.CreateEndpointConfigRequest:
    return pb.CreateEndpointConfigRequest(
        endpoint_config_name="shadow-config",
        production_variants=[variant("prod", "plus", weight=2.0)],
        shadow_production_variants=[pb.ProductionVariant(variant_name="shadow", model_name="minus", initial_instance_count=1)],
        data_capture_config=pb.DataCaptureConfig(
            enable_capture=True,
            initial_sampling_percentage=50,
            destination_s3_uri=capture_uri,
            capture_modes=["Input", "Output"],
            csv_content_types=["text/csv"],
            json_content_types=["application/json"],
        ),
    )


@pytest.fixture(scope="module")
def endpoint(plane, config_request, tmp_path_factory):
    """The endpoint "shadowed", InService."""
    _, stub = plane
    models = tmp_path_factory.mktemp("tiny-models")
    for kind in ("plus", "minus"):
        build_model(models / f"{kind}.onnx", kind)
        create_model(stub, kind, models / f"{kind}.onnx")
    stub.CreateEndpointConfig(config_request)
    stub.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="shadowed", endpoint_config_name="shadow-config"))
    described = wait_status(stub, "shadowed")
    assert described.endpoint_status == "InService", described.failure_reason
    return described


def _route(stub, predicate=lambda route: True) -> pb.EndpointRoute:
    """The first routing table's route of "shadowed" that has a ready shadow and satisfies `predicate`."""
    watch = RouteWatch(stub)
    try:
        table = watch.until(
            lambda t: (route := endpoint_route(t, "shadowed")) is not None
            and len(route.shadow_variants) == 1 and len(route.shadow_variants[0].instances) == 1
            and predicate(route)
        )
    finally:
        watch.close()
    return endpoint_route(table, "shadowed")


def test_describe_endpoint_config_returns_the_shadows_and_the_capture(plane, endpoint, config_request):
    _, stub = plane
    config = stub.DescribeEndpointConfig(pb.DescribeEndpointConfigRequest(endpoint_config_name="shadow-config"))
    assert [v.variant_name for v in config.production_variants] == ["prod"]
    (shadow,) = config.shadow_production_variants
    # validated like a production variant: the same defaults are filled in
    assert (shadow.variant_name, shadow.model_name, shadow.initial_instance_count, shadow.initial_variant_weight,
            shadow.instance_type, shadow.routing_config.routing_strategy) == ("shadow", "minus", 1, 1.0, "ml.cpu.small", "RANDOM")
    assert shadow.container_startup_health_check_timeout_in_seconds == config.production_variants[0].container_startup_health_check_timeout_in_seconds
    assert config.data_capture_config == config_request.data_capture_config


def test_the_endpoint_describes_its_shadow_and_its_capture(plane, endpoint, capture_uri):
    _, stub = plane
    described = describe(stub, "shadowed")
    assert [v.variant_name for v in described.production_variants] == ["prod"]
    (shadow,) = described.shadow_production_variants
    assert (shadow.variant_name, shadow.current_weight, shadow.desired_weight) == ("shadow", 1.0, 1.0)
    assert (shadow.current_instance_count, shadow.desired_instance_count) == (1, 1)
    assert shadow.deployed_images[0].specified_image == "onnxruntime"
    capture = described.data_capture_config
    assert (capture.enable_capture, capture.capture_status, capture.current_sampling_percentage,
            capture.destination_s3_uri) == (True, "Started", 50, capture_uri)
    assert list(described.automatic_weight_changes) == []


def test_the_routing_table_lists_the_shadow_apart_with_its_sampling_fraction(plane, endpoint, capture_uri):
    _, stub = plane
    route = _route(stub)
    assert [v.variant_name for v in route.variants] == ["prod"]
    (shadow,) = route.shadow_variants
    assert (shadow.variant_name, shadow.model_name, shadow.weight) == ("shadow", "minus", 0.5)  # 1 / 2
    assert [t.name for t in shadow.inputs] == ["x"] and [t.name for t in shadow.outputs] == ["y"]
    # the shadow's own model server runs and answers
    answer = infer(shadow.instances[0].address, "minus", np.array([[1.0, 2.0]], np.float32), "x")
    np.testing.assert_allclose(answer["y"], [[0.0, 1.0]])
    assert route.data_capture.enable_capture and route.data_capture.initial_sampling_percentage == 50
    assert route.data_capture.destination_s3_uri == capture_uri
    assert list(route.data_capture.capture_modes) == ["Input", "Output"]


def test_a_weight_change_on_the_shadow_changes_its_fraction_in_the_next_table(plane, endpoint):
    _, stub = plane
    stub.UpdateEndpointWeightsAndCapacities(pb.UpdateEndpointWeightsAndCapacitiesRequest(
        endpoint_name="shadowed", desired_weights_and_capacities=[pb.DesiredWeightAndCapacity(variant_name="shadow", desired_weight=0.5)],
    ))
    route = _route(stub, lambda r: r.shadow_variants[0].weight != 0.5)
    assert route.shadow_variants[0].weight == 0.25 and [v.weight for v in route.variants] == [2.0]
    described = wait_status(stub, "shadowed", ("InService",))
    assert described.shadow_production_variants[0].current_weight == 0.5


def test_a_restarted_control_plane_keeps_the_shadow(plane, endpoint, module_services, data_dir, capture_uri):
    service, stub = plane
    before = _route(stub, lambda r: r.shadow_variants[0].weight == 0.25).shadow_variants[0].instances[0]
    service.kill()  # a crash: the model servers live on and are adopted
    restarted = module_services(["control-plane", "--data-dir", str(data_dir), "--port", "0"])
    stub = control_stub(restarted.address)
    config = stub.DescribeEndpointConfig(pb.DescribeEndpointConfigRequest(endpoint_config_name="shadow-config"))
    assert [v.variant_name for v in config.shadow_production_variants] == ["shadow"]
    described = wait_status(stub, "shadowed", ("InService",))
    assert [(v.variant_name, v.current_weight, v.current_instance_count) for v in described.shadow_production_variants] == [
        ("shadow", 0.5, 1),
    ]
    assert described.data_capture_config.destination_s3_uri == capture_uri
    route = _route(stub)
    assert route.shadow_variants[0].weight == 0.25
    assert (route.shadow_variants[0].instances[0].instance_id, route.shadow_variants[0].instances[0].address) == (
        before.instance_id, before.address,
    )
    assert route.data_capture.enable_capture
