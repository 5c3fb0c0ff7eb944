"""Routing tables with shadow variants and data capture: sampling fractions, capture, and updates."""

from __future__ import annotations

import pytest

from mve.control.records import (
    DeploymentPhase,
    DeploymentRecord,
    EndpointConfigRecord,
    EndpointRecord,
    GreenVariant,
    InstanceRecord,
    ModelRecord,
    TensorSpec,
    VariantSpec,
    VariantState,
)
from mve.control.routes import build_endpoint_routes, production_shares, sampling_fraction

CAPTURE = {
    "enable_capture": True,
    "initial_sampling_percentage": 20,
    "destination_s3_uri": "/var/capture",
    "capture_modes": ["Input"],
    "csv_content_types": ["text/csv"],
    "json_content_types": [],
}


def spec(name: str, model: str = "m", weight: float = 1.0) -> VariantSpec:
    return VariantSpec(name, model, 1, "ml.cpu.small", weight, "RANDOM", 600)


def model(name: str) -> ModelRecord:
    return ModelRecord(name, f"arn/{name}", "onnxruntime", "/m.onnx", {}, "/a.onnx", "00", 1,
                       [TensorSpec("X", "FP32", (-1, 4))], [TensorSpec("Y", "FP32", (-1, 2))], 0.0)


MODELS = {"m": model("m"), "shadow-model": model("shadow-model")}


def config(name="c", capture=CAPTURE, shadows=(("S", 1.0),)) -> EndpointConfigRecord:
    return EndpointConfigRecord(
        name, f"arn/{name}", [spec("A", weight=1.0), spec("B", weight=3.0)], dict(capture), 0.0,
        shadow_variants=[spec(s, "shadow-model", w) for s, w in shadows],
    )


def endpoint(a=1.0, b=3.0, s=1.0, status="InService", config_name="c") -> EndpointRecord:
    return EndpointRecord("e", "arn/e", config_name, status, "", 0.0, 0.0, [
        VariantState("A", a, a, 1), VariantState("B", b, b, 1), VariantState("S", s, s, 1, shadow=True),
    ])


INSTANCES = [
    InstanceRecord("e", "A", "A-1", 1, "127.0.0.1:1001", "InService", 1.0),
    InstanceRecord("e", "B", "B-1", 2, "127.0.0.1:1002", "InService", 1.0),
    InstanceRecord("e", "S", "S-1", 3, "127.0.0.1:1003", "InService", 1.0),
    InstanceRecord("e", "S", "S-2", 4, "", "Starting", 2.0),
]


def route_of(endpoint_record, configs=None, deployments=None, instances=INSTANCES):
    (route,) = build_endpoint_routes([endpoint_record], configs or {"c": config()}, MODELS, instances, deployments)
    return route


@pytest.mark.parametrize(
    "shadow_weight, production_sum, fraction",
    [(1.0, 4.0, 0.25), (4.0, 4.0, 1.0), (10.0, 4.0, 1.0), (0.0, 4.0, 0.0), (1.0, 0.0, 0.0)],
)
def test_the_sampling_fraction_is_the_shadow_weight_over_the_production_sum_at_most_1(shadow_weight, production_sum, fraction):
    assert sampling_fraction(shadow_weight, production_sum) == fraction


def test_shadows_are_listed_apart_from_production_with_their_sampling_fraction():
    route = route_of(endpoint())
    assert [(v.variant_name, v.weight) for v in route.variants] == [("A", 1.0), ("B", 3.0)]
    (shadow,) = route.shadow_variants
    assert (shadow.variant_name, shadow.model_name, shadow.weight, shadow.fleet) == ("S", "shadow-model", 0.25, "")
    assert [i.instance_id for i in shadow.instances] == ["S-1"]  # healthy instances only
    assert [(t.name, list(t.shape)) for t in shadow.inputs] == [("X", [-1, 4])]
    assert [t.name for t in shadow.outputs] == ["Y"]


def test_the_fraction_follows_the_current_weights():
    assert route_of(endpoint(a=1.0, b=1.0, s=1.0)).shadow_variants[0].weight == 0.5
    assert route_of(endpoint(a=1.0, b=1.0, s=5.0)).shadow_variants[0].weight == 1.0


def test_data_capture_is_in_the_table_only_when_enabled():
    route = route_of(endpoint())
    assert route.HasField("data_capture")
    assert (route.data_capture.enable_capture, route.data_capture.initial_sampling_percentage,
            route.data_capture.destination_s3_uri, list(route.data_capture.capture_modes),
            list(route.data_capture.csv_content_types)) == (True, 20, "/var/capture", ["Input"], ["text/csv"])
    off = route_of(endpoint(), {"c": config(capture={**CAPTURE, "enable_capture": False})})
    assert not off.HasField("data_capture")
    none = route_of(endpoint(), {"c": config(capture={})})
    assert not none.HasField("data_capture")


def test_a_retained_data_capture_wins_over_the_configs():
    retained = endpoint()
    retained.data_capture = {}
    assert not route_of(retained).HasField("data_capture")
    retained.data_capture = {**CAPTURE, "initial_sampling_percentage": 70}
    assert route_of(retained, {"c": config(capture={})}).data_capture.initial_sampling_percentage == 70


def test_during_an_update_blue_keeps_its_shadows_and_capture_until_the_switch():
    configs = {"c": config(), "new": config("new", capture={}, shadows=(("T", 2.0),))}
    deployment = DeploymentRecord(
        "e", "c", "new", {}, [GreenVariant("A", 1.0, 1), GreenVariant("T", 2.0, 1, shadow=True)],
        DeploymentPhase.BAKING, 0.5, 0.0, 0.0,
    )
    green_t = InstanceRecord("e", "T", "T-1", 9, "127.0.0.1:1009", "InService", 1.0, "", "new")
    route = route_of(endpoint(status="Updating"), configs, {"e": deployment}, INSTANCES + [green_t])
    assert sorted((v.variant_name, v.fleet, round(v.weight, 6)) for v in route.variants) == [
        ("A", "blue", 0.125), ("A", "green", 0.5), ("B", "blue", 0.375),
    ]  # the green shadow T takes no share of the traffic
    assert [(s.variant_name, s.weight) for s in route.shadow_variants] == [("S", 0.25)]
    assert route.data_capture.destination_s3_uri == "/var/capture"


def test_production_shares_add_both_fleets_once_traffic_moves():
    deployment = DeploymentRecord("e", "c", "new", {}, [GreenVariant("B", 1.0, 1), GreenVariant("C", 1.0, 1),
                                                        GreenVariant("T", 9.0, 1, shadow=True)],
                                  DeploymentPhase.SHIFTING, 0.2, 0.0, 0.0)
    assert production_shares(endpoint()) == {"A": 1.0, "B": 3.0}  # shadows are not production
    assert production_shares(endpoint(), DeploymentRecord(**{**deployment.__dict__, "green_share": 0.0})) == {"A": 1.0, "B": 3.0}
    shares = production_shares(endpoint(), deployment)
    assert shares == pytest.approx({"A": 0.2, "B": 0.6 + 0.1, "C": 0.1})
