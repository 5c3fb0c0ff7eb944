"""The example models: real ONNX files built from bundled data, usable as two variants of one endpoint."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from mve.examples import accuracy, build_example_models, load_eval_data, mlp_reference


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _is_dynamic(dim) -> bool:
    return not isinstance(dim, int)


def test_builds_the_three_named_models(example_models):
    assert set(example_models) == {"cancer-weak", "cancer-strong", "mlp"}
    for path in example_models.values():
        assert path.is_file() and path.suffix == ".onnx"


@pytest.mark.parametrize("name", ["cancer-weak", "cancer-strong"])
def test_cancer_models_share_one_signature_with_a_dynamic_batch(example_models, name):
    session = _session(example_models[name])
    [model_input] = session.get_inputs()
    assert (model_input.name, model_input.type) == ("input", "tensor(float)")
    assert _is_dynamic(model_input.shape[0]) and model_input.shape[1] == 30
    outputs = {o.name: o for o in session.get_outputs()}
    assert set(outputs) == {"label", "probabilities"}
    assert outputs["label"].type == "tensor(int64)" and len(outputs["label"].shape) == 1
    assert outputs["probabilities"].type == "tensor(float)" and outputs["probabilities"].shape[1] == 2
    assert _is_dynamic(outputs["label"].shape[0])


def test_strong_model_is_more_accurate_than_weak_and_both_beat_chance(example_models):
    X, y = load_eval_data()
    assert X.dtype == np.float32 and y.dtype == np.int64 and X.shape == (y.size, 30)
    scores = {}
    for name in ("cancer-weak", "cancer-strong"):
        labels, probabilities = _session(example_models[name]).run(None, {"input": X})
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        scores[name] = accuracy(labels, y)
    majority = max(np.mean(y), 1 - np.mean(y))
    assert scores["cancer-weak"] > majority + 0.1
    assert scores["cancer-strong"] > scores["cancer-weak"] + 0.03


def test_any_batch_size_runs(example_models):
    X, _ = load_eval_data()
    session = _session(example_models["cancer-strong"])
    for batch in (1, 7, 64):
        labels, probabilities = session.run(None, {"input": X[:batch]})
        assert labels.shape == (batch,) and probabilities.shape == (batch, 2)


def test_mlp_equals_numpy_with_the_same_weights(example_models):
    session = _session(example_models["mlp"])
    [model_input], [model_output] = session.get_inputs(), session.get_outputs()
    assert _is_dynamic(model_input.shape[0]) and model_input.shape[1] == 16
    assert model_output.shape[1] == 4
    x = np.random.default_rng(7).standard_normal((9, 16)).astype(np.float32)
    [out] = session.run(None, {"input": x})
    np.testing.assert_allclose(out, mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_rebuilding_reuses_files_with_the_same_content(tmp_path):
    first = build_example_models(tmp_path)
    contents = {name: path.read_bytes() for name, path in first.items()}
    mtimes = {name: path.stat().st_mtime_ns for name, path in first.items()}
    second = build_example_models(tmp_path)
    assert second == first
    assert {name: path.read_bytes() for name, path in second.items()} == contents
    assert {name: path.stat().st_mtime_ns for name, path in second.items()} == mtimes


def test_accuracy_rejects_mismatched_lengths():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 1]) == 0.75
    with pytest.raises(ValueError):
        accuracy([1, 0], [1, 0, 1])
