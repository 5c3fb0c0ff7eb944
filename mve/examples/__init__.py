"""Example models built from data shipped inside scikit-learn: no downloads, no committed binaries.

`build_example_models(out_dir)` writes three ONNX files and returns their paths by name:

- ``cancer-weak``: a one-split decision tree (a stump) on the breast-cancer data;
- ``cancer-strong``: a standardised logistic regression on the same data;
- ``mlp``: a tiny two-layer perceptron with fixed seeded weights, for tests and benchmarks.

The two cancer models take the same input (``input`` FP32 [-1, 30]) and give the same outputs
(``label`` INT64 [-1], ``probabilities`` FP32 [-1, 2]), so they can be two variants of one endpoint;
the strong one is clearly more accurate on the held-out split from `load_eval_data`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mve.examples.cancer import CANCER_FEATURES, build_cancer_model, load_eval_data
from mve.examples.mlp import MLP_INPUTS, MLP_OUTPUTS, build_mlp_model, mlp_reference, mlp_weights

EXAMPLE_MODELS = ("cancer-weak", "cancer-strong", "mlp")


def _write_if_changed(path: Path, data: bytes) -> Path:
    """Write `data` to `path` unless the file already holds exactly those bytes (atomic replace)."""
    if path.is_file() and path.read_bytes() == data:
        return path
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)
    return path


def build_example_models(out_dir) -> dict[str, Path]:
    """Build the example ONNX models into `out_dir` and return ``{name: path}``.

    Idempotent: the models are deterministic (fixed split, fixed seeds), and a file that already
    holds the same bytes is left untouched, so its modification time and any hash of it stay put.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = {
        "cancer-weak": build_cancer_model("weak"),
        "cancer-strong": build_cancer_model("strong"),
        "mlp": build_mlp_model(),
    }
    return {name: _write_if_changed(out / f"{name}.onnx", data) for name, data in models.items()}


def accuracy(labels, y) -> float:
    """Fraction of `labels` equal to `y` (both 1-D, same length)."""
    labels = np.asarray(labels).reshape(-1)
    y = np.asarray(y).reshape(-1)
    if labels.shape != y.shape:
        raise ValueError(f"labels has {labels.size} values, y has {y.size}")
    if y.size == 0:
        raise ValueError("accuracy of an empty set")
    return float(np.mean(labels == y))


__all__ = [
    "CANCER_FEATURES",
    "EXAMPLE_MODELS",
    "MLP_INPUTS",
    "MLP_OUTPUTS",
    "accuracy",
    "build_example_models",
    "load_eval_data",
    "mlp_reference",
    "mlp_weights",
]
