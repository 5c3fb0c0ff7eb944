"""Experiments end to end: a real control plane, proxy and model servers running the two example
breast-cancer classifiers (cancer-weak, cancer-strong), data capture at 100%, feedback sent by the
test, and GetExperimentReport and a bandit policy read back.

- A/B: the eval rows replayed one per request (Accept application/json) through 50/50; the report's
  accuracy of each variant equals the accuracy ONNX Runtime gives offline with the same model
  files on exactly the rows that variant served; strong beats weak significantly; no SRM.
- Forced skew: a third of the requests sent with TargetVariant while the weights say 50/50 is a
  sample-ratio mismatch.
- Bandit: rewards of 1 for a right prediction, 0 for a wrong one, after each batch; the policy
  (interval 1 s) moves at least 70% of the weight to cancer-strong within 3,000 requests, and the
  changes appear in DescribeEndpoint and the report.
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

import mve
from mve.examples import load_eval_data
from procs import wait_until

pytestmark = pytest.mark.integration

VARIANTS = {"Weak": "cancer-weak", "Strong": "cancer-strong"}
FAST = {"Delay": 0.2, "MaxAttempts": 600}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mesh(module_services, tmp_path_factory, example_models):
    root = tmp_path_factory.mktemp("experiments")
    cp = module_services(
        ["control-plane", "--data-dir", str(root / "cp"), "--port", "0", "--capture-index-interval", "0.2"]
    )
    proxy = module_services(
        ["proxy", "--control-plane", cp.address, "--port", "0", "--stats-interval", "0.2", "--capture-flush-interval", "0.2"]
    )
    sm = mve.client("sagemaker", address=cp.address)
    smr = mve.client("sagemaker-runtime", address=proxy.address)
    exp = mve.client("experiments", address=cp.address)
    for model in VARIANTS.values():
        sm.create_model(ModelName=model, PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(example_models[model])})
    yield sm, smr, exp, root / "capture", example_models
    for client in (sm, smr, exp):
        client.close()


def create_endpoint(sm, smr, name: str, capture_dir) -> None:
    """A 50/50 endpoint of the two classifiers, capturing every answer; waits until the proxy routes it."""
    config = {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {"VariantName": v, "ModelName": m, "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small", "InitialVariantWeight": 1.0}
            for v, m in VARIANTS.items()
        ],
        "DataCaptureConfig": {
            "EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": f"file://{capture_dir}",
            "CaptureOptions": [{"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        },
    }
    sm.create_endpoint_config(**config)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST)
    row = npy(load_eval_data()[0][:1])
    wait_until(lambda: _routable(smr, name, row), timeout=20, what=f"the proxy routes {name}")
    time.sleep(1.1)  # the probe's second is before any window a test starts now


def _routable(smr, name: str, row: bytes) -> bool:
    try:
        smr.invoke_endpoint(EndpointName=name, Body=row, ContentType="application/x-npy", Accept="application/json", TargetVariant="Weak")
    except mve.sdk.ClientError:
        return False
    return True


def invoke_rows(smr, name: str, X: np.ndarray, indexes, target: str = "", workers: int = 4) -> list[dict]:
    """One request per row (JSON answers): [{"row", "variant", "id", "label"}], in `indexes` order."""

    def one(i: int) -> dict:
        answer = smr.invoke_endpoint(
            EndpointName=name, Body=npy(X[i : i + 1]), ContentType="application/x-npy", Accept="application/json",
            **({"TargetVariant": target} if target else {}),
        )
        label = json.loads(answer["Body"].read())["predictions"]["label"][0]
        return {"row": int(i), "variant": answer["InvokedProductionVariant"], "id": answer["InferenceId"], "label": int(label)}

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, indexes))


def send_feedback(exp, name: str, results: list[dict], y: np.ndarray, *, labels: bool = True, rewards: bool = False) -> None:
    for start in range(0, len(results), 1000):
        entries = []
        for r in results[start : start + 1000]:
            entry = {"InferenceId": r["id"]}
            if labels:
                entry["GroundTruthLabels"] = [str(int(y[r["row"]]))]
            if rewards:
                entry["Reward"] = 1.0 if r["label"] == y[r["row"]] else 0.0
            entries.append(entry)
        assert exp.send_feedback(EndpointName=name, Feedback=entries)["Accepted"] == len(entries)


def report_when(exp, name: str, ready, timeout: float = 30.0, **kw) -> dict:
    """The report once `ready(report)` holds (the proxies' stats and capture files arrive within a second)."""
    holder = {}

    def check():
        holder["report"] = exp.get_experiment_report(EndpointName=name, **kw)
        return ready(holder["report"])

    try:
        wait_until(check, timeout=timeout, interval=0.3, what=f"the report of {name}")
    except AssertionError:
        figures = {v["VariantName"]: (v["Invocations"], v["Captured"], v["WithFeedback"]) for v in holder["report"]["Variants"]}
        raise AssertionError(f"the report of {name} is not ready: (invocations, captured, with feedback) {figures}") from None
    return holder["report"]


def by_variant(report: dict) -> dict[str, dict]:
    return {v["VariantName"]: v for v in report["Variants"]}


def test_ab_report_matches_offline_accuracy_and_finds_the_better_model(mesh):
    sm, smr, exp, capture_dir, model_files = mesh
    name = "ab"
    create_endpoint(sm, smr, name, capture_dir)
    X, y = load_eval_data()
    order = np.random.default_rng(16).permutation(np.tile(np.arange(len(y)), 4))  # 684 requests
    started = time.time()
    results = invoke_rows(smr, name, X, order)
    send_feedback(exp, name, results, y)
    served = {v: [r for r in results if r["variant"] == v] for v in VARIANTS}
    assert all(len(rows) > 250 for rows in served.values()), {v: len(r) for v, r in served.items()}

    report = report_when(
        exp, name,
        # Every served row's feedback joined, every invocation counted (a retried call may add one).
        lambda rep: all(
            by_variant(rep)[v]["WithFeedback"] == len(served[v]) <= by_variant(rep)[v]["Invocations"] for v in VARIANTS
        ),
        StartTime=started,
    )
    variants = by_variant(report)
    for variant, model in VARIANTS.items():
        rows = np.array([r["row"] for r in served[variant]])
        session = ort.InferenceSession(str(model_files[model]), providers=["CPUExecutionProvider"])
        offline_labels = session.run(["label"], {"input": X[rows]})[0]
        assert [r["label"] for r in served[variant]] == offline_labels.tolist()  # the answers are the model's
        offline = float(np.mean(offline_labels == y[rows]))
        v = variants[variant]
        assert v["Captured"] >= len(rows) and v["WithFeedback"] == len(rows)
        assert v["Accuracy"]["Value"] == pytest.approx(offline, abs=1e-12), variant
        assert v["Accuracy"]["Count"] == len(rows)
        assert "RocAuc" in v and 0.5 < v["RocAuc"] <= 1.0
        print(f"{variant}: report accuracy {v['Accuracy']['Value']:.4f} = offline {offline:.4f} on {len(rows)} rows")
    comparisons = {c["Metric"]: c for c in variants["Strong"]["Comparisons"]}
    accuracy = comparisons["accuracy"]
    assert accuracy["Difference"] > 0 and accuracy["Significant"], accuracy
    assert accuracy["AlwaysValidPValue"] >= accuracy["PValue"]
    srm = report["SampleRatio"]
    assert srm["Applicable"] and not srm["Mismatch"], srm
    assert report["BaselineVariant"] == "Weak"
    print(f"A/B: accuracy difference {accuracy['Difference']:.4f}, p {accuracy['PValue']:.2e}, "
          f"always-valid p {accuracy['AlwaysValidPValue']:.2e}; SRM p {srm['PValue']:.3f}")


def test_a_forced_skew_is_a_sample_ratio_mismatch(mesh):
    sm, smr, exp, capture_dir, _ = mesh
    name = "skew"
    create_endpoint(sm, smr, name, capture_dir)
    X, _ = load_eval_data()
    started = time.time()
    rows = np.arange(600) % len(X)
    sent = len(invoke_rows(smr, name, X, rows)) + len(invoke_rows(smr, name, X, rows[:300], target="Weak"))
    report = report_when(exp, name, lambda rep: sum(v["Invocations"] for v in rep["Variants"]) >= sent, StartTime=started)
    srm = report["SampleRatio"]
    assert srm["Applicable"] and srm["Mismatch"] and srm["PValue"] < 1e-3, srm
    assert srm["Expected"] == pytest.approx([sum(srm["Observed"]) / 2] * 2, rel=0.01)
    print(f"forced skew: observed {srm['Observed']}, expected {srm['Expected']}, SRM p {srm['PValue']:.2e}")


def test_bandit_moves_most_traffic_to_the_better_variant(mesh):
    sm, smr, exp, capture_dir, _ = mesh
    name = "bandit"
    create_endpoint(sm, smr, name, capture_dir)
    exp.put_bandit_policy(
        EndpointName=name, IntervalInSeconds=1, ExplorationFloor=0.05, MaxWeightChange=0.2, MinRewardsPerVariant=20,
        WindowInSeconds=600,
    )
    X, y = load_eval_data()
    rng = np.random.default_rng(7)
    started, sent, deadline = time.time(), 0, time.monotonic() + 60

    def strong_share() -> float:
        weights = {v["VariantName"]: v["CurrentWeight"] for v in sm.describe_endpoint(EndpointName=name)["ProductionVariants"]}
        return weights["Strong"] / sum(weights.values())

    while strong_share() < 0.7:
        assert sent < 3000 and time.monotonic() < deadline, f"weights still {strong_share():.2f} after {sent} requests"
        results = invoke_rows(smr, name, X, rng.integers(0, len(y), 60))
        sent += len(results)
        send_feedback(exp, name, results, y, labels=False, rewards=True)
        time.sleep(0.3)
    print(f"bandit: Strong has {strong_share():.2f} of the weight after {sent} requests, {time.time() - started:.1f} s")
    changes = sm.describe_endpoint(EndpointName=name)["AutomaticWeightChanges"]
    assert changes and all(c["Source"] == "bandit" for c in changes)
    assert "Thompson sampling" in changes[0]["Reason"]
    report = exp.get_experiment_report(EndpointName=name, StartTime=started)
    assert len(report["WeightChanges"]) == len(changes) and report["WeightChanges"][-1]["Source"] == "bandit"
    policy = exp.describe_bandit_policy(EndpointName=name)["Policy"]
    assert "LastUpdateTime" in policy and policy["LastEvaluation"]
    exp.delete_bandit_policy(EndpointName=name)
    with pytest.raises(mve.sdk.ClientError) as raised:
        exp.describe_bandit_policy(EndpointName=name)
    assert raised.value.response["Error"]["Code"] == "ResourceNotFound"


def test_errors_name_what_is_wrong(mesh):
    sm, _, exp, _, _ = mesh
    with pytest.raises(mve.sdk.ClientError) as raised:
        exp.get_experiment_report(EndpointName="nope")
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert "Could not find endpoint" in raised.value.response["Error"]["Message"]
    sm.create_endpoint_config(
        EndpointConfigName="no-capture",
        ProductionVariants=[
            {"VariantName": v, "ModelName": m, "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small"} for v, m in VARIANTS.items()
        ],
    )
    sm.create_endpoint(EndpointName="no-capture", EndpointConfigName="no-capture")
    with pytest.raises(mve.sdk.ClientError) as raised:
        exp.put_bandit_policy(EndpointName="no-capture")
    assert "captured record" in raised.value.response["Error"]["Message"]
    with pytest.raises(mve.sdk.ClientError) as raised:
        exp.send_feedback(EndpointName="no-capture", Feedback=[{"InferenceId": "a", "GroundTruthLabels": ["1"]}, {"InferenceId": "b"}])
    assert "Feedback[1]" in raised.value.response["Error"]["Message"]
