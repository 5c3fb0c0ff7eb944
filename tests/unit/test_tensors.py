"""Open Inference Protocol tensors <-> numpy: datatypes, raw bytes, typed contents, BYTES."""

from __future__ import annotations

import numpy as np
import pytest

from mve import tensors
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import ValidationError


@pytest.mark.parametrize("datatype", [d for d in tensors.DATATYPE_TO_DTYPE if d != "BYTES"])
def test_raw_round_trip_every_numeric_datatype(datatype):
    array = (np.arange(6) % 2).astype(tensors.DATATYPE_TO_DTYPE[datatype]).reshape(2, 3)
    assert tensors.datatype_of(array) == datatype
    back = tensors.raw_to_numpy(tensors.numpy_to_raw(array), datatype, [2, 3])
    np.testing.assert_array_equal(back, array)


def test_big_endian_arrays_are_sent_little_endian():
    array = np.arange(4, dtype=">f4")
    raw = tensors.numpy_to_raw(array)
    assert raw == np.arange(4, dtype="<f4").tobytes()


def test_bytes_tensor_round_trip():
    array = np.array([b"a", b"", "\u00e9t\u00e9".encode()], dtype=object)
    raw = tensors.numpy_to_raw(array)
    assert raw[:5] == b"\x01\x00\x00\x00a"
    np.testing.assert_array_equal(tensors.raw_to_numpy(raw, "BYTES", [3]), array)


@pytest.mark.parametrize(
    "raw, count, message",
    [(b"\x05\x00\x00\x00ab", 1, "overruns"), (b"\x01\x00", 1, "inside"), (b"\x00\x00\x00\x00x", 1, "left")],
)
def test_malformed_bytes_tensor_is_a_validation_error(raw, count, message):
    with pytest.raises(ValidationError, match=message):
        tensors.decode_bytes_tensor(raw, count, "text")


def test_raw_size_mismatch_names_the_input():
    with pytest.raises(ValidationError, match="input 'x'.*expected 24"):
        tensors.raw_to_numpy(b"\0" * 20, "FP32", [2, 3], name="x")


def test_negative_dimension_and_unknown_datatype_are_rejected():
    with pytest.raises(ValidationError, match="negative"):
        tensors.raw_to_numpy(b"", "FP32", [-1, 3])
    with pytest.raises(ValidationError, match="unknown datatype 'FP8'"):
        tensors.raw_to_numpy(b"", "FP8", [0])


def test_typed_contents_to_numpy():
    contents = pb.InferTensorContents(fp32_contents=[1, 2, 3, 4])
    np.testing.assert_array_equal(
        tensors.contents_to_numpy(contents, "FP32", [2, 2]), np.array([[1, 2], [3, 4]], np.float32)
    )
    with pytest.raises(ValidationError, match="3 values"):
        tensors.contents_to_numpy(pb.InferTensorContents(int_contents=[1, 2, 3]), "INT32", [2, 2])
    with pytest.raises(ValidationError, match="cannot be sent as typed"):
        tensors.contents_to_numpy(contents, "FP16", [4])
