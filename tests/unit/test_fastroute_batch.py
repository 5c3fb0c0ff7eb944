"""assemble_batch / split_batch: request tensors copied into one batch and sliced back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mve._fastroute import assemble_batch, split_batch

DTYPES = [
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128,
]  # fmt: skip


def assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()  # exact, NaN payloads and -0.0 included


def test_rows_are_concatenated_with_row_offsets():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(6, 15, dtype=np.float32).reshape(3, 3)
    batch, offsets = assemble_batch([a, b])
    np.testing.assert_array_equal(batch, np.concatenate([a, b]))
    assert offsets.dtype == np.int64
    assert offsets.tolist() == [0, 2, 5]
    assert batch.flags.c_contiguous
    assert not np.shares_memory(batch, a)


def test_non_contiguous_and_empty_inputs():
    base = np.arange(40, dtype=np.int16).reshape(8, 5)
    arrays = [base[::2], np.asfortranarray(base[:3]), base[:0], base[1:2, :][:, :]]
    batch, offsets = assemble_batch(arrays)
    np.testing.assert_array_equal(batch, np.concatenate(arrays))
    assert offsets.tolist() == [0, 4, 7, 7, 8]


def test_a_generator_of_arrays_is_accepted():
    batch, offsets = assemble_batch(np.full((1, 2), i, dtype=np.uint8) for i in range(3))
    assert batch.tolist() == [[0, 0], [1, 1], [2, 2]]
    assert offsets.tolist() == [0, 1, 2, 3]


def test_a_large_batch_is_copied_exactly():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((int(n), 64)).astype(np.float32) for n in rng.integers(0, 300, size=64)]
    batch, offsets = assemble_batch(arrays)
    for got, expected in zip(split_batch(batch, offsets), arrays):
        assert_same_bits(got, expected)


def test_split_returns_views_of_the_batch():
    batch, offsets = assemble_batch([np.ones((2, 2)), np.zeros((1, 2))])
    parts = split_batch(batch, offsets)
    assert all(np.shares_memory(part, batch) for part in parts)
    parts[1][0, 0] = 7.0
    assert batch[2, 0] == 7.0


def test_split_accepts_a_list_of_offsets_and_1d_batches():
    parts = split_batch(np.arange(5), [0, 2, 2, 5])
    assert [p.tolist() for p in parts] == [[0, 1], [], [2, 3, 4]]
    assert split_batch(np.arange(3), [0, 3])[0].tolist() == [0, 1, 2]
    assert split_batch(np.zeros((0, 4)), [0]) == []


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ([], "at least one array"),
        ([np.zeros((2, 3)), np.zeros((2, 3), dtype=np.float32)], r"arrays\[1\] has dtype float32"),
        ([np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 4))], r"arrays\[2\] has shape \(2, 4\)"),
        ([np.zeros((2, 3)), np.zeros((2, 3, 1))], r"arrays\[1\] has shape"),
        ([np.zeros(2), np.float64(1.0)], r"arrays\[1\] is a float64"),
        ([np.zeros(2), np.array(1.0)], r"arrays\[1\] is 0-d"),
        ([np.array(["a"], dtype=object)], r"arrays\[0\] has dtype object"),
        ([np.zeros(2), [1.0, 2.0]], r"arrays\[1\] is a list"),
        (np.zeros((2, 2)), "sequence of numpy arrays"),
    ],
)
def test_assemble_refuses_mismatches_naming_the_array(arrays, message):
    with pytest.raises(ValueError, match=message):
        assemble_batch(arrays)


def test_byte_order_is_part_of_the_dtype():
    with pytest.raises(ValueError, match=r"arrays\[1\]"):
        assemble_batch([np.zeros(2, dtype="<i4"), np.zeros(2, dtype=">i4")])


@pytest.mark.parametrize(
    ("batch", "offsets", "message"),
    [
        (np.zeros((4, 2)), [0, 3, 2, 4], r"offsets\[2\] = 2 < offsets\[1\] = 3"),
        (np.zeros((4, 2)), [0, 2, 3], "batch has 4 rows"),
        (np.zeros((4, 2)), [1, 2, 4], r"offsets\[0\] is 1"),
        (np.zeros((4, 2)), [], "non-empty"),
        (np.zeros((4, 2)), [0.0, 4.0], "integers"),
        (np.zeros((4, 2)), [[0, 4]], "1-D"),
        (np.float64(3.0), [0], "batch axis"),
        ([[1, 2]], [0, 1], "batch axis"),
    ],
)
def test_split_refuses_bad_offsets(batch, offsets, message):
    with pytest.raises(ValueError, match=message):
        split_batch(batch, offsets)


@st.composite
def request_arrays(draw):
    """1 to 6 arrays of one dtype and trailing shape, some of them non-contiguous."""
    dtype = draw(st.sampled_from(DTYPES))
    trailing = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    arrays = []
    for _ in range(draw(st.integers(1, 6))):
        rows = draw(st.integers(0, 5))
        a = draw(hnp.arrays(dtype, (rows, *trailing)))
        layout = draw(st.sampled_from(["c", "fortran", "strided"]))
        if layout == "fortran":
            a = np.asfortranarray(a)
        elif layout == "strided":
            a = np.repeat(a, 2, axis=0)[::2]
        arrays.append(a)
    return arrays


@settings(max_examples=150, deadline=None)
@given(arrays=request_arrays())
def test_split_of_assemble_gives_back_the_arrays(arrays):
    batch, offsets = assemble_batch(arrays)
    assert batch.shape == (sum(a.shape[0] for a in arrays), *arrays[0].shape[1:])
    assert batch.dtype == arrays[0].dtype
    assert batch.flags.c_contiguous
    assert offsets.tolist() == np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])]).tolist()
    parts = split_batch(batch, offsets)
    assert len(parts) == len(arrays)
    for got, expected in zip(parts, arrays):
        assert_same_bits(got, np.ascontiguousarray(expected))
