"""Rewriting Open Inference Protocol messages on the wire, without decoding their tensors.

In protobuf the last value of a non-repeated field wins, and map entries merge by key. So the
proxy renames a serialised ``ModelInferRequest`` for the variant's model by appending a
``model_name`` (and an empty ``model_version``) to its bytes, and names the endpoint and the
variant in a serialised ``ModelInferResponse`` the same way; an inference id the proxy made is
appended as an ``id`` field (field 3 in both messages). Tensor bytes are never touched.
"""

from __future__ import annotations

from functools import lru_cache

from mve._proto import grpc_predict_v2_pb2 as pb

INVOKED_VARIANT_PARAM = "invoked_production_variant"

# model_version = "" on the wire (field 2, length 0): a later empty value clears an earlier one.
_EMPTY_MODEL_VERSION = b"\x12\x00"


@lru_cache(maxsize=4096)
def request_tail(model_name: str) -> bytes:
    """Bytes that, appended to a ModelInferRequest, address it to `model_name`, any version."""
    return pb.ModelInferRequest(model_name=model_name).SerializeToString() + _EMPTY_MODEL_VERSION


@lru_cache(maxsize=4096)
def response_tail(endpoint_name: str, variant_name: str) -> bytes:
    """Bytes that, appended to a ModelInferResponse, name the endpoint and the variant that answered."""
    message = pb.ModelInferResponse(model_name=endpoint_name)
    message.parameters[INVOKED_VARIANT_PARAM].string_param = variant_name
    return message.SerializeToString() + _EMPTY_MODEL_VERSION


def id_field(inference_id: str) -> bytes:
    """Bytes that, appended to a ModelInferRequest or a ModelInferResponse, set its ``id`` (field 3)."""
    value = inference_id.encode()
    if len(value) < 0x80:  # ids are at most 64 characters: one length byte
        return _ID_HEADERS[len(value)] + value
    return pb.ModelInferResponse(id=inference_id).SerializeToString()


# Field 3, length-delimited, then the length: one header per length below 128.
_ID_HEADERS = tuple(bytes((0x1A, size)) for size in range(0x80))


def forwardable(request: pb.ModelInferRequest) -> bool:
    """One raw_input_contents entry per input and no typed contents: the bytes can go as they are."""
    raw = len(request.raw_input_contents)
    return raw > 0 and raw == len(request.inputs) and not any(t.HasField("contents") for t in request.inputs)
