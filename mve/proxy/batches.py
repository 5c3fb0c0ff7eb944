"""What a batch may be, and many compatible ModelInferRequests as one batch and back.

`BatchingPolicy` holds a variant's validated batching knobs. `batch_parts` reads a request's
compatibility key, input arrays and rows; `assemble` stacks the inputs of compatible requests along
the first dimension (`_fastroute.assemble_batch`); `split` slices every output of the batch's
response back by row offsets (`_fastroute.split_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def batch_parts(request) -> tuple[tuple, list[np.ndarray], int] | None:
    """(compatibility key, input arrays, rows) of a raw-contents request; None if it cannot be batched.

    Unbatchable: no inputs, BYTES inputs, 0-d inputs, inputs that disagree on the first dimension,
    zero rows, or raw bytes that do not match a shape (the model server then says what is wrong).
    """
    raw = request.raw_input_contents
    if not request.inputs or len(raw) != len(request.inputs):
        return None
    arrays = []
    layout = []
    rows = -1
    for tensor, data in zip(request.inputs, raw):
        dtype = tensors.DATATYPE_TO_DTYPE.get(tensor.datatype)
        shape = tuple(tensor.shape)
        if dtype is None or tensor.datatype == "BYTES" or not shape or shape[0] <= 0:
            return None
        if rows not in (-1, shape[0]) or any(d < 0 for d in shape):
            return None
        rows = shape[0]
        count = int(np.prod(shape))
        if count * dtype.itemsize != len(data):
            return None
        arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape))
        params = tuple(sorted((k, v.SerializeToString()) for k, v in tensor.parameters.items()))
        layout.append((tensor.name, tensor.datatype, shape[1:], params))
    outputs = tuple(o.SerializeToString(deterministic=True) for o in request.outputs)
    parameters = tuple(sorted((k, v.SerializeToString()) for k, v in request.parameters.items()))
    return (tuple(layout), outputs, parameters), arrays, rows


def assemble(requests: list, arrays: list[list[np.ndarray]]):
    """One request with the rows of every request (their `batch_parts` arrays), and the row offsets."""
    first = requests[0]
    batch = pb.ModelInferRequest(model_name=first.model_name, model_version=first.model_version)
    batch.parameters.MergeFrom(first.parameters)
    batch.outputs.extend(first.outputs)
    offsets = None
    for index, tensor in enumerate(first.inputs):
        data, offsets = _fastroute.assemble_batch([own[index] for own in arrays])
        batch.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=data.shape, parameters=tensor.parameters)
        batch.raw_input_contents.append(data.tobytes())
    return batch, offsets


def split(response, offsets, requests: list, model: str, variant: str) -> list:
    """One response per request holding only its rows of every output (raw_output_contents).

    ModelError when an output does not have one row per batched row (nothing to split by).
    """
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
        raise ModelError(
            f"model {model} of variant {variant} returned a response that cannot be split by rows: {error}",
            metadata={"OriginalStatusCode": "OK", "OriginalMessage": str(error)},
        ) from None
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
