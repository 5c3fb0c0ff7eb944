"""Data capture end to end: a real proxy writes SageMaker capture records for real model servers.

The routing table comes from the fake WatchRoutes server of test_proxy.py: endpoint ``captured``
with production variant ``plus`` (y = x + 1), shadow variant ``minus`` (y = x - 1, every request)
and capture at 100% into a temporary directory. The proxy runs with a 60 s flush interval, so the
records can only be in their files after the test stops it: SIGTERM must write and flush them.
"""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.request

import grpc
import numpy as np
import pytest
from procs import wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_proxy import FakeControlPlane
from tiny_models import build_model, npy

from mve._proto import control_pb2, runtime_pb2, runtime_pb2_grpc
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

EP = "captured"
FILE_NAME = re.compile(r"^\d{4}/\d{2}/\d{2}/\d{2}/\d{2}-\d{2}-\d{3}-[0-9a-f]{16}\.jsonl$")


def scrape(address: str) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def variant(name: str, server, weight: float) -> control_pb2.VariantRoute:
    tensor = control_pb2.TensorSpec
    return control_pb2.VariantRoute(
        variant_name=name, model_name=name, weight=weight,
        instances=[control_pb2.InstanceRoute(instance_id=f"{name}-0", address=server.address)],
        inputs=[tensor(name="x", datatype="FP32", shape=[-1, 2])],
        outputs=[tensor(name="y", datatype="FP32", shape=[-1, 2])],
    )


