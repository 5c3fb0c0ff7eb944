"""The SDK and the CLI verbs against a real mesh: control plane, proxy and model servers as processes.

One mesh (`Mesh` on free ports and a temporary data dir) serves the whole module and is always
stopped; one endpoint "ab" with two variants (cancer-weak as Variant1, cancer-strong as Variant2)
serves the tests that only read or invoke it.
"""

from __future__ import annotations

import io
import json
import time
from datetime import datetime

import numpy as np
import pytest

import mve
from mve.sdk import ClientError, WaiterError
from mve.examples import load_eval_data
from mve.mesh import Mesh
from procs import run_mve

pytestmark = pytest.mark.integration

ENDPOINT = "ab"
FAST = {"Delay": 0.2, "MaxAttempts": 600}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("mesh")
    # No drain before a removed instance is stopped: no test here sends traffic while one is removed
    # (deletions and the fixture's cleanup only), so each deletion is a second shorter.
    with Mesh(data_dir, log_path=data_dir / "mesh.log", control_plane_args=("--drain-seconds", "0")) as running:
        yield running
    assert running.done.is_set()


@pytest.fixture(scope="module")
def sm(mesh):
    with mve.client("sagemaker", address=mesh.control_plane_address) as client:
        yield client


@pytest.fixture(scope="module")
def smr(mesh):
    with mve.client("sagemaker-runtime", address=mesh.proxy_address) as client:
        yield client


def _quietly(call, **kwargs):
    try:
        call(**kwargs)
    except ClientError:
        pass


@pytest.fixture(scope="module")
def endpoint(sm, example_models):
    """Endpoint "ab": models weak/strong, config "ab-config", Variant1/Variant2 at 1:1, InService."""
    for name, model in (("weak", "cancer-weak"), ("strong", "cancer-strong")):
        sm.create_model(ModelName=name, PrimaryContainer={"Image": "onnxruntime",
                                                          "ModelDataUrl": str(example_models[model])})
    sm.create_endpoint_config(EndpointConfigName="ab-config", ProductionVariants=[
        {"VariantName": "Variant1", "ModelName": "weak", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
         "InitialVariantWeight": 1.0},
        {"VariantName": "Variant2", "ModelName": "strong", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
         "InitialVariantWeight": 1.0},
    ])
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="ab-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig=FAST)
    yield ENDPOINT
    _quietly(sm.delete_endpoint, EndpointName=ENDPOINT)
    try:
        sm.get_waiter("endpoint_deleted").wait(EndpointName=ENDPOINT, WaiterConfig=FAST)
    except WaiterError:
        pass
    _quietly(sm.delete_endpoint_config, EndpointConfigName="ab-config")
    for name in ("weak", "strong"):
        _quietly(sm.delete_model, ModelName=name)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_describe_and_list_have_boto3_shapes(sm, endpoint, example_models):
    described = sm.describe_endpoint(EndpointName=endpoint)
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "ab-config"
    assert isinstance(described["CreationTime"], datetime)
    variants = {v["VariantName"]: v for v in described["ProductionVariants"]}
    assert set(variants) == {"Variant1", "Variant2"}
    for variant in variants.values():
        assert variant["CurrentWeight"] == 1.0 and variant["DesiredWeight"] == 1.0
        assert variant["CurrentInstanceCount"] == 1 and variant["DesiredInstanceCount"] == 1

    model = sm.describe_model(ModelName="weak")
    assert model["ModelName"] == "weak" and model["PrimaryContainer"]["Image"] == "onnxruntime"
    assert isinstance(model["CreationTime"], datetime)

    config = sm.describe_endpoint_config(EndpointConfigName="ab-config")
    assert [v["ModelName"] for v in config["ProductionVariants"]] == ["weak", "strong"]
    assert config["ProductionVariants"][0]["InitialVariantWeight"] == 1.0

    assert "ab" in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    assert {"weak", "strong"} <= {m["ModelName"] for m in sm.list_models()["Models"]}
    assert "ab-config" in [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]]


