"""What a batch may be, and many compatible ModelInferRequests as one batch and back.

`BatchingPolicy` holds a variant's validated batching knobs. `batch_parts` reads a request's
compatibility key, raw input bytes and rows; `assemble` stacks the inputs of compatible requests along
the first dimension (concatenating their bytes); `split` slices every output of the batch's
response back by row offsets (`_fastroute.split_batch`), and `split_bytes` does the same straight
into serialised responses (byte slices and a cached header, no message per caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from mve import _fastroute, tensors
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import ModelError, ValidationError

MAX_BATCH_SIZE = 1024
MAX_BATCH_DELAY_US = 1_000_000
MAX_BATCHES_IN_FLIGHT = 64
MAX_QUEUE_ROWS = 1_048_576
# With max_queue_rows 0, a variant queues this many full batches before refusing requests.
DEFAULT_QUEUE_BATCHES = 64


@dataclass(frozen=True)
class BatchingPolicy:
    """A variant's batching knobs (``mve.v1.BatchingConfig``), validated; off when max_batch_size <= 1."""

    max_batch_size: int = 0
    max_delay_us: int = 0
    max_batches_in_flight_per_instance: int = 1
    max_queue_rows: int = 0  # 0: DEFAULT_QUEUE_BATCHES * max_batch_size

    def __post_init__(self):
        checks = (
            ("max_batch_size", self.max_batch_size, 0, MAX_BATCH_SIZE),
            ("max_delay_us", self.max_delay_us, 0, MAX_BATCH_DELAY_US),
            ("max_batches_in_flight_per_instance", self.max_batches_in_flight_per_instance, 1, MAX_BATCHES_IN_FLIGHT),
            ("max_queue_rows", self.max_queue_rows, 0, MAX_QUEUE_ROWS),
        )
        for name, value, low, high in checks:
            if not low <= value <= high:
                raise ValidationError(f"batching {name} must be {low}-{high}, got {value}")

    @classmethod
    def from_config(cls, config) -> "BatchingPolicy":
        """From a ``BatchingConfig`` message (0 in-flight means 1)."""
        return cls(
            max_batch_size=config.max_batch_size,
            max_delay_us=config.max_delay_us,
            max_batches_in_flight_per_instance=config.max_batches_in_flight_per_instance or 1,
            max_queue_rows=config.max_queue_rows,
        )

    @property
    def enabled(self) -> bool:
        """Whether requests are batched at all."""
        return self.max_batch_size > 1

    @property
    def queue_limit(self) -> int:
        """Queued rows above which new requests are refused."""
        return self.max_queue_rows or DEFAULT_QUEUE_BATCHES * self.max_batch_size


BATCHING_OFF = BatchingPolicy()


def batch_parts(request) -> tuple[tuple, list[bytes], int] | None:
    """(compatibility key, raw bytes of each input, rows) of a raw-contents request; None if it cannot be batched.

    Unbatchable: no inputs, BYTES inputs, 0-d inputs, inputs that disagree on the first dimension,
    zero rows, or raw bytes that do not match a shape (the model server then says what is wrong).
    Every input has a fixed-size datatype, so its rows are consecutive equal slices of its bytes.
    """
    raw = request.raw_input_contents
    inputs = request.inputs
    if not inputs or len(raw) != len(inputs):
        return None
    datas = []
    layout = []
    rows = -1
    for tensor, data in zip(inputs, raw):
        datatype = tensor.datatype
        dtype = _DTYPES.get(datatype)
        shape = tuple(tensor.shape)
        if dtype is None or not shape or shape[0] <= 0 or rows not in (-1, shape[0]) or min(shape) < 0:
            return None
        rows = shape[0]
        if prod(shape) * dtype.itemsize != len(data):
            return None
        datas.append(data)
        params = _sorted_params(tensor.parameters) if tensor.parameters else ()
        layout.append((tensor.name, datatype, shape[1:], params))
    outputs = tuple(o.SerializeToString(deterministic=True) for o in request.outputs) if request.outputs else ()
    parameters = _sorted_params(request.parameters) if request.parameters else ()
    return (tuple(layout), outputs, parameters), datas, rows


_DTYPES = {name: dtype for name, dtype in tensors.DATATYPE_TO_DTYPE.items() if name != "BYTES"}


def _sorted_params(parameters) -> tuple:
    return tuple(sorted((k, v.SerializeToString()) for k, v in parameters.items()))


