"""Hostile input against every RPC of the control plane, the proxy and a model server (issue 19).

Hypothesis sends each method the services expose: random bytes, a valid request with bytes flipped
or cut short, and messages built from the method's own descriptor with random field values (long
strings, invalid UTF-8 in string fields, NaN, infinities, negative and huge numbers, nested and
repeated fields). Hand-made cases add what random bytes rarely find: 100 MB payloads, deeply nested
JSON, bad CSV and npy headers, tensors whose sizes or datatypes do not match, BYTES tensors with
wrong length prefixes.

Every call must end with OK or a clear error: never UNKNOWN, never INTERNAL unless it is the model's
own failure (ModelError), and an application error always carries its SageMaker-style reason. No
process dies, each process's memory stays bounded, and the store is unchanged by refused calls.

``MVE_FUZZ_EXAMPLES`` sets the random examples per method and strategy (default 20, for CI); a
longer run is e.g. ``MVE_FUZZ_EXAMPLES=2000 pytest tests/integration/test_fuzz.py``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor as pb_descriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import wait_until
from tiny_models import build_model, npy

import mve
from mve._proto import autoscaling_pb2, control_pb2, experiments_pb2, metrics_pb2, runtime_pb2
from mve._proto import grpc_predict_v2_pb2 as oip
from mve.errors import reason_of

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MVE_FUZZ_EXAMPLES", "20"))
# Names no random string will hit: the fuzzing must not delete what the checks rely on.
MODEL, ENDPOINT = "fuzz-model-7f3a9c", "fuzz-endpoint-7f3a9c"
CALL_TIMEOUT_S = 10.0
# Errors grpc itself gives before a handler runs, which carry no ErrorInfo: a message over the size
# limit, a method the server does not have, a stream cut by the test's own deadline.
TRANSPORT_CODES = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DEADLINE_EXCEEDED}
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}

CONTROL_SERVICES = [
    control_pb2.DESCRIPTOR.services_by_name["EndpointControl"],
    metrics_pb2.DESCRIPTOR.services_by_name["CloudWatch"],
    autoscaling_pb2.DESCRIPTOR.services_by_name["ApplicationAutoScaling"],
    experiments_pb2.DESCRIPTOR.services_by_name["Experiments"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
]
PROXY_SERVICES = [
    runtime_pb2.DESCRIPTOR.services_by_name["EndpointRuntime"],
    oip.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
]
MODEL_SERVER_SERVICES = [oip.DESCRIPTOR.services_by_name["GRPCInferenceService"], health_pb2.DESCRIPTOR.services_by_name["Health"]]


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


# ---------------------------------------------------------------- the mesh under attack


@pytest.fixture(scope="module")
def mesh(module_services, tmp_path_factory):
    """Control plane, proxy, an endpoint on the tiny "plus" model, and a standalone model server."""
    root = tmp_path_factory.mktemp("fuzz")
    build_model(root / "plus.onnx", "plus")
    cp = module_services(["control-plane", "--data-dir", str(root / "cp"), "--port", "0"])
    proxy = module_services(["proxy", "--control-plane", cp.address, "--port", "0", "--metrics-port", "0"])
    model_server = module_services(["model-server", "--model", str(root / "plus.onnx"), "--port", "0"])
    sm = mve.client("sagemaker", address=cp.address)
    sm.create_model(ModelName=MODEL, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(root / "plus.onnx")})
    sm.create_endpoint_config(EndpointConfigName=ENDPOINT, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": MODEL, "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small"}])
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=ENDPOINT)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    runtime = mve.client("sagemaker-runtime", address=proxy.address)
    body = npy(np.ones((1, 2), np.float32))
    wait_until(lambda: _answers(runtime, body), timeout=30, what="the proxy serves the endpoint")
    yield {"control": cp, "proxy": proxy, "model_server": model_server, "sm": sm}
    runtime.close()
    sm.close()


def _answers(runtime, body) -> bool:
    try:
        runtime.invoke_endpoint(EndpointName=ENDPOINT, Body=body, ContentType="application/x-npy")
        return True
    except Exception:  # noqa: BLE001 - not routed yet
        return False


def _store_snapshot(sm) -> tuple:
    return (
        sorted(m["ModelName"] for m in sm.list_models()["Models"]),
        sorted(c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]),
        sorted((e["EndpointName"], e["EndpointStatus"]) for e in sm.list_endpoints()["Endpoints"]),
    )


# ---------------------------------------------------------------- calling a method with raw bytes


class Caller:
    """Sends raw request bytes to any method of one address and judges the answer."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1),
                                                               ("grpc.max_receive_message_length", -1)])
        self.calls = 0
        self.by_code: dict[str, int] = {}

    def call(self, method: pb_descriptor.MethodDescriptor, payload: bytes) -> grpc.StatusCode:
        """Send `payload` to `method`; assert the outcome is OK or a clear error; return its code."""
        path = f"/{method.containing_service.full_name}/{method.name}"
        self.calls += 1
        try:
            if method.server_streaming:
                stream = self.channel.unary_stream(path)(payload, timeout=1.0)
                try:
                    next(iter(stream), None)  # the first message (WatchRoutes, Watch stream forever)
                finally:
                    stream.cancel()
            else:
                self.channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT_S)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.CANCELLED and method.server_streaming:
                code = grpc.StatusCode.OK  # our own cancel after the first message
            else:
                _judge(path, payload, error)
        self.by_code[code.name] = self.by_code.get(code.name, 0) + 1
        return code

    def close(self) -> None:
        self.channel.close()


