"""ModelInfer requests -> numpy feeds for the model, and model outputs -> a ModelInferResponse.

Every check here raises ValidationError (INVALID_ARGUMENT) with a message that names the input,
so that a client learns what to fix and the server keeps running.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import ValidationError
from mve.modelserver.runtime import TensorSpec
from mve.tensors import CONTENTS_FIELD, DATATYPE_TO_DTYPE, contents_to_numpy, datatype_of, numpy_to_raw, raw_to_numpy

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # SageMaker's 6 MB invocation payload limit


def _typed_count(tensor) -> int:
    field = CONTENTS_FIELD.get(tensor.datatype)
    return len(getattr(tensor.contents, field)) if field and tensor.HasField("contents") else 0


def _typed_bytes(tensor) -> int:
    """Bytes the typed contents of `tensor` hold once decoded (BYTES: the sum of the elements)."""
    if not tensor.HasField("contents"):
        return 0
    if tensor.datatype == "BYTES":
        return sum(len(item) for item in tensor.contents.bytes_contents)
    dtype = DATATYPE_TO_DTYPE.get(tensor.datatype)
    return _typed_count(tensor) * (dtype.itemsize if dtype is not None else 8)


def _check_payload(request: pb.ModelInferRequest) -> None:
    raw = request.raw_input_contents
    sizes = [
        (len(raw[index]) if index < len(raw) else 0) + _typed_bytes(tensor)
        for index, tensor in enumerate(request.inputs)
    ]
    total = sum(sizes) + sum(len(extra) for extra in raw[len(request.inputs) :])
    if total > MAX_PAYLOAD_BYTES:
        names = ", ".join(f"'{tensor.name}' ({size} bytes)" for tensor, size in zip(request.inputs, sizes))
        raise ValidationError(
            f"request payload of {total} bytes is over the 6 MB limit ({MAX_PAYLOAD_BYTES} bytes); inputs: {names}"
        )


def decode_inputs(request: pb.ModelInferRequest, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The request's input tensors as numpy arrays keyed by name, each checked against `specs`."""
    by_name = {spec.name: spec for spec in specs}
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        names = ", ".join(f"'{tensor.name}'" for tensor in request.inputs) or "none"
        raise ValidationError(
            f"raw_input_contents has {len(raw)} entries but the request has {len(request.inputs)} inputs ({names})"
        )
    _check_payload(request)
    feeds: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        spec = by_name.get(name)
        if spec is None:
            expected = ", ".join(f"'{s.name}'" for s in specs)
            raise ValidationError(f"unknown input '{name}'; the model takes {expected}")
        if name in feeds:
            raise ValidationError(f"input '{name}' is given more than once")
        if tensor.datatype != spec.datatype:
            raise ValidationError(f"input '{name}' has datatype {tensor.datatype!r}, the model expects {spec.datatype}")
        shape = list(tensor.shape)
        if not spec.accepts(shape):
            raise ValidationError(f"input '{name}' has shape {shape}, the model expects {list(spec.shape)}")
        if raw:
            if _typed_count(tensor):
                raise ValidationError(f"input '{name}' has both raw_input_contents and typed contents")
            array = raw_to_numpy(raw[index], tensor.datatype, shape, name)
        else:
            array = contents_to_numpy(tensor.contents, tensor.datatype, shape, name)
        feeds[name] = _as_strings(array, name) if spec.datatype == "BYTES" else array
    missing = [spec.name for spec in specs if spec.name not in feeds]
    if missing:
        raise ValidationError("missing input " + ", ".join(f"'{name}'" for name in missing))
    return feeds


def _as_strings(array: np.ndarray, name: str) -> np.ndarray:
    """ONNX string tensors take str; V2 BYTES elements arrive as bytes (onnxruntime would repr them)."""
    try:
        return np.vectorize(lambda item: item.decode("utf-8") if isinstance(item, bytes) else item, otypes=[object])(
            array
        )
    except UnicodeDecodeError as error:
        raise ValidationError(f"input '{name}': BYTES element is not UTF-8 text ({error.reason})") from None


def requested_outputs(request: pb.ModelInferRequest, specs: Sequence[TensorSpec]) -> list[str]:
    """Names of the outputs to compute: those requested, or every output of the model in order."""
    known = [spec.name for spec in specs]
    if not request.outputs:
        return known
    names: list[str] = []
    for output in request.outputs:
        if output.name not in known:
            expected = ", ".join(f"'{name}'" for name in known)
            raise ValidationError(f"unknown requested output '{output.name}'; the model gives {expected}")
        if output.name in names:
            raise ValidationError(f"output '{output.name}' is requested more than once")
        names.append(output.name)
    return names


def encode_response(
    request: pb.ModelInferRequest, model_name: str, version: str, names: Sequence[str], arrays: Sequence[np.ndarray]
) -> pb.ModelInferResponse:
    """A response with one raw_output_contents entry per output, in the order of `names`."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request.id)
    for name, array in zip(names, arrays):
        array = np.asarray(array)
        response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        response.raw_output_contents.append(numpy_to_raw(array))
    return response
