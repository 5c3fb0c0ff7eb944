"""The SQLite store: records round-trip, survive a reopen, and names stay unique."""

from __future__ import annotations

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
from mve.control.store import SqliteStore
from mve.errors import ResourceAlreadyExists


def model(name="m", sha="ab" * 32) -> ModelRecord:
    return ModelRecord(
        name=name,
        arn=f"arn:model/{name}",
        image="onnxruntime",
        model_data_url="/src/m.onnx",
        environment={"OMP_NUM_THREADS": "1"},
        artifact_path=f"/data/artifacts/sha256/{sha}.onnx",
        artifact_sha256=sha,
        artifact_size_bytes=123,
        inputs=[TensorSpec("X", "FP32", (-1, 30))],
        outputs=[TensorSpec("label", "INT64", (-1,))],
        creation_time=1.0,
        tags={"team": "ml"},
    )


def config(name="c", model_name="m") -> EndpointConfigRecord:
    return EndpointConfigRecord(
        name=name,
        arn=f"arn:endpoint-config/{name}",
        production_variants=[
            VariantSpec("A", model_name, 2, "ml.cpu.small", 1.0, "RANDOM", 600, Batching(8, 500, 1)),
        ],
        data_capture={"enable_capture": True},
        creation_time=2.0,
    )


def endpoint(name="e", config_name="c") -> EndpointRecord:
    return EndpointRecord(
        name=name,
        arn=f"arn:endpoint/{name}",
        config_name=config_name,
        status="Creating",
        failure_reason="",
        creation_time=3.0,
        last_modified_time=3.0,
        variants=[VariantState("A", 1.0, 1.0, 2, "Creating", "", 3.0), VariantState("B", 3.0, 3.0, 1)],
    )


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "mve.db")
    yield s
    s.close()


def test_models_round_trip_and_names_are_unique(store):
    store.insert_model(model())
    assert store.get_model("m") == model()
    assert store.get_model("other") is None
    with pytest.raises(ResourceAlreadyExists, match="Cannot create already existing model"):
        store.insert_model(model())
    assert store.artifact_in_use("ab" * 32)
    assert store.delete_model("m")
    assert not store.delete_model("m")
    assert store.list_models() == []


def test_configs_round_trip_and_know_their_models(store):
    store.insert_config(config())
    assert store.get_config("c") == config()
    assert store.configs_using_model("m") == ["c"]
    with pytest.raises(ResourceAlreadyExists, match="endpoint configuration"):
        store.insert_config(config())
    assert store.delete_config("c")
    assert store.configs_using_model("m") == []


def test_endpoints_keep_variant_order_and_state(store):
    store.insert_endpoint(endpoint())
    record = store.get_endpoint("e")
    assert record == endpoint()
    record.status = "InService"
    record.variants[1].desired_instance_count = 4
    store.save_endpoint(record)
    assert store.get_endpoint("e").variants[1].desired_instance_count == 4
    assert store.endpoints_using_config("c") == ["e"]
    with pytest.raises(ResourceAlreadyExists, match="Cannot create already existing endpoint"):
        store.insert_endpoint(endpoint())


def test_deleting_an_endpoint_forgets_its_instances(store):
    store.insert_endpoint(endpoint())
    store.put_instance(InstanceRecord("e", "A", "A-1", 100, "127.0.0.1:1", "InService", 5.0))
    store.put_instance(InstanceRecord("e", "A", "A-0", 99, "", "Starting", 4.0))
    assert [i.instance_id for i in store.list_instances("e")] == ["A-0", "A-1"]
    assert store.delete_endpoint("e")
    assert store.list_instances() == []
    assert store.get_endpoint("e") is None


def test_everything_survives_a_reopen_and_route_versions_keep_increasing(tmp_path):
    first = SqliteStore(tmp_path / "mve.db")
    first.insert_model(model())
    first.insert_config(config())
    first.insert_endpoint(endpoint())
    first.put_instance(InstanceRecord("e", "A", "A-1", 100, "127.0.0.1:1", "InService", 5.0, "/log"))
    versions = [first.next_route_version(), first.next_route_version()]
    plane_id = first.control_plane_id()
    first.close()

    second = SqliteStore(tmp_path / "mve.db")
    assert second.get_model("m") == model()
    assert second.get_config("c") == config()
    assert second.get_endpoint("e") == endpoint()
    assert second.list_instances("e")[0].log_path == "/log"
    assert second.control_plane_id() == plane_id
    assert second.next_route_version() > max(versions)
    second.close()


def test_store_uses_wal_mode(tmp_path):
    store = SqliteStore(tmp_path / "mve.db")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
