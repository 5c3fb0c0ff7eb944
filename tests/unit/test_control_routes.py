"""Routing tables: what is routable, versions, and subscribers that read at their own pace."""

from __future__ import annotations

import asyncio

import pytest

from mve.control.records import (
    Batching,
    EndpointConfigRecord,
    EndpointRecord,
    InstanceRecord,
    ModelRecord,
    TensorSpec,
    VariantSpec,
    VariantState,
)
from mve.control.routes import RoutePublisher, build_endpoint_routes
from mve.control.store import SqliteStore


def _model(name: str) -> ModelRecord:
    return ModelRecord(
        name, f"arn/{name}", "onnxruntime", "/m.onnx", {}, "/a.onnx", "00", 1,
        [TensorSpec("X", "FP32", (-1, 4))], [TensorSpec("Y", "FP32", (-1, 2))], 0.0,
    )


CONFIG = EndpointConfigRecord(
    name="c",
    arn="arn/c",
    production_variants=[
        VariantSpec("A", "ma", 1, "ml.cpu.small", 1.0, "RANDOM", 600),
        VariantSpec("B", "mb", 2, "ml.cpu.small", 3.0, "LEAST_OUTSTANDING_REQUESTS", 600, Batching(8, 1000, 2)),
    ],
    data_capture={},
    creation_time=0.0,
)


def _endpoint(name: str, status: str, weight_b: float = 3.0) -> EndpointRecord:
    return EndpointRecord(
        name, f"arn/{name}", "c", status, "", 0.0, 0.0,
        [VariantState("A", 1.0, 1.0, 1), VariantState("B", weight_b, weight_b, 2)],
    )


INSTANCES = [
    InstanceRecord("e", "A", "A-1", 1, "127.0.0.1:1001", "InService", 1.0),
    InstanceRecord("e", "B", "B-2", 2, "127.0.0.1:1002", "InService", 1.0),
    InstanceRecord("e", "B", "B-3", 3, "", "Starting", 2.0),
    InstanceRecord("e", "B", "B-4", 4, "127.0.0.1:1004", "Stopping", 2.0),
]


def test_only_routable_endpoints_and_ready_instances_are_listed():
    endpoints = [_endpoint("e", "InService"), _endpoint("creating", "Creating"), _endpoint("failed", "Failed")]
    routes = build_endpoint_routes(endpoints, {"c": CONFIG}, {"ma": _model("ma"), "mb": _model("mb")}, INSTANCES)
    assert [r.endpoint_name for r in routes] == ["e"]
    a, b = routes[0].variants
    assert (a.variant_name, a.model_name, a.weight, a.routing_strategy) == ("A", "ma", 1.0, "RANDOM")
    assert [i.address for i in a.instances] == ["127.0.0.1:1001"]
    assert [i.instance_id for i in b.instances] == ["B-2"]  # not starting, not stopping
    assert (b.batching.max_batch_size, b.batching.max_delay_us, b.batching.max_batches_in_flight_per_instance) == (
        8, 1000, 2,
    )
    assert b.routing_strategy == "LEAST_OUTSTANDING_REQUESTS"
    assert [(t.name, t.datatype, list(t.shape)) for t in a.inputs] == [("X", "FP32", [-1, 4])]


def test_a_variant_with_weight_zero_stays_in_the_table():
    routes = build_endpoint_routes(
        [_endpoint("e", "Updating", weight_b=0.0)], {"c": CONFIG}, {"ma": _model("ma"), "mb": _model("mb")}, INSTANCES
    )
    assert [(v.variant_name, v.weight) for v in routes[0].variants] == [("A", 1.0), ("B", 0.0)]


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "mve.db")
    s.insert_model(_model("ma"))
    s.insert_model(_model("mb"))
    s.insert_config(CONFIG)
    yield s
    s.close()


def test_versions_increase_only_when_the_table_changes(store):
    publisher = RoutePublisher(store)
    first = publisher.current
    assert publisher.publish().version == first.version  # nothing changed
    store.insert_endpoint(_endpoint("e", "InService"))
    second = publisher.publish()
    assert second.version > first.version
    assert [r.endpoint_name for r in second.endpoints] == ["e"]
    assert second.control_plane_id == store.control_plane_id()


def test_subscribers_get_the_current_table_then_the_newest_one(store):
    async def scenario():
        publisher = RoutePublisher(store)
        fast = publisher.subscribe()
        slow = publisher.subscribe()
        first = await anext(fast)
        assert (await anext(slow)).version == first.version
        endpoint = _endpoint("e", "InService")
        store.insert_endpoint(endpoint)
        publisher.publish()
        assert [r.endpoint_name for r in (await anext(fast)).endpoints] == ["e"]
        for weight in (5.0, 6.0, 7.0):  # the slow reader is not reading meanwhile
            endpoint.variants[0].current_weight = weight
            store.save_endpoint(endpoint)
            table = publisher.publish()
            assert (await anext(fast)).version == table.version
        newest = await asyncio.wait_for(anext(slow), 1.0)
        assert newest.version == table.version  # stale tables skipped, nothing blocked
        assert newest.endpoints[0].variants[0].weight == 7.0
        await fast.aclose()
        await slow.aclose()
        assert publisher.subscriber_count == 0

    asyncio.run(scenario())
