"""Tiny ONNX models for integration tests, each with one input x: FP32 [N, 2].

- "plus" answers x + 1 and "minus" x - 1, so an answer tells which model served it;
- "broken" reshapes x to [-1, 3]: it answers for N = 3 and fails inside ONNX Runtime for N = 1
  or 2, which the model server reports as INTERNAL (a 5xx model error);
- "slow" is four dense layers of 1536 units (about 7 million multiply-adds per row, milliseconds
  on one thread): an instance with a small, known capacity.
"""

from __future__ import annotations

import io

import numpy as np

KINDS = ("plus", "minus", "broken", "slow")
SLOW_WIDTH = 1536


def build_model(path, kind: str) -> None:
    """Write the model `kind` (one of KINDS) to `path`."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    if kind == "broken":
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 3])
        shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
        nodes, initializers = [helper.make_node("Reshape", ["x", "shape"], ["y"])], [shape]
    elif kind == "slow":
        rng = np.random.default_rng(0)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SLOW_WIDTH])
        shapes = [(2, SLOW_WIDTH)] + [(SLOW_WIDTH, SLOW_WIDTH)] * 3
        initializers, nodes, last = [], [], "x"
        for i, shape in enumerate(shapes):
            weights = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
            initializers.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, shape, weights.tobytes(), raw=True))
            out = "y" if i == len(shapes) - 1 else f"h{i}"
            nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [out]))
            last = out
    elif kind in ("plus", "minus"):
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
        one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
        nodes, initializers = [helper.make_node("Add" if kind == "plus" else "Sub", ["x", "one"], ["y"])], [one]
    else:
        raise ValueError(f"unknown tiny model {kind!r}; choose from {KINDS}")
    graph = helper.make_graph(nodes, kind, [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def npy(array) -> bytes:
    """`array` as an .npy body (application/x-npy)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
