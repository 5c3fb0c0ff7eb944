"""A tiny multi-layer perceptron built node by node with onnx.helper, with fixed seeded weights."""

from __future__ import annotations

import numpy as np

MLP_INPUTS = 16
MLP_HIDDEN = 32
MLP_OUTPUTS = 4
MLP_SEED = 0
MLP_OPSET = 17


def mlp_weights() -> dict[str, np.ndarray]:
    """The MLP's weights (float32): ``w1`` [16, 32], ``b1`` [32], ``w2`` [32, 4], ``b2`` [4]."""
    rng = np.random.default_rng(MLP_SEED)
    return {
        "w1": rng.standard_normal((MLP_INPUTS, MLP_HIDDEN)).astype(np.float32) / np.float32(4.0),
        "b1": rng.standard_normal(MLP_HIDDEN).astype(np.float32) / np.float32(10.0),
        "w2": rng.standard_normal((MLP_HIDDEN, MLP_OUTPUTS)).astype(np.float32) / np.float32(4.0),
        "b2": rng.standard_normal(MLP_OUTPUTS).astype(np.float32) / np.float32(10.0),
    }


def mlp_reference(x: np.ndarray) -> np.ndarray:
    """What the MLP computes, in numpy: ``relu(x @ w1 + b1) @ w2 + b2``."""
    w = mlp_weights()
    hidden = np.maximum(np.asarray(x, dtype=np.float32) @ w["w1"] + w["b1"], np.float32(0.0))
    return hidden @ w["w2"] + w["b2"]


def build_mlp_model() -> bytes:
    """ONNX bytes of the MLP: ``input`` FP32 [-1, 16] -> ``output`` FP32 [-1, 4]."""
    from onnx import TensorProto, helper, numpy_helper

    weights = mlp_weights()
    initializers = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["xw1"]),
        helper.make_node("Add", ["xw1", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["hw2"]),
        helper.make_node("Add", ["hw2", "b2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", MLP_INPUTS])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", MLP_OUTPUTS])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="mve",
        opset_imports=[helper.make_opsetid("", MLP_OPSET)],
        doc_string="tiny MLP with fixed seeded weights, mve example model",
    )
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    return model.SerializeToString()
