"""The generated stubs import and match the .proto files under protos/ (no stale build)."""

from __future__ import annotations

import importlib
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

PROTOS = (Path(__file__).resolve().parents[2] / "protos").resolve()
PROTO_FILES = sorted(PROTOS.rglob("*.proto"))


def _compiled(proto: Path, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "set.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}", f"--descriptor_set_out={out}", str(proto)]
    )
    assert rc == 0, f"protoc failed on {proto}"
    file_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return file_set.file[0]


def _contract(file_proto: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """What clients depend on: package, messages, enums, services (not the file's path)."""
    contract = descriptor_pb2.FileDescriptorProto()
    contract.CopyFrom(file_proto)
    contract.ClearField("name")
    contract.ClearField("source_code_info")
    messages = list(contract.message_type)
    while messages:  # protoc fills json_name in descriptor sets only; it is derived, not declared
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    return contract


def test_every_proto_is_covered():
    assert {p.name for p in PROTO_FILES} == {
        "grpc_predict_v2.proto", "control.proto", "runtime.proto", "metrics.proto", "autoscaling.proto",
        "experiments.proto", "keys.proto",
    }


@pytest.mark.parametrize("proto", PROTO_FILES, ids=lambda p: p.name)
def test_generated_stubs_match_proto(proto: Path, tmp_path: Path):
    module = importlib.import_module(f"mve._proto.{proto.stem}_pb2")
    importlib.import_module(f"mve._proto.{proto.stem}_pb2_grpc")
    generated = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(generated)
    assert _contract(generated) == _contract(_compiled(proto, tmp_path)), (
        f"mve/_proto/{proto.stem}_pb2.py is stale: rebuild with `python setup.py build_protos`"
    )


def test_open_inference_protocol_wire_names():
    from mve._proto import grpc_predict_v2_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    ]
    fields = {f.name: f.number for f in pb.ModelInferRequest.DESCRIPTOR.fields}
    assert fields == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
        "inputs": 5, "outputs": 6, "raw_input_contents": 7,
    }
    assert {f.name: f.number for f in pb.ModelInferResponse.DESCRIPTOR.fields}["raw_output_contents"] == 6


def test_access_keys_service_and_signing_keys():
    from mve._proto import control_pb2, keys_pb2

    service = keys_pb2.DESCRIPTOR.services_by_name["AccessKeys"]
    assert service.full_name == "mve.v1.AccessKeys"
    assert [m.name for m in service.methods] == ["CreateAccessKey", "ListAccessKeys", "DeleteAccessKey"]
    assert set(keys_pb2.CreateAccessKeyResponse.DESCRIPTOR.fields_by_name) == {"access_key", "secret_access_key"}
    assert "secret_access_key" not in keys_pb2.AccessKeyMetadata.DESCRIPTOR.fields_by_name
    table = control_pb2.RoutingTable.DESCRIPTOR.fields_by_name
    assert table["signing_keys"].message_type.full_name == "mve.v1.SigningKey"
    assert table["auth_required"].type == table["auth_required"].TYPE_BOOL
    assert set(control_pb2.SigningKey.DESCRIPTOR.fields_by_name) == {"access_key_id", "date", "date_key"}
