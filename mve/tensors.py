"""Open Inference Protocol tensors <-> numpy arrays.

One place knows the V2 datatype strings, their numpy dtypes, the typed ``contents`` fields
and the raw little-endian byte layout (BYTES elements are each prefixed by a 4-byte
little-endian length).
"""

from __future__ import annotations

import struct

import numpy as np

from mve.errors import ValidationError

# V2 datatype -> numpy dtype (little-endian on the wire).
DATATYPE_TO_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

DTYPE_TO_DATATYPE: dict[np.dtype, str] = {
    dtype.newbyteorder("="): name for name, dtype in DATATYPE_TO_DTYPE.items() if name != "BYTES"
}

# V2 datatype -> the InferTensorContents field that carries it when sent typed.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype string for a numpy array (object/str/bytes arrays are BYTES)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return DTYPE_TO_DATATYPE[array.dtype.newbyteorder("=")]
    except KeyError:
        raise ValidationError(f"dtype {array.dtype} has no Open Inference Protocol datatype") from None


def element_count(shape) -> int:
    """Number of elements of a tensor shape; every dimension must be >= 0."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise ValidationError(f"shape {list(shape)} has a negative dimension")
        count *= int(dim)
    return count


def decode_bytes_tensor(raw: bytes, count: int, name: str) -> np.ndarray:
    """Decode BYTES raw contents (4-byte LE length + data per element) into an object array."""
    items = []
    offset = 0
    view = memoryview(raw)
    for _ in range(count):
        if offset + 4 > len(raw):
            raise ValidationError(f"input '{name}': BYTES contents end inside an element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValidationError(f"input '{name}': BYTES element overruns the contents")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise ValidationError(f"input '{name}': {len(raw) - offset} bytes left after {count} BYTES elements")
    return np.array(items, dtype=np.object_)


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    """Encode an array of bytes/str as BYTES raw contents."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def raw_to_numpy(raw: bytes, datatype: str, shape, name: str = "tensor") -> np.ndarray:
    """A numpy array over raw tensor bytes; the byte size must match datatype and shape."""
    dtype = DATATYPE_TO_DTYPE.get(datatype)
    if dtype is None:
        raise ValidationError(f"input '{name}': unknown datatype '{datatype}'")
    count = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(raw, count, name).reshape(tuple(shape))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise ValidationError(
            f"input '{name}': {len(raw)} bytes of contents, expected {expected} for {datatype} shape {list(shape)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))


def contents_to_numpy(contents, datatype: str, shape, name: str = "tensor") -> np.ndarray:
    """A numpy array from typed InferTensorContents."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ValidationError(f"input '{name}': datatype '{datatype}' cannot be sent as typed contents")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise ValidationError(
            f"input '{name}': {len(values)} values in {field}, expected {count} for shape {list(shape)}"
        )
    if datatype == "BYTES":
        return np.array(list(values), dtype=np.object_).reshape(tuple(shape))
    return np.asarray(values, dtype=DATATYPE_TO_DTYPE[datatype]).reshape(tuple(shape))


def numpy_to_raw(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of an array, in C order."""
    if datatype_of(array) == "BYTES":
        return encode_bytes_tensor(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()
