"""The proxy's pass-through ModelInfer rewrites names by appending fields, never touching tensor bytes."""

from __future__ import annotations

import numpy as np

from mve._proto import grpc_predict_v2_pb2 as pb
from mve.proxy.transport import wire


def _request(**fields) -> pb.ModelInferRequest:
    values = np.arange(32, dtype=np.float32).reshape(2, 16)
    return pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[2, 16])],
        raw_input_contents=[values.tobytes()],
        **fields,
    )


def test_forwarded_request_names_the_variants_model_and_keeps_the_tensor_bytes():
    original = _request(model_name="my-endpoint", model_version="7", id="req-1")

    forwarded = pb.ModelInferRequest.FromString(original.SerializeToString() + wire.request_tail("model-b"))

    assert forwarded.model_name == "model-b"
    assert forwarded.model_version == ""
    assert forwarded.id == "req-1"
    assert forwarded.raw_input_contents == original.raw_input_contents
    assert list(forwarded.inputs[0].shape) == [2, 16]


def test_returned_response_names_the_endpoint_and_the_variant_that_answered():
    outputs = np.ones((2, 4), dtype=np.float32).tobytes()
    upstream = pb.ModelInferResponse(model_name="model-b", model_version="1", id="req-1", raw_output_contents=[outputs])
    upstream.outputs.add(name="output", datatype="FP32", shape=[2, 4])

    tail = wire.response_tail("my-endpoint", "Variant2")
    answer = pb.ModelInferResponse.FromString(upstream.SerializeToString() + tail)

    assert answer.model_name == "my-endpoint"
    assert answer.model_version == ""
    assert answer.id == "req-1"
    assert answer.parameters["invoked_production_variant"].string_param == "Variant2"
    assert answer.raw_output_contents == [outputs]
    assert wire.response_tail("my-endpoint", "Variant2") is tail  # built once per variant


def test_only_requests_with_one_raw_entry_per_input_are_forwardable():
    assert wire.forwardable(_request())
    typed = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1])])
    typed.inputs[0].contents.fp32_contents.append(1.0)
    assert not wire.forwardable(typed)
    mismatched = _request()
    mismatched.raw_input_contents.append(b"\x00" * 4)
    assert not wire.forwardable(mismatched)
