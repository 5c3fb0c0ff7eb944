"""InvokeEndpoint bodies to model inputs, and model answers back to arrays: shared by variants and shadows."""

from __future__ import annotations

import numpy as np

from mve import tensors
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import ModelError, ValidationError
from mve.proxy.routing.router import TensorSpec, VariantState

CUSTOM_ATTRIBUTES_PARAM = "custom_attributes"


def cast_body(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The decoded body as the model input's dtype, after checking its rank and fixed dimensions."""
    dtype = tensors.DATATYPE_TO_DTYPE.get(spec.datatype)
    if dtype is None or spec.datatype == "BYTES":
        raise ValidationError(f"model input '{spec.name}' is {spec.datatype}; InvokeEndpoint bodies carry numbers only")
    if spec.shape:
        fits = len(spec.shape) == array.ndim and all(d < 0 or d == n for d, n in zip(spec.shape, array.shape))
        if not fits:
            raise ValidationError(
                f"model input '{spec.name}' has shape {list(spec.shape)} but the body decoded to shape {list(array.shape)}"
            )
    return array.astype(dtype, copy=False)


def body_request(model_name: str, spec: TensorSpec, array: np.ndarray, inference_id: str, custom_attributes: str):
    """The ``ModelInferRequest`` that runs one InvokeEndpoint body (already cast) on `model_name`."""
    request = pb.ModelInferRequest(
        model_name=model_name,
        id=inference_id,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=spec.name, datatype=spec.datatype, shape=array.shape)],
        raw_input_contents=[tensors.numpy_to_raw(array)],
    )
    if custom_attributes:
        request.parameters[CUSTOM_ATTRIBUTES_PARAM].string_param = custom_attributes
    return request


def response_outputs(response, variant: VariantState) -> dict[str, np.ndarray]:
    """Output name -> array from a model server's response (raw or typed contents)."""
    outputs = {}
    try:
        raw = response.raw_output_contents
        for i, tensor in enumerate(response.outputs):
            if raw:
                array = tensors.raw_to_numpy(raw[i], tensor.datatype, tensor.shape, tensor.name)
            else:
                array = tensors.contents_to_numpy(tensor.contents, tensor.datatype, tensor.shape, tensor.name)
            outputs[tensor.name] = array
    except (ValidationError, IndexError) as error:
        # The model server answered OK (HTTP 200) with outputs that cannot be read.
        raise ModelError(
            f"model {variant.model_name} of variant {variant.name} returned a malformed response: {error}",
            original_status_code=200, original_message=str(error),
        ) from None
    return outputs