def records_of(root, variant_name: str) -> list[dict]:
    directory = root / EP / variant_name
    paths = sorted(directory.rglob("*.jsonl"))
    for path in paths:
        assert FILE_NAME.match(str(path.relative_to(directory))), path
        assert path.read_bytes().endswith(b"\n")  # whole lines only
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def test_every_invocation_is_captured_with_its_inference_id_and_encoding_and_sigterm_flushes(services, tmp_path):
    for kind in ("plus", "minus"):
        build_model(tmp_path / f"{kind}.onnx", kind)
    plus = services(["model-server", "--model", str(tmp_path / "plus.onnx"), "--model-name", "plus"])
    minus = services(["model-server", "--model", str(tmp_path / "minus.onnx"), "--model-name", "minus"])
    cp = FakeControlPlane()
    proxy = services([
        "proxy", "--control-plane", cp.start(), "--port", "0", "--capture-flush-interval", "60",
        "--stats-interval", "0.2",
    ])
    destination = tmp_path / "capture"
    endpoint = control_pb2.EndpointRoute(
        endpoint_name=EP,
        variants=[variant("plus", plus, 1.0)],
        shadow_variants=[variant("minus", minus, 1.0)],
        data_capture=control_pb2.DataCaptureConfig(
            enable_capture=True, initial_sampling_percentage=100, destination_s3_uri=f"file://{destination}",
            csv_content_types=["text/csv"], json_content_types=["application/json"],
        ),
    )
    cp.send(control_pb2.RoutingTable(version=1, control_plane_id="fake", endpoints=[endpoint]))
    channel = grpc.insecure_channel(proxy.address)
    runtime = runtime_pb2_grpc.EndpointRuntimeStub(channel)
    oip = pb_grpc.GRPCInferenceServiceStub(channel)
    wait_until(lambda: oip.ModelReady(pb.ModelReadyRequest(name=EP), timeout=5).ready, what="the table")

    rows = np.array([[0.5, 1.5], [2.0, -3.0]], np.float32)
    bodies = {
        "json": (json.dumps(rows.tolist()).encode(), "application/json"),
        "csv": (b"0.5,1.5\n2.0,-3.0\n", "text/csv"),
        "npy": (npy(rows), "application/x-npy"),
    }
    sent: dict[str, tuple[str, bytes, bytes, str]] = {}  # inference id -> (kind, request body, answer, answer type)
    try:
        for i in range(30):
            kind = ("json", "csv", "npy")[i % 3]
            body, content_type = bodies[kind]
            given = f"caller-{i}" if i % 2 else ""
            answer = runtime.InvokeEndpoint(runtime_pb2.InvokeEndpointRequest(
                endpoint_name=EP, body=body, content_type=content_type, inference_id=given), timeout=10)
            assert answer.invoked_production_variant == "plus"
            assert answer.inference_id == (given or answer.inference_id) and len(answer.inference_id) in (36, len(given))
            sent[answer.inference_id] = (kind, body, answer.body, answer.content_type)
        for i in range(6):
            request = pb.ModelInferRequest(model_name=EP, id=f"oip-{i}" if i == 5 else "")
            request.inputs.add(name="x", datatype="FP32", shape=[2, 2])
            request.raw_input_contents.append(rows.tobytes())
            data = request.SerializeToString()
            response = oip.ModelInfer(request, timeout=10)
            assert response.id == (request.id or response.id) and response.id
            sent[response.id] = ("oip", data, response, "")
        assert len(sent) == 36  # every id distinct

        def shadows_counted():
            metrics = scrape(proxy.ready["metrics_address"])
            return metrics.get(("mve_invocations_total", (("endpoint", EP), ("variant", "minus")))) == 36 and metrics

        metrics = wait_until(shadows_counted, what="36 shadow invocations in the proxy's Prometheus text")
        assert metrics.get(("mve_capture_dropped_total", (("endpoint", EP), ("variant", "plus"))), 0) == 0
        # Within the 60 s flush interval nothing has reached the files yet: only the stop can write them.
        assert all(path.stat().st_size == 0 for path in destination.rglob("*.jsonl"))
    finally:
        channel.close()
        cp.stop()
    assert proxy.stop() == 0  # SIGTERM: shadow calls finished, capture written and flushed
    assert "Traceback" not in "".join(proxy.output)

    production = {r["eventMetadata"]["inferenceId"]: r for r in records_of(destination, "plus")}
    shadow = {r["eventMetadata"]["inferenceId"]: r for r in records_of(destination, "minus")}
    assert len(production) == len(records_of(destination, "plus")) == 36  # one record per request
    assert set(production) == set(shadow) == set(sent)

    for inference_id, (kind, body, answer, answer_type) in sent.items():
        record = production[inference_id]
        assert record["eventVersion"] == "0"
        assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", record["eventMetadata"]["inferenceTime"])
        given, returned = record["captureData"]["endpointInput"], record["captureData"]["endpointOutput"]
        assert (given["mode"], returned["mode"]) == ("INPUT", "OUTPUT")
        if kind == "oip":
            assert given == {
                "observedContentType": "application/x-protobuf; messageType=inference.ModelInferRequest",
                "mode": "INPUT", "data": base64.b64encode(body).decode(), "encoding": "BASE64",
            }
            assert returned["observedContentType"] == "application/x-protobuf; messageType=inference.ModelInferResponse"
            assert pb.ModelInferResponse.FromString(base64.b64decode(returned["data"])) == answer
            shadow_answer = pb.ModelInferResponse.FromString(
                base64.b64decode(shadow[inference_id]["captureData"]["endpointOutput"]["data"])
            )
            assert shadow_answer.id == inference_id
            assert np.frombuffer(shadow_answer.raw_output_contents[0], np.float32).tolist() == (rows - 1).ravel().tolist()
            continue
        encoding = {"json": "JSON", "csv": "CSV", "npy": "BASE64"}[kind]
        assert given["encoding"] == returned["encoding"] == encoding
        assert given["observedContentType"] == bodies[kind][1] and returned["observedContentType"] == answer_type
        decode = (lambda text: base64.b64decode(text)) if encoding == "BASE64" else (lambda text: text.encode())
        assert decode(given["data"]) == body and decode(returned["data"]) == answer
        shadow_output = decode(shadow[inference_id]["captureData"]["endpointOutput"]["data"])
        if kind == "json":
            assert json.loads(shadow_output)["predictions"]["y"] == (rows - 1).tolist()
        elif kind == "npy":
            np.testing.assert_array_equal(np.load(io.BytesIO(shadow_output)), rows - 1)
        else:
            np.testing.assert_array_equal(np.loadtxt(io.BytesIO(shadow_output), delimiter=",", ndmin=2), rows - 1)
