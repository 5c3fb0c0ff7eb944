"""Two breast-cancer classifiers of different quality, converted to ONNX with skl2onnx.

Both are trained on scikit-learn's bundled Wisconsin breast-cancer data with one fixed,
stratified train/test split, so the same bytes come out on every machine with the same
library versions.
"""

from __future__ import annotations

import numpy as np

CANCER_FEATURES = 30
TEST_FRACTION = 0.3
SPLIT_SEED = 42
# Opsets every onnxruntime >= 1.17 runs.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def _split():
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    return train_test_split(
        X.astype(np.float32),
        y.astype(np.int64),
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=y,
    )


def load_eval_data() -> tuple[np.ndarray, np.ndarray]:
    """The held-out split: ``X_test`` float32 [n, 30] and ``y_test`` int64 [n] (1 = benign)."""
    _, X_test, _, y_test = _split()
    return np.ascontiguousarray(X_test), np.ascontiguousarray(y_test)


def _estimator(quality: str):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    if quality == "weak":
        # A single split: deliberately weak, about 0.9 accurate.
        return DecisionTreeClassifier(max_depth=1, random_state=0)
    if quality == "strong":
        return Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression(max_iter=1000))])
    raise ValueError(f"quality must be 'weak' or 'strong', not {quality!r}")


def build_cancer_model(quality: str) -> bytes:
    """Train the `quality` ("weak" or "strong") classifier and return its ONNX bytes.

    Input ``input`` FP32 [-1, 30]; outputs ``label`` INT64 [-1] and ``probabilities`` FP32 [-1, 2].
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    X_train, _, y_train, _ = _split()
    estimator = _estimator(quality)
    estimator.fit(X_train, y_train)
    classifier = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    model = to_onnx(
        estimator,
        initial_types=[("input", FloatTensorType([None, CANCER_FEATURES]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
        naming=f"cancer_{quality}_",
    )
    model.graph.name = f"cancer-{quality}"
    model.doc_string = f"breast-cancer classifier ({quality}), mve example model"
    return model.SerializeToString()
