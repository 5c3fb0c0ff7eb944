"""`_fastroute.scan_batch_parts` reads what batching needs of a serialised ModelInferRequest from its
bytes: checked against `batch_parts` of the decoded message (the path it replaces) on generated
requests, batchable or not, and on bytes that are not a message."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mve._fastroute import scan_batch_parts
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.proxy.batching.assembly import ITEMSIZES, ROUTING_PARAMETERS, batch_parts

DATATYPES = ("FP32", "INT64", "UINT8", "FP16", "BOOL", "BYTES", "NOT_A_TYPE")
SIZES = {"FP32": 4, "INT64": 8, "UINT8": 1, "FP16": 2, "BOOL": 1}


def _expected(data: bytes):
    """What the proxy read for batching before the scan: `batch_parts` of the decoded message,
    the routing parameters removed first (as the data plane removes them)."""
    request = pb.ModelInferRequest.FromString(data)
    if any(tensor.HasField("contents") for tensor in request.inputs):
        return None     # typed contents take the decoding path, which converts or refuses them
    for name in ROUTING_PARAMETERS:
        if name in request.parameters:
            del request.parameters[name]
    return batch_parts(request)


def _scanned(data: bytes):
    parts = scan_batch_parts(data, ITEMSIZES, ROUTING_PARAMETERS)
    if parts is None:
        return None
    key, raws, rows = parts
    return key, [bytes(raw) for raw in raws], rows


@st.composite
def requests(draw):
    request = pb.ModelInferRequest(model_name=draw(st.text(max_size=8)), id=draw(st.text(max_size=8)))
    for name in draw(st.lists(st.sampled_from(["target_variant", "routing_key", "temperature"]), max_size=3)):
        request.parameters[name].string_param = draw(st.text(max_size=6))
    rows = draw(st.integers(-1, 4))
    for index in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from(DATATYPES))
        width = draw(st.integers(0, 3))
        own_rows = rows if draw(st.integers(0, 9)) else draw(st.integers(-2, 5))   # mostly agreeing rows
        shape = draw(st.sampled_from([[own_rows, width], [own_rows], [], [own_rows, width, 2]]))
        tensor = request.inputs.add(name=f"x{index}", datatype=datatype, shape=shape)
        if draw(st.integers(0, 9)) == 0:
            tensor.contents.fp32_contents.append(1.0)
        if draw(st.booleans()):
            tensor.parameters["scale"].double_param = draw(st.floats(allow_nan=False))
        size = SIZES.get(datatype, 1)
        count = 1
        for dim in shape:
            count *= max(dim, 0)
        length = count * size if draw(st.integers(0, 9)) else draw(st.integers(0, 40))   # mostly matching bytes
        request.raw_input_contents.append(draw(st.binary(min_size=length, max_size=length)))
    if draw(st.integers(0, 5)) == 0:
        request.raw_input_contents.append(b"\x00")       # one raw entry too many
    for name in draw(st.lists(st.sampled_from(["y", "z"]), max_size=2)):
        output = request.outputs.add(name=name)
        if draw(st.booleans()):
            output.parameters["binary_data"].bool_param = True
    return request.SerializeToString()


@settings(max_examples=600, deadline=None)
@given(requests())
def test_the_scan_agrees_with_batch_parts_of_the_decoded_request(data):
    assert _scanned(data) == _expected(data)


def test_a_batchable_request_gives_its_key_raw_bytes_and_rows_without_a_copy():
    request = pb.ModelInferRequest(model_name="ep", id="r1")
    request.parameters["target_variant"].string_param = "v2"
    request.parameters["temperature"].double_param = 0.5
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    request.inputs.add(name="m", datatype="UINT8", shape=[2])
    request.raw_input_contents.extend([bytes(range(24)), b"\x01\x00"])
    request.outputs.add(name="y")
    data = request.SerializeToString()
    key, raws, rows = scan_batch_parts(data, ITEMSIZES, ROUTING_PARAMETERS)
    assert rows == 2 and [bytes(raw) for raw in raws] == [bytes(range(24)), b"\x01\x00"]
    assert all(isinstance(raw, memoryview) and raw.obj is data for raw in raws)
    inputs, outputs, parameters = key
    assert inputs == (("x", "FP32", (3,), ()), ("m", "UINT8", (), ()))
    assert [name for name, _ in parameters] == ["temperature"]        # the routing parameter left out
    assert outputs == (request.outputs[0].SerializeToString(),)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_parts_or_none_never_an_error(data):
    parts = scan_batch_parts(data, ITEMSIZES, ROUTING_PARAMETERS)
    assert parts is None or len(parts) == 3
