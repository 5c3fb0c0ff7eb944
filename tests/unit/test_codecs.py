"""InvokeEndpoint body codecs: round trips and every way a body can be malformed."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from mve import codecs
from mve.errors import ValidationError

ROWS = np.array([[1.5, -2.0, 3.25], [0.0, 1e-7, 123456.789]])


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "body, content_type",
    [
        (npy(ROWS), "application/x-npy"),
        (json.dumps(ROWS.tolist()).encode(), "application/json"),
        (json.dumps({"instances": ROWS.tolist()}).encode(), "application/json; charset=utf-8"),
        (b"1.5,-2.0,3.25\n0,1e-7,123456.789\n", "text/csv"),
        (b"1.5,-2.0,3.25\r\n0,1e-7,123456.789", "Text/CSV"),
    ],
)
def test_every_content_type_decodes_the_same_rows(body, content_type):
    np.testing.assert_array_equal(codecs.decode(body, content_type), ROWS)


def test_npy_keeps_dtype_and_shape():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    decoded = codecs.decode(npy(array), "application/x-npy")
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, array)


def test_a_flat_json_list_and_a_single_csv_line_are_one_row():
    assert codecs.decode(b"[1, 2, 3]", "application/json").shape == (1, 3)
    assert codecs.decode(b"1,2,3", "text/csv").shape == (1, 3)


def test_json_booleans_and_ints_are_numbers():
    assert codecs.decode(b"[[true, false]]", "application/json").dtype == np.bool_
    assert codecs.decode(b"[[1, 2]]", "application/json").dtype.kind == "i"


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        (b"\x93NUMPY garbage", "application/x-npy", "not a readable .npy"),
        (b"not npy at all", "application/x-npy", "not a readable .npy"),
        (npy(np.array(["a", "b"])), "application/x-npy", "only numbers"),
        (npy(np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])), "application/x-npy", "structured"),
        (npy(np.array([1, None], dtype=object)), "application/x-npy", "not a readable .npy"),
        (b"[[1, 2], [3]", "application/json", "not valid JSON"),
        (b"[[1, 2], [3]]", "application/json", "same length"),
        (b'[["a", "b"]]', "application/json", "only numbers"),
        (b'[[1, null]]', "application/json", "only numbers"),
        (b'{"inputs": [[1]]}', "application/json", "instances"),
        (b'{"instances": []}', "application/json", "non-empty"),
        (b"[]", "application/json", "non-empty"),
        (b'"text"', "application/json", "non-empty list"),
        (b"\xff\xfe", "application/json", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply"),
        (b"[" * 500 + b"1" + b"]" * 500, "application/json", "same length|only numbers"),
        (b"a,b,c\n1,2,3", "text/csv", "rows of numbers"),
        (b"1,2,3\n4,5", "text/csv", "rows of numbers"),
        (b"\xff\xfe1,2", "text/csv", "UTF-8"),
        (b"\n\n", "text/csv", "no rows"),
        (b"", "text/csv", "empty"),
    ],
)
def test_malformed_bodies_raise_validation_error(body, content_type, message):
    with pytest.raises(ValidationError, match=message):
        codecs.decode(body, content_type)


def test_a_body_over_6_mb_is_refused_with_the_limit_in_the_message():
    body = b"1," * (codecs.MAX_BODY_BYTES // 2) + b"1"
    with pytest.raises(ValidationError, match="6 MB"):
        codecs.decode(body, "text/csv")


def test_a_body_of_exactly_6_mb_is_accepted():
    row = b"1," * 511 + b"1\n"  # 1024 bytes
    body = row * (codecs.MAX_BODY_BYTES // len(row))
    assert len(body) == codecs.MAX_BODY_BYTES
    assert codecs.decode(body, "text/csv").shape == (6144, 512)


@pytest.mark.parametrize("content_type", ["application/xml", "", "image/png", "application/x-npz"])
def test_unsupported_content_types_name_the_supported_ones(content_type):
    with pytest.raises(ValidationError, match="application/x-npy, application/json, text/csv"):
        codecs.decode(b"[[1]]", content_type)


def test_accept_defaults_to_the_content_type_and_is_validated():
    assert codecs.response_content_type("text/csv", "") == "text/csv"
    assert codecs.response_content_type("text/csv", "*/*") == "text/csv"
    assert codecs.response_content_type("text/csv", "application/json") == "application/json"
    with pytest.raises(ValidationError, match="Accept 'text/html'"):
        codecs.response_content_type("text/csv", "text/html")


OUTPUTS = {
    "label": np.array([1, 0, 1], dtype=np.int64),
    "probabilities": np.array([[0.1, 0.9], [0.8, 0.2], [1 / 3, 2 / 3]], dtype=np.float32),
}


def test_json_response_holds_every_output_by_name():
    document = json.loads(codecs.encode(OUTPUTS, "application/json"))
    assert list(document["predictions"]) == ["label", "probabilities"]
    assert document["predictions"]["label"] == [1, 0, 1]
    np.testing.assert_array_equal(
        np.array(document["predictions"]["probabilities"], dtype=np.float32), OUTPUTS["probabilities"]
    )


def test_npy_response_is_the_first_output_exactly():
    decoded = np.load(io.BytesIO(codecs.encode(OUTPUTS, "application/x-npy")), allow_pickle=False)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, OUTPUTS["label"])


def test_csv_response_reads_back_the_same_float32_values():
    outputs = {"probabilities": OUTPUTS["probabilities"], "label": OUTPUTS["label"]}
    text = codecs.encode(outputs, "text/csv")
    back = np.loadtxt(io.StringIO(text.decode()), delimiter=",", dtype=np.float32, ndmin=2)
    np.testing.assert_array_equal(back, OUTPUTS["probabilities"])


def test_csv_response_of_a_1d_output_is_one_value_per_line():
    assert codecs.encode({"label": OUTPUTS["label"]}, "text/csv") == b"1\n0\n1\n"


def test_csv_response_of_a_rank_3_output_is_flattened_per_row():
    out = np.arange(12, dtype=np.int32).reshape(2, 2, 3)
    lines = codecs.encode({"y": out}, "text/csv").decode().splitlines()
    assert lines == ["0,1,2,3,4,5", "6,7,8,9,10,11"]


def test_float64_csv_keeps_every_digit():
    out = np.array([[np.pi, 1 / 3]])
    back = np.loadtxt(io.StringIO(codecs.encode({"y": out}, "text/csv").decode()), delimiter=",", ndmin=2)
    np.testing.assert_array_equal(back, out)