def test_invoke_with_each_content_type(smr, endpoint):
    X, _ = load_eval_data()
    rows = X[:3]
    npy = smr.invoke_endpoint(EndpointName=endpoint, Body=_npy(rows), ContentType="application/x-npy")
    assert npy["ContentType"] == "application/x-npy"
    assert npy["InvokedProductionVariant"] in ("Variant1", "Variant2")
    labels = np.load(io.BytesIO(npy["Body"].read()))
    assert labels.shape == (3,) and set(labels.tolist()) <= {0, 1}

    as_json = smr.invoke_endpoint(EndpointName=endpoint, Body=json.dumps(rows.tolist()),
                                  ContentType="application/json", Accept="application/json")
    predictions = json.loads(as_json["Body"].read())["predictions"]
    assert len(predictions["label"]) == 3 and np.array(predictions["probabilities"]).shape == (3, 2)

    csv = "\n".join(",".join(str(float(x)) for x in row) for row in rows)
    as_csv = smr.invoke_endpoint(EndpointName=endpoint, Body=csv, ContentType="text/csv", Accept="text/csv")
    assert as_csv["ContentType"] == "text/csv"
    assert len(as_csv["Body"].read().decode().split()) == 3


def test_target_variant_reaches_that_variant(smr, endpoint):
    X, _ = load_eval_data()
    for variant in ("Variant1", "Variant2"):
        answered = {smr.invoke_endpoint(EndpointName=endpoint, Body=_npy(X[:1]), ContentType="application/x-npy",
                                        TargetVariant=variant)["InvokedProductionVariant"] for _ in range(5)}
        assert answered == {variant}


def _wait_weights(sm, endpoint, weights):
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=FAST)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        variants = sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]
        if {v["VariantName"]: v["CurrentWeight"] for v in variants} == weights:
            return
        time.sleep(0.1)
    raise AssertionError(f"weights never became {weights}")


def test_update_weights_moves_all_traffic_to_the_weighted_variant(sm, smr, endpoint):
    X, _ = load_eval_data()
    sm.update_endpoint_weights_and_capacities(EndpointName=endpoint, DesiredWeightsAndCapacities=[
        {"VariantName": "Variant1", "DesiredWeight": 0.0}, {"VariantName": "Variant2", "DesiredWeight": 1.0}])
    try:
        _wait_weights(sm, endpoint, {"Variant1": 0.0, "Variant2": 1.0})
        # The proxy applies the new table shortly after the control plane reports it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answered = [smr.invoke_endpoint(EndpointName=endpoint, Body=_npy(X[:1]),
                                            ContentType="application/x-npy")["InvokedProductionVariant"]
                        for _ in range(30)]
            if set(answered) == {"Variant2"}:
                break
        assert set(answered) == {"Variant2"}
    finally:
        sm.update_endpoint_weights_and_capacities(EndpointName=endpoint, DesiredWeightsAndCapacities=[
            {"VariantName": "Variant1", "DesiredWeight": 1.0}, {"VariantName": "Variant2", "DesiredWeight": 1.0}])
        _wait_weights(sm, endpoint, {"Variant1": 1.0, "Variant2": 1.0})


def test_errors_carry_sagemaker_names(sm, smr, endpoint):
    with pytest.raises(ClientError) as caught:
        sm.describe_endpoint(EndpointName="no-such-endpoint")
    assert caught.value.response["Error"] == {
        "Code": "ValidationException",
        "Message": 'Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/no-such-endpoint".'}
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(sm.exceptions.ValidationException, match="Could not find model"):
        sm.describe_model(ModelName="no-such-model")
    with pytest.raises(sm.exceptions.ValidationException):
        sm.create_model(ModelName="bad_name!", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": "/x.onnx"})
    with pytest.raises(sm.exceptions.ValidationException, match="already existing"):
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName="ab-config")
    # The runtime's name for bad input (and a missing endpoint) is ValidationError.
    with pytest.raises(smr.exceptions.ValidationError):
        smr.invoke_endpoint(EndpointName=endpoint, Body=b"1,2", ContentType="text/csv", TargetVariant="Variant9")
    with pytest.raises(smr.exceptions.ValidationError):
        smr.invoke_endpoint(EndpointName=endpoint, Body=b"not numbers", ContentType="text/csv")
    with pytest.raises(smr.exceptions.ValidationError) as caught:
        smr.invoke_endpoint(EndpointName="no-such-endpoint", Body=b"1,2", ContentType="text/csv")
    assert caught.value.response["Error"] == {
        "Code": "ValidationError", "Message": "Endpoint no-such-endpoint of account 000000000000 not found."}


