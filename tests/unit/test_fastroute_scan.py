"""`_fastroute.scan_infer_request` reads what routing needs of a serialised ModelInferRequest as
protobuf itself reads it: checked against the protobuf runtime on generated messages, on messages
with repeated and merged fields, and on bytes that are not a message."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from mve._fastroute import scan_infer_request
from mve._proto import grpc_predict_v2_pb2 as pb

text = st.text(max_size=20)
PARAMETER_KINDS = ("bool_param", "int64_param", "string_param", "double_param", "uint64_param", None)


def _expected(data: bytes):
    """What the proxy read of the message before the scan: the protobuf runtime's view."""
    request = pb.ModelInferRequest.FromString(data)

    def param(name):
        value = request.parameters.get(name)
        if value is None:
            return ""
        return value.string_param if value.WhichOneof("parameter_choice") == "string_param" else None

    raw = len(request.raw_input_contents)
    forwardable = raw > 0 and raw == len(request.inputs) and not any(t.HasField("contents") for t in request.inputs)
    return request.model_name, request.id, param("target_variant"), param("routing_key"), forwardable


def _set(parameter, kind, value):
    if kind == "bool_param":
        parameter.bool_param = bool(len(value) % 2)
    elif kind == "int64_param":
        parameter.int64_param = -len(value)
    elif kind == "string_param":
        parameter.string_param = value
    elif kind == "double_param":
        parameter.double_param = 0.5
    elif kind == "uint64_param":
        parameter.uint64_param = len(value)


@st.composite
def requests(draw):
    request = pb.ModelInferRequest(model_name=draw(text), model_version=draw(text), id=draw(text))
    for name in draw(st.lists(st.sampled_from(["target_variant", "routing_key", "other", ""]), max_size=4)):
        _set(request.parameters[name], draw(st.sampled_from(PARAMETER_KINDS)), draw(text))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(text), datatype="FP32", shape=draw(st.lists(st.integers(0, 9), max_size=3)))
        if draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32, allow_nan=False), max_size=3)))
        tensor.parameters["p"].string_param = draw(text)
    for _ in range(draw(st.integers(0, 3))):
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    request.outputs.add(name=draw(text))
    return request.SerializeToString()


@settings(max_examples=300, deadline=None)
@given(requests())
def test_the_scan_agrees_with_protobuf(data):
    assert scan_infer_request(data) == _expected(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(requests(), min_size=2, max_size=3))
def test_concatenated_messages_merge_as_protobuf_merges_them(parts):
    data = b"".join(parts)          # last value of a field wins, map entries by key, repeated fields add up
    assert scan_infer_request(data) == _expected(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_bytes_protobuf_refuses_are_refused(data):
    try:
        expected = _expected(data)
    except DecodeError:
        with pytest.raises(ValueError):
            scan_infer_request(data)
        return
    try:
        assert scan_infer_request(data) == expected
    except ValueError:
        pass    # the scan may refuse more (groups, which proto3 never writes): the proxy then answers ValidationError


def test_a_routing_parameter_that_is_not_a_string_is_none():
    request = pb.ModelInferRequest(model_name="ep")
    request.parameters["target_variant"].int64_param = 3
    request.parameters["routing_key"].string_param = "user-7"
    assert scan_infer_request(request.SerializeToString()) == ("ep", "", None, "user-7", False)


def test_a_string_that_is_not_utf8_is_refused():
    with pytest.raises(ValueError, match="UTF-8"):
        scan_infer_request(b"\x0a\x02\xff\xfe")
    assert scan_infer_request(b"") == ("", "", "", "", False)