def _judge(path: str, payload: bytes, error: grpc.RpcError) -> None:
    code, details, reason = error.code(), error.details() or "", reason_of(error)
    where = f"{path} with {len(payload)} bytes {payload[:60]!r}: {code.name} {details[:200]!r}"
    assert code not in NEVER, f"unclear error from {where}"
    if code == grpc.StatusCode.INTERNAL:
        assert reason == "ModelError", f"INTERNAL that is not the model's own failure from {where}"
    if path.startswith("/grpc.health.v1.Health/") and code == grpc.StatusCode.NOT_FOUND:
        return  # grpc.health.v1's own answer for a service it does not know, as the protocol defines it
    if code not in TRANSPORT_CODES:
        assert reason, f"an error without a SageMaker-style reason from {where}"
    assert details, f"an error without a message from {where}"


# ---------------------------------------------------------------- messages from descriptors

FD = pb_descriptor.FieldDescriptor
INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1), FD.TYPE_SINT32: (-(2**31), 2**31 - 1), FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1), FD.TYPE_SINT64: (-(2**63), 2**63 - 1), FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}
HOSTILE_TEXT = ["", " ", "AllTraffic", "Variant1", "../../etc/passwd", "a" * 100_000, "\x00", "é" * 64]


def text_strategy(known_names: tuple[str, ...]):
    """Strings: random, name-like, hostile, and `known_names` (to reach past the not-found checks)."""
    return st.one_of(
        st.text(max_size=20),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=70),
        st.sampled_from(HOSTILE_TEXT + list(known_names)),
    )


# The control plane is fuzzed without the names of what exists (a random DeleteEndpoint must not
# delete the endpoint the other checks use); the data plane with them, to reach the model.
KNOWN_NAMES = {"control": (), "proxy": (ENDPOINT,), "model_server": ("plus",)}


def _scalar(field, data, text):
    if field.type == FD.TYPE_STRING:
        return data.draw(text)
    if field.type == FD.TYPE_BYTES:
        return data.draw(st.binary(max_size=64))
    if field.type == FD.TYPE_BOOL:
        return data.draw(st.booleans())
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        value = data.draw(st.floats(allow_nan=True, allow_infinity=True, width=32 if field.type == FD.TYPE_FLOAT else 64))
        return value
    if field.type == FD.TYPE_ENUM:
        return data.draw(st.sampled_from([v.number for v in field.enum_type.values]))
    low, high = INT_RANGES[field.type]
    return data.draw(st.one_of(st.integers(low, high), st.sampled_from([v for v in (0, -1, 1, low, high) if low <= v <= high])))


def random_message(descriptor, data, text, depth: int = 0):
    """A message of `descriptor` with random values in a random subset of its fields."""
    message = _message_class(descriptor)()
    for field in descriptor.fields:
        if not data.draw(st.booleans()):
            continue
        if field.type == FD.TYPE_MESSAGE:
            if depth >= 3:
                continue
            if field.message_type.GetOptions().map_entry:
                key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                target = getattr(message, field.name)
                for _ in range(data.draw(st.integers(0, 2))):
                    key = _scalar(key_field, data, text)
                    if value_field.type == FD.TYPE_MESSAGE:
                        target[key].CopyFrom(random_message(value_field.message_type, data, text, depth + 1))
                    else:
                        target[key] = _scalar(value_field, data, text)
                continue
            if field.is_repeated:
                for _ in range(data.draw(st.integers(0, 3))):
                    getattr(message, field.name).add().CopyFrom(random_message(field.message_type, data, text, depth + 1))
            else:
                getattr(message, field.name).CopyFrom(random_message(field.message_type, data, text, depth + 1))
        elif field.is_repeated:
            getattr(message, field.name).extend(_scalar(field, data, text) for _ in range(data.draw(st.integers(0, 4))))
        else:
            setattr(message, field.name, _scalar(field, data, text))
    return message