def test_delete_endpoint_and_the_endpoint_deleted_waiter(sm, smr, example_models):
    sm.create_model(ModelName="solo", PrimaryContainer={"Image": "onnxruntime",
                                                        "ModelDataUrl": str(example_models["cancer-strong"])})
    sm.create_endpoint_config(EndpointConfigName="solo", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "solo", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small"}])
    sm.create_endpoint(EndpointName="solo", EndpointConfigName="solo")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="solo", WaiterConfig=FAST)
    X, _ = load_eval_data()
    response = smr.invoke_endpoint(EndpointName="solo", Body=_npy(X[:2]), ContentType="application/x-npy")
    assert response["InvokedProductionVariant"] == "AllTraffic"

    sm.delete_endpoint(EndpointName="solo")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="solo", WaiterConfig=FAST)
    assert "solo" not in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    sm.delete_endpoint_config(EndpointConfigName="solo")
    sm.delete_model(ModelName="solo")
    with pytest.raises(sm.exceptions.ValidationException, match='Could not find model "arn:mve:sagemaker:local:000000000000:model/solo"'):
        sm.describe_model(ModelName="solo")


# ---------------------------------------------------------------- the CLI verbs


def _cli(mesh, *args, timeout=60):
    result = run_mve([*args, "--control-plane", mesh.control_plane_address,
                      "--endpoint-address", mesh.proxy_address], timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_cli_lists_and_describes(mesh, endpoint):
    listed = _cli(mesh, "endpoints", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "ab" in [e["EndpointName"] for e in json.loads(listed.stdout)["Endpoints"]]
    table = _cli(mesh, "endpoint", "describe", "ab")
    assert table.returncode == 0 and "Variant1" in table.stdout and "InService" in table.stdout
    models = _cli(mesh, "models", "list")
    assert models.returncode == 0 and "weak" in models.stdout


def test_cli_full_lifecycle(mesh, sm, example_models, tmp_path):
    model_path = example_models["cancer-strong"]
    assert _cli(mesh, "models", "create", "cli-m", "--model-data", str(model_path)).returncode == 0
    created = _cli(mesh, "endpoint-configs", "create", "cli-c", "--json",
                   "--variant", "name=V1,model=cli-m,instances=1,weight=1,instance-type=ml.cpu.small",
                   "--variant", "name=V2,model=cli-m,weight=3")
    assert created.returncode == 0, created.stderr
    assert "EndpointConfigArn" in json.loads(created.stdout)
    up = _cli(mesh, "endpoint", "create", "cli-e", "--config", "cli-c", "--wait", "--json", timeout=120)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["EndpointStatus"] == "InService"

    X, _ = load_eval_data()
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join(",".join(str(float(x)) for x in row) for row in X[:2]))
    invoked = _cli(mesh, "invoke", "cli-e", "--file", str(rows), "--target-variant", "V2", "--json")
    assert invoked.returncode == 0, invoked.stderr
    answer = json.loads(invoked.stdout)
    assert answer["InvokedProductionVariant"] == "V2" and answer["ContentType"] == "text/csv"
    body = _cli(mesh, "invoke", "cli-e", "--body", json.dumps(X[:1].tolist()), "--accept", "application/json")
    assert body.returncode == 0 and "predictions" in body.stdout

    weights = _cli(mesh, "endpoint", "update-weights", "cli-e", "V1=0", "V2=1", "--wait", "--json", timeout=120)
    assert weights.returncode == 0, weights.stderr
    assert {v["VariantName"]: v["CurrentWeight"] for v in json.loads(weights.stdout)["ProductionVariants"]} == {
        "V1": 0.0, "V2": 1.0}

    assert _cli(mesh, "endpoint", "delete", "cli-e").returncode == 0
    # Waited out with the SDK (a CLI process per poll costs ~1 s), then the CLI no longer finds it.
    sm.get_waiter("endpoint_deleted").wait(EndpointName="cli-e", WaiterConfig=FAST)
    gone = _cli(mesh, "endpoint", "describe", "cli-e")
    assert gone.returncode == 1 and gone.stderr.startswith("ValidationException: Could not find endpoint")
    assert _cli(mesh, "endpoint-configs", "delete", "cli-c").returncode == 0
    assert _cli(mesh, "models", "delete", "cli-m").returncode == 0


def test_cli_errors_are_one_line_with_the_error_name(mesh):
    missing = _cli(mesh, "endpoint", "describe", "nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith('ValidationException: Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/nope".')
    bad = _cli(mesh, "endpoint-configs", "create", "x", "--variant", "name=V1")
    assert bad.returncode == 2 and "model=" in bad.stderr
    invalid = _cli(mesh, "models", "create", "bad_name!", "--model-data", "/nonexistent.onnx")
    assert invalid.returncode == 1 and invalid.stderr.startswith("ValidationException: ")
    nowhere = run_mve(["endpoints", "list", "--control-plane", "127.0.0.1:1"])
    assert nowhere.returncode == 1 and "EndpointConnectionError" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr
