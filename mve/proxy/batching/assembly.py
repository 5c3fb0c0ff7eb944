"""Many compatible ModelInferRequests as one batch, and the batch's answer back per caller.

`batch_parts` reads a request's compatibility key, raw input bytes and rows (for a request still
in its serialised form, `_fastroute.scan_batch_parts` reads the same from the bytes, and the request
waits as a `ScannedRequest`); `assemble` stacks the inputs of compatible requests along the first
dimension (concatenating their bytes); `split` slices
every output of the batch's response back by row offsets (`_fastroute.split_batch`), and
`split_bytes` does the same straight into serialised responses (byte slices and a cached header, no
message per caller). What a batch may be is the variant's `mve.proxy.batching.policy.BatchingPolicy`.
"""

from __future__ import annotations

from math import prod

import numpy as np

from mve import _fastroute, tensors
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import ModelError, ValidationError


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
# The batchable datatypes' item sizes, for `_fastroute.scan_batch_parts`.
ITEMSIZES = {name: dtype.itemsize for name, dtype in _DTYPES.items()}
# Request parameters that choose the variant: removed before a request joins a batch.
ROUTING_PARAMETERS = ("target_variant", "routing_key")


class ScannedRequest:
    """A raw-contents ModelInferRequest waiting for a batch as its serialised bytes.

    Its parts came from `_fastroute.scan_batch_parts`; what the batcher reads of a request is its
    `id` (for its own answer), and the batch's first request is decoded once for the batch's
    header (`message`).
    """

    __slots__ = ("data", "id", "model_name")

    def __init__(self, data: bytes, request_id: str, model_name: str):
        self.data = data
        self.id = request_id
        self.model_name = model_name  # the variant's model, which the batch is sent to

    def message(self) -> pb.ModelInferRequest:
        """The request decoded, for the variant's model, its routing parameters removed."""
        request = pb.ModelInferRequest.FromString(self.data)
        request.model_name = self.model_name
        request.model_version = ""
        for name in ROUTING_PARAMETERS:
            if name in request.parameters:
                del request.parameters[name]
        return request


def _sorted_params(parameters) -> tuple:
    return tuple(sorted((k, v.SerializeToString()) for k, v in parameters.items()))


def row_offsets(rows: list[int]) -> np.ndarray:
    """Row offsets (length N + 1, int64) of N consecutive parts of `rows` rows each."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(rows, out=offsets[1:])
    return offsets


def assemble(requests: list, parts: list[list[bytes]], model_name: str | None = None, rows: list[int] | None = None):
    """One request with the rows of every request (their `batch_parts` bytes), and the row offsets.

    Compatible requests share datatypes and trailing shapes, so stacking along the first dimension
    is concatenating each input's bytes. `requests` may be `ScannedRequest`s (then give `rows`, each
    request's rows): only the first is decoded, for the batch's header.
    """
    first = requests[0]
    if isinstance(first, ScannedRequest):
        first = first.message()
    batch = pb.ModelInferRequest(
        model_name=first.model_name if model_name is None else model_name, model_version=first.model_version
    )
    if first.parameters:
        batch.parameters.MergeFrom(first.parameters)
    if first.outputs:
        batch.outputs.extend(first.outputs)
    if rows is None:
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