def row_offsets(rows: list[int]) -> np.ndarray:
    """Row offsets (length N + 1, int64) of N consecutive parts of `rows` rows each."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(rows, out=offsets[1:])
    return offsets


def assemble(requests: list, parts: list[list[bytes]], model_name: str | None = None):
    """One request with the rows of every request (their `batch_parts` bytes), and the row offsets.

    Compatible requests share datatypes and trailing shapes, so stacking along the first dimension
    is concatenating each input's bytes.
    """
    first = requests[0]
    batch = pb.ModelInferRequest(
        model_name=first.model_name if model_name is None else model_name, model_version=first.model_version
    )
    if first.parameters:
        batch.parameters.MergeFrom(first.parameters)
    if first.outputs:
        batch.outputs.extend(first.outputs)
    rows = [r.inputs[0].shape[0] for r in requests]
    total = sum(rows)
    for index, tensor in enumerate(first.inputs):
        batch.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=(total, *tensor.shape[1:]),
                         parameters=tensor.parameters)
        batch.raw_input_contents.append(b"".join(own[index] for own in parts))
    return batch, row_offsets(rows)


def split(response, offsets, requests: list, model: str, variant: str) -> list:
    """One response per request holding only its rows of every output (raw_output_contents).

    ModelError when an output does not have one row per batched row (nothing to split by).
    """
    outputs = _split_outputs(response, offsets, model, variant)
    responses = []
    for position, request in enumerate(requests):
        own = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=request.id)
        own.parameters.MergeFrom(response.parameters)
        for tensor, parts in outputs:
            part = parts[position]
            own.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=part.shape, parameters=tensor.parameters)
            own.raw_output_contents.append(tensors.numpy_to_raw(part))
        responses.append(own)
    return responses


def _split_outputs(response, offsets, model: str, variant: str) -> list:
    total = int(offsets[-1])
    raw = response.raw_output_contents
    outputs = []
    try:
        for index, tensor in enumerate(response.outputs):
            if raw:
                array = tensors.raw_to_numpy(raw[index], tensor.datatype, tensor.shape, tensor.name)
            else:
                array = tensors.contents_to_numpy(tensor.contents, tensor.datatype, tensor.shape, tensor.name)
            if array.ndim == 0 or array.shape[0] != total:
                raise ValidationError(
                    f"output '{tensor.name}' has shape {list(array.shape)}; a batch of {total} rows needs {total} rows"
                )
            outputs.append((tensor, _fastroute.split_batch(array, offsets)))
    except (ValidationError, IndexError) as error:
        # The model server answered OK (HTTP 200) with outputs that cannot be split.
        raise ModelError(
            f"model {model} of variant {variant} returned a response that cannot be split by rows: {error}",
            original_status_code=200, original_message=str(error),
        ) from None
    return outputs


def split_bytes(response, offsets, requests: list, tail: bytes, model: str, variant: str) -> list[bytes]:
    """`split`, but each request's response as serialised bytes ending in `tail` (`wire.response_tail`).

    Built from byte slices of the batch's raw outputs and one serialised header per distinct row
    count, without a protobuf message per request. Falls back to `split` for typed or BYTES outputs.
    """
    raw = response.raw_output_contents
    outputs = response.outputs
    total = int(offsets[-1])
    slices = []
    for index, tensor in enumerate(outputs):
        dtype = _DTYPES.get(tensor.datatype)
        shape = tuple(tensor.shape)
        if not raw or dtype is None or len(raw) != len(outputs) or not shape or min(shape) < 0:
            return [own.SerializeToString() + tail for own in split(response, offsets, requests, model, variant)]
        data = raw[index]
        if shape[0] != total or prod(shape) * dtype.itemsize != len(data):
            # Not splittable by rows: `split` raises the ModelError that says why.
            return [own.SerializeToString() + tail for own in split(response, offsets, requests, model, variant)]
        slices.append((data, len(data) // total if total else 0))
    headers: dict[int, bytes] = {}
    answers = []
    bounds = offsets.tolist()
    for position, request in enumerate(requests):
        start, end = bounds[position], bounds[position + 1]
        rows = end - start
        header = headers.get(rows)
        if header is None:
            own = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version)
            own.parameters.MergeFrom(response.parameters)
            for tensor in outputs:
                own.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=(rows, *tensor.shape[1:]),
                                parameters=tensor.parameters)
            header = headers[rows] = own.SerializeToString()
        pieces = [header]
        if request.id:
            pieces.append(_length_delimited(_ID_TAG, request.id.encode()))
        for data, row_bytes in slices:
            pieces.append(_length_delimited(_RAW_OUTPUT_TAG, data[start * row_bytes:end * row_bytes]))
        pieces.append(tail)
        answers.append(b"".join(pieces))
    return answers


_ID_TAG = b"\x1a"  # ModelInferResponse.id: field 3, length-delimited
_RAW_OUTPUT_TAG = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, length-delimited


def _length_delimited(tag: bytes, value: bytes) -> bytes:
    size = len(value)
    if size < 0x80:
        return tag + bytes((size,)) + value
    varint = bytearray()
    while size >= 0x80:
        varint.append((size & 0x7F) | 0x80)
        size >>= 7
    varint.append(size)
    return tag + bytes(varint) + value
