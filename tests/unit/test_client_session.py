"""mve.session (production_variant, Session, Predictor) and the CLI's flag parsing, without servers."""

from __future__ import annotations

import io

import numpy as np
import pytest

from mve.commands import UsageError, parse_assignments, parse_variant
from mve.sdk.runtime import StreamingBody
from mve.session import Predictor, Session, deserialize, production_variant, serialize


def test_production_variant_returns_the_config_dict():
    assert production_variant("weak", variant_name="Variant1") == {
        "ModelName": "weak", "InstanceType": "ml.cpu.small", "InitialInstanceCount": 1,
        "VariantName": "Variant1", "InitialVariantWeight": 1}
    variant = production_variant("m", "ml.gpu.small", 2, initial_weight=3,
                                 routing_config={"RoutingStrategy": "RANDOM"},
                                 container_startup_health_check_timeout=120)
    assert variant["VariantName"] == "AllTraffic"  # the SageMaker SDK's default
    assert variant["RoutingConfig"] == {"RoutingStrategy": "RANDOM"}
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 120


class Recorder:
    """A fake client that records calls and answers describe_endpoint with InService."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, name):
        def call(**kwargs):
            self.calls.append((name, kwargs))
            return {"EndpointStatus": "InService"}

        return call

    def get_waiter(self, name):
        recorder = self

        class Waiter:
            def wait(self, **kwargs):
                recorder.calls.append((f"wait:{name}", kwargs))

        return Waiter()


def test_endpoint_from_production_variants_creates_config_then_endpoint_then_waits():
    sm = Recorder()
    session = Session(sagemaker_client=sm, sagemaker_runtime_client=Recorder())
    variants = [production_variant("weak", variant_name="Variant1"), production_variant("strong", variant_name="Variant2")]
    assert session.endpoint_from_production_variant("ab", variants) == "ab"  # the article's name
    names = [name for name, _ in sm.calls]
    assert names[:3] == ["create_endpoint_config", "create_endpoint", "wait:endpoint_in_service"]
    assert sm.calls[0][1] == {"EndpointConfigName": "ab", "ProductionVariants": variants}
    assert sm.calls[1][1] == {"EndpointName": "ab", "EndpointConfigName": "ab"}


def test_create_model_takes_a_dict_or_a_one_item_list():
    sm = Recorder()
    session = Session(sagemaker_client=sm, sagemaker_runtime_client=Recorder())
    container = {"Image": "onnxruntime", "ModelDataUrl": "/m.onnx"}
    session.create_model("m", role="ignored", container_defs=container)
    session.create_model("n", container_defs=[container])
    assert [c[1] for c in sm.calls] == [{"ModelName": "m", "PrimaryContainer": container},
                                        {"ModelName": "n", "PrimaryContainer": container}]
    with pytest.raises(ValueError, match="exactly one container"):
        session.create_model("o", container_defs=[container, container])


def test_predictor_sends_npy_and_reads_npy_back():
    class Runtime:
        def invoke_endpoint(self, **kwargs):
            self.kwargs = kwargs
            rows = np.load(io.BytesIO(kwargs["Body"]))
            buffer = io.BytesIO()
            np.save(buffer, (rows.sum(axis=1) > 0).astype(np.int64))
            return {"Body": StreamingBody(buffer.getvalue()), "ContentType": "application/x-npy",
                    "InvokedProductionVariant": kwargs.get("TargetVariant", "Variant1")}

    runtime = Runtime()
    predictor = Predictor("ab", session=Session(sagemaker_client=Recorder(), sagemaker_runtime_client=runtime))
    labels = predictor.predict(np.array([[1.0, 2.0], [-3.0, 1.0]], np.float32), target_variant="Variant2",
                               inference_id="id-1")
    assert labels.tolist() == [1, 0]
    assert predictor.last_invoked_variant == "Variant2"
    assert runtime.kwargs["ContentType"] == "application/x-npy" and runtime.kwargs["InferenceId"] == "id-1"


def test_serialize_and_deserialize_each_content_type():
    array = np.array([[0.5, 1.0]], np.float32)
    assert serialize(array, "text/csv") == (b"0.5,1.0", "text/csv")
    assert serialize(array, "application/json") == (b"[[0.5, 1.0]]", "application/json")
    assert serialize({"instances": [[1, 2]]})[1] == "application/json"
    assert deserialize(b'{"predictions": {"label": [1]}}', "application/json") == {"predictions": {"label": [1]}}
    assert deserialize(b"1\n0\n", "text/csv").tolist() == [[1], [0]]
    body, content_type = serialize(array)
    assert np.array_equal(deserialize(body, content_type), array)


def test_cli_variant_spec_becomes_a_production_variant():
    assert parse_variant("name=V1,model=M,instances=2,weight=0.5,instance-type=ml.cpu.large") == {
        "VariantName": "V1", "ModelName": "M", "InitialInstanceCount": 2, "InstanceType": "ml.cpu.large",
        "InitialVariantWeight": 0.5}
    batched = parse_variant("name=V1,model=M,max-batch-size=8,max-delay-us=500,routing=LEAST_OUTSTANDING_REQUESTS")
    assert batched["Batching"] == {"MaxBatchSize": 8, "MaxDelayMicroseconds": 500}
    assert batched["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    tuned = parse_variant("name=V1,model=M,max-batch-size=16,max-delay-us=200,max-batches-in-flight=2,max-queue-rows=64")
    assert tuned["Batching"] == {"MaxBatchSize": 16, "MaxDelayMicroseconds": 200,
                                 "MaxBatchesInFlightPerInstance": 2, "MaxQueueRows": 64}
    for bad in ("name=V1", "name=V1,model=M,colour=red", "name=V1,model=M,instances=two", "V1"):
        with pytest.raises(UsageError):
            parse_variant(bad)


def test_cli_assignments():
    assert parse_assignments(["Variant1=25", "Variant2=75"], float, "weight") == {"Variant1": 25.0, "Variant2": 75.0}
    with pytest.raises(UsageError, match="integer"):
        parse_assignments(["Variant1=1.5"], int, "count")
    with pytest.raises(UsageError, match="VARIANT=WEIGHT"):
        parse_assignments(["Variant1"], float, "weight")