def _message_class(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def invalid_utf8_field(descriptor) -> bytes:
    """A string field of `descriptor` (top level) set to bytes that are not UTF-8, as wire bytes."""
    strings = [f for f in descriptor.fields if f.type == FD.TYPE_STRING and not f.is_repeated]
    if not strings:
        return b""
    value = b"\xff\xfe\xc3\x28"
    return _varint(strings[0].number << 3 | 2) + _varint(len(value)) + value


def methods(services) -> list[pb_descriptor.MethodDescriptor]:
    return [m for s in services for m in s.methods if not m.client_streaming]


# ---------------------------------------------------------------- the properties


def _fuzz_service(caller: Caller, method, strategy: str, known_names: tuple[str, ...]) -> None:
    text = text_strategy(known_names)
    message_type = method.input_type

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        if strategy == "random-bytes":
            payload = data.draw(st.binary(max_size=512))
        elif strategy == "mutated":
            valid = random_message(message_type, data, text).SerializeToString()
            cut = data.draw(st.integers(0, len(valid)))
            flips = data.draw(st.lists(st.tuples(st.integers(0, max(len(valid) - 1, 0)), st.integers(1, 255)), max_size=4))
            payload = bytearray(valid[:cut] if data.draw(st.booleans()) else valid)
            for index, mask in flips:
                if index < len(payload):
                    payload[index] ^= mask
            payload = bytes(payload)
        else:  # "fields": a well-formed message with hostile values, sometimes with invalid UTF-8 in a string
            payload = random_message(message_type, data, text).SerializeToString()
            if data.draw(st.booleans()):
                payload += invalid_utf8_field(message_type)
        caller.call(method, payload)

    check()


STRATEGIES = ("random-bytes", "mutated", "fields")


@pytest.mark.parametrize("target,services", [
    ("control", CONTROL_SERVICES), ("proxy", PROXY_SERVICES), ("model_server", MODEL_SERVER_SERVICES),
], ids=["control-plane", "proxy", "model-server"])
def test_every_method_answers_hostile_bytes_with_a_clear_error_and_nothing_dies(mesh, target, services):
    service = mesh[target]
    before_store = _store_snapshot(mesh["sm"])
    rss_before = rss_mb(service.process.pid)
    caller = Caller(service.address)
    started = time.monotonic()
    try:
        for method in methods(services):
            for strategy in STRATEGIES:
                _fuzz_service(caller, method, strategy, KNOWN_NAMES[target])
    finally:
        caller.close()
    elapsed = time.monotonic() - started
    print(f"\nfuzz {target}: {caller.calls} calls in {elapsed:.1f} s; codes {caller.by_code}; "
          f"RSS {rss_before:.0f} -> {rss_mb(service.process.pid):.0f} MiB")
    for name in ("control", "proxy", "model_server"):
        assert mesh[name].alive(), f"the {name} process died under fuzzing"
    assert rss_mb(service.process.pid) < rss_before + 150, "memory grew by more than 150 MiB under fuzzing"
    assert _store_snapshot(mesh["sm"]) == before_store, "refused calls changed the store"


# ---------------------------------------------------------------- hand-made hostile payloads


def _invoke(body: bytes, content_type: str, **fields) -> bytes:
    return runtime_pb2.InvokeEndpointRequest(endpoint_name=ENDPOINT, body=body, content_type=content_type,
                                             **fields).SerializeToString()


def _npy_with_header(header: bytes) -> bytes:
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _infer(model_name: str, datatype: str, shape, raw: bytes, contents=None) -> bytes:
    request = oip.ModelInferRequest(model_name=model_name)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    if contents is not None:
        tensor.contents.CopyFrom(contents)
    else:
        request.raw_input_contents.append(raw)
    return request.SerializeToString()


def _bytes_tensor_with_bad_prefix() -> bytes:
    # BYTES raw contents are 4-byte little-endian lengths, each followed by its bytes: this one claims 1000.
    return struct.pack("<I", 1000) + b"abc"


RUNTIME = runtime_pb2.DESCRIPTOR.services_by_name["EndpointRuntime"].methods_by_name["InvokeEndpoint"]
INFER = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name["ModelInfer"]
CREATE_CONFIG = control_pb2.DESCRIPTOR.services_by_name["EndpointControl"].methods_by_name["CreateEndpointConfig"]
FLOATS = np.ones((1, 2), np.float32).tobytes()

HOSTILE = [
    ("proxy", RUNTIME, "deep-json", _invoke(b"[" * 100_000 + b"]" * 100_000, "application/json")),
    ("proxy", RUNTIME, "json-not-numbers", _invoke(json.dumps({"a": [1, {"b": "c"}]}).encode(), "application/json")),
    ("proxy", RUNTIME, "csv-ragged", _invoke(b"1,2\n3\n", "text/csv")),
    ("proxy", RUNTIME, "csv-not-numbers", _invoke(b"1,x\n", "text/csv")),
    ("proxy", RUNTIME, "npy-bad-magic", _invoke(b"\x93NUMPX\x01\x00" + b"\x00" * 20, "application/x-npy")),
    ("proxy", RUNTIME, "npy-header-lies", _invoke(_npy_with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 2), }\n"), "application/x-npy")),
    ("proxy", RUNTIME, "npy-object-dtype", _invoke(_npy_with_header(b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }\n") + b"\x80\x04N.", "application/x-npy")),
    ("proxy", RUNTIME, "npy-huge-header-length", _invoke(b"\x93NUMPY\x01\x00\xff\xff" + b" " * 100, "application/x-npy")),
    ("proxy", RUNTIME, "nan-and-inf", _invoke(npy(np.array([[np.nan, np.inf]], np.float32)), "application/x-npy")),
    ("proxy", RUNTIME, "wrong-shape", _invoke(npy(np.ones((1, 3), np.float32)), "application/x-npy")),
    ("proxy", RUNTIME, "unknown-content-type", _invoke(b"1,2", "application/x-pickle")),
    ("proxy", RUNTIME, "empty-body", _invoke(b"", "text/csv")),
    ("proxy", RUNTIME, "7mb-body", _invoke(b"1," * (3_600_000) + b"1", "text/csv")),
    ("proxy", RUNTIME, "100mb-message", _invoke(b"\x00" * (100 * 1024 * 1024), "application/x-npy")),
    ("proxy", INFER, "raw-size-mismatch", _infer(ENDPOINT, "FP32", [1, 2], FLOATS[:5])),
    ("proxy", INFER, "wrong-datatype", _infer(ENDPOINT, "INT8", [1, 2], b"\x01\x02")),
    ("proxy", INFER, "negative-shape", _infer(ENDPOINT, "FP32", [-1, 2], FLOATS)),
    ("proxy", INFER, "huge-shape", _infer(ENDPOINT, "FP32", [2**62, 2**62], FLOATS)),
    ("proxy", INFER, "bytes-bad-prefix", _infer(ENDPOINT, "BYTES", [1], _bytes_tensor_with_bad_prefix())),
    ("model_server", INFER, "raw-size-mismatch", _infer("plus", "FP32", [1, 2], FLOATS[:5])),
    ("model_server", INFER, "wrong-datatype", _infer("plus", "FP64", [1, 2], FLOATS)),
    ("model_server", INFER, "huge-shape", _infer("plus", "FP32", [2**62, 2**62], FLOATS)),
    ("model_server", INFER, "bytes-bad-prefix", _infer("plus", "BYTES", [1], _bytes_tensor_with_bad_prefix())),
    ("model_server", INFER, "typed-contents-count-wrong",
     _infer("plus", "FP32", [1, 2], b"", contents=oip.InferTensorContents(fp32_contents=[1.0, 2.0, 3.0]))),
    ("model_server", INFER, "100mb-message", _infer("plus", "FP32", [1, 2], b"\x00" * (100 * 1024 * 1024))),
    ("control", CREATE_CONFIG, "100mb-message",
     control_pb2.CreateEndpointConfigRequest(endpoint_config_name="x" * (100 * 1024 * 1024)).SerializeToString()),
]


@pytest.mark.parametrize("target,method,case,payload", HOSTILE, ids=[f"{t}-{c}" for t, _, c, _ in HOSTILE])
def test_hostile_payload_gets_a_clear_error(mesh, target, method, case, payload):
    caller = Caller(mesh[target].address)
    try:
        code = caller.call(method, payload)
    finally:
        caller.close()
    if case == "nan-and-inf":
        assert code == grpc.StatusCode.OK  # a float the model computes with: not an error
    else:
        assert code != grpc.StatusCode.OK, f"{case} was accepted"
    assert mesh[target].alive()
