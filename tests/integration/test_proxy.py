"""The proxy as a real process, in front of real model servers, fed by a fake WatchRoutes server.

The fake control plane (`FakeControlPlane`) runs in the test process and streams the routing tables
a test pushes; the proxy cannot tell it from the real one. Every push carries a probe endpoint, and
`push` returns once the proxy reports that probe ready, so a test knows its table is applied.
"""

from __future__ import annotations

import io
import itertools
import json
import queue
import time
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from scipy.stats import chisquare

from mve._proto import control_pb2, control_pb2_grpc, runtime_pb2, runtime_pb2_grpc
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve.errors import reason_of
from mve.examples import load_eval_data
from procs import wait_until

pytestmark = pytest.mark.integration

EP = "cancer"


class FakeControlPlane(control_pb2_grpc.EndpointControlServicer):
    """WatchRoutes from tables pushed by the test; ReportStats recorded."""

    def __init__(self):
        self.latest: control_pb2.RoutingTable | None = None
        self.subscribers: list[queue.Queue] = []
        self.subscriptions = 0
        self.reports: list[control_pb2.ReportStatsRequest] = []
        self.server: grpc.Server | None = None
        self.port = 0

    def start(self, port: int = 0) -> str:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        control_pb2_grpc.add_EndpointControlServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=0).wait(5)
        self.subscribers.clear()

    def send(self, table: control_pb2.RoutingTable) -> None:
        self.latest = table
        for subscriber in list(self.subscribers):
            subscriber.put(table)

    def WatchRoutes(self, request, context):
        subscriber: queue.Queue = queue.Queue()
        self.subscribers.append(subscriber)
        self.subscriptions += 1
        if self.latest is not None:
            subscriber.put(self.latest)
        while context.is_active():
            try:
                yield subscriber.get(timeout=0.05)
            except queue.Empty:
                continue

    def ReportStats(self, request, context):
        self.reports.append(request)
        return control_pb2.ReportStatsResponse()


class Mesh:
    """Model servers, the fake control plane and a proxy; `push` applies a routing table."""

    def __init__(self, services, models):
        self.models = models
        self.cp = FakeControlPlane()
        self.cp_address = self.cp.start()
        self.servers = {
            "weak-0": services(["model-server", "--model", str(models["cancer-weak"]), "--model-name", "cancer-weak"]),
            "weak-1": services(["model-server", "--model", str(models["cancer-weak"]), "--model-name", "cancer-weak"]),
            "strong-0": services(["model-server", "--model", str(models["cancer-strong"]), "--model-name", "cancer-strong"]),
        }
        self.proxy = services(["proxy", "--control-plane", self.cp_address, "--port", "0", "--stats-interval", "0.2"])
        self.channel = grpc.insecure_channel(self.proxy.address)
        self.runtime = runtime_pb2_grpc.EndpointRuntimeStub(self.channel)
        self.oip = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.versions = itertools.count(1)
        metadata = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.servers["weak-0"].address)).ModelMetadata(
            pb.ModelMetadataRequest(name="cancer-weak"), timeout=10
        )
        self.inputs = [control_pb2.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in metadata.inputs]
        self.outputs = [control_pb2.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in metadata.outputs]

    def variant(self, name: str, model: str, weight: float, servers: list[str], *, with_specs: bool = True):
        return control_pb2.VariantRoute(
            variant_name=name,
            model_name=model,
            weight=weight,
            routing_strategy="LEAST_OUTSTANDING_REQUESTS",
            instances=[control_pb2.InstanceRoute(instance_id=s, address=self.servers[s].address) for s in servers],
            inputs=self.inputs if with_specs else [],
            outputs=self.outputs if with_specs else [],
        )

    def cancer(self, weak: float, strong: float, *, name: str = EP, weak_servers=("weak-0", "weak-1")):
        return control_pb2.EndpointRoute(
            endpoint_name=name,
            variants=[
                self.variant("weak", "cancer-weak", weak, list(weak_servers)),
                self.variant("strong", "cancer-strong", strong, ["strong-0"]),
            ],
        )

    def push(self, *endpoints: control_pb2.EndpointRoute) -> int:
        """Send a table with these endpoints (plus a probe) and wait until the proxy serves it."""
        version = next(self.versions)
        probe = control_pb2.EndpointRoute(
            endpoint_name=f"probe-{version}", variants=[self.variant("p", "cancer-weak", 1.0, ["weak-0"])]
        )
        self.cp.send(control_pb2.RoutingTable(version=version, control_plane_id="fake", endpoints=[*endpoints, probe]))
        wait_until(lambda: self.ready(f"probe-{version}"), what=f"table {version}")
        return version

    def ready(self, endpoint: str) -> bool:
        return self.oip.ModelReady(pb.ModelReadyRequest(name=endpoint), timeout=5).ready

    def invoke(self, body: bytes, content_type: str, **fields) -> runtime_pb2.InvokeEndpointResponse:
        fields.setdefault("endpoint_name", EP)
        return self.runtime.InvokeEndpoint(
            runtime_pb2.InvokeEndpointRequest(body=body, content_type=content_type, **fields), timeout=30
        )

    def close(self):
        self.channel.close()
        self.cp.stop()


@pytest.fixture(scope="module")
def mesh(module_services, example_models):
    mesh = Mesh(module_services, example_models)
    yield mesh
    mesh.close()
    assert mesh.proxy.stop() == 0  # SIGTERM stops the proxy cleanly
    assert "Traceback" not in "".join(mesh.proxy.output)


@pytest.fixture(scope="module")
def eval_rows():
    x, _ = load_eval_data()
    return np.asarray(x[:16], dtype=np.float32)


def reference(models, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(models[name]), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def split(mesh, n: int, **fields) -> dict[str, int]:
    """Variant name -> count over `n` invocations sent 32 at a time."""
    body = json.dumps([[0.5] * 30]).encode()
    request = runtime_pb2.InvokeEndpointRequest(endpoint_name=EP, body=body, content_type="application/json", **fields)
    counts: dict[str, int] = {}
    for start in range(0, n, 32):
        calls = [mesh.runtime.InvokeEndpoint.future(request, timeout=30) for _ in range(min(32, n - start))]
        for call in calls:
            name = call.result().invoked_production_variant
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_invoke_in_every_content_type_matches_onnxruntime(mesh, eval_rows):
    mesh.push(mesh.cancer(1, 1))
    for variant, model in (("weak", "cancer-weak"), ("strong", "cancer-strong")):
        expected = reference(mesh.models, model, eval_rows)
        csv = "\n".join(",".join(repr(float(v)) for v in row) for row in eval_rows).encode()

        got = mesh.invoke(npy(eval_rows), "application/x-npy", target_variant=variant)
        assert got.invoked_production_variant == variant
        assert got.content_type == "application/x-npy"
        np.testing.assert_array_equal(np.load(io.BytesIO(got.body)), expected["label"])

        got = mesh.invoke(json.dumps({"instances": eval_rows.tolist()}).encode(), "application/json", target_variant=variant)
        assert got.invoked_production_variant == variant
        predictions = json.loads(got.body)["predictions"]
        np.testing.assert_array_equal(predictions["label"], expected["label"])
        np.testing.assert_array_equal(np.array(predictions["probabilities"], dtype=np.float32), expected["probabilities"])

        got = mesh.invoke(csv, "text/csv", target_variant=variant)
        assert got.invoked_production_variant == variant
        assert got.body.decode().split() == [str(v) for v in expected["label"]]

        got = mesh.invoke(csv, "text/csv", accept="application/x-npy", target_variant=variant)
        assert got.content_type == "application/x-npy"
        np.testing.assert_array_equal(np.load(io.BytesIO(got.body)), expected["label"])


def test_weights_split_traffic_and_a_new_table_changes_the_split(mesh):
    mesh.push(mesh.cancer(1, 1))
    counts = split(mesh, 2000)
    assert chisquare([counts.get("weak", 0), counts.get("strong", 0)], [1000, 1000]).pvalue > 0.001
    mesh.push(mesh.cancer(0.25, 0.75))
    counts = split(mesh, 2000)
    assert chisquare([counts.get("weak", 0), counts.get("strong", 0)], [500, 1500]).pvalue > 0.001


def test_a_weight_0_variant_takes_only_targeted_traffic(mesh):
    mesh.push(mesh.cancer(1, 0))
    assert split(mesh, 200) == {"weak": 200}
    assert split(mesh, 20, target_variant="strong") == {"strong": 20}


def test_routing_keys_are_sticky(mesh):
    mesh.push(mesh.cancer(1, 1))
    body = json.dumps([[0.5] * 30]).encode()
    for key in ("alice", "bob", "carol", "dave"):
        seen = {mesh.invoke(body, "application/json", routing_key=key).invoked_production_variant for _ in range(10)}
        assert len(seen) == 1


def test_unknown_variant_endpoint_and_bad_bodies_are_client_errors(mesh):
    mesh.push(mesh.cancer(1, 1))
    with pytest.raises(grpc.RpcError) as info:
        mesh.invoke(b"[[1]]", "application/json", target_variant="nope")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Variant nope not found for endpoint cancer; its variants are: weak, strong" in info.value.details()
    assert reason_of(info.value) == "ValidationError"  # the runtime's name, not the control API's ValidationException

    with pytest.raises(grpc.RpcError) as info:
        mesh.invoke(b"[[1]]", "application/json", endpoint_name="nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Endpoint nope of account 000000000000 not found."  # SageMaker's words
    assert reason_of(info.value) == "ValidationError"

    bad = [
        (b"[[1, 2], [3]]", "application/json", "same length"),
        (b"1,2,3\n", "text/csv", "shape [-1, 30]"),
        (b"not npy", "application/x-npy", ".npy"),
        (b"[[1]]", "application/xml", "not supported"),
        (b"1," * 3_200_000, "text/csv", "6 MB"),
    ]
    for body, content_type, message in bad:
        with pytest.raises(grpc.RpcError) as info:
            mesh.invoke(body, content_type)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, content_type
        assert message in info.value.details()
        assert reason_of(info.value) == "ValidationError"
    with pytest.raises(grpc.RpcError) as info:
        mesh.invoke(b"[[1]]", "application/json", inference_id="x" * 65)
    assert "InferenceId" in info.value.details()


def test_open_inference_protocol_through_the_proxy(mesh, eval_rows):
    mesh.push(mesh.cancer(1, 1))
    expected = reference(mesh.models, "cancer-strong", eval_rows)
    request = pb.ModelInferRequest(model_name=EP)
    request.parameters["target_variant"].string_param = "strong"
    request.inputs.add(name="input", datatype="FP32", shape=list(eval_rows.shape))
    request.raw_input_contents.append(eval_rows.tobytes())
    response = mesh.oip.ModelInfer(request, timeout=30)
    assert response.model_name == EP
    assert response.parameters["invoked_production_variant"].string_param == "strong"
    outputs = {o.name: i for i, o in enumerate(response.outputs)}
    label = np.frombuffer(response.raw_output_contents[outputs["label"]], dtype=np.int64)
    np.testing.assert_array_equal(label, expected["label"])

    typed = pb.ModelInferRequest(model_name=EP)
    typed.parameters["target_variant"].string_param = "strong"
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=list(eval_rows.shape))
    tensor.contents.fp32_contents.extend(eval_rows.reshape(-1).tolist())
    response = mesh.oip.ModelInfer(typed, timeout=30)
    assert response.parameters["invoked_production_variant"].string_param == "strong"
    probabilities = np.frombuffer(response.raw_output_contents[outputs["probabilities"]], dtype=np.float32)
    np.testing.assert_array_equal(probabilities.reshape(-1, 2), expected["probabilities"])

    wrong = pb.ModelInferRequest(model_name=EP)
    wrong.inputs.add(name="input", datatype="FP32", shape=[1, 3])
    wrong.raw_input_contents.append(np.zeros(3, dtype=np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        mesh.oip.ModelInfer(wrong, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shape [1, 3]" in info.value.details()  # the model server's own message

    health = health_pb2_grpc.HealthStub(mesh.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(mesh.channel)
    (answer,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    listed = {service.name for service in answer.list_services_response.service}
    assert {"mve.v1.EndpointRuntime", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= listed
    assert mesh.oip.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert mesh.oip.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
    assert not mesh.ready("nope")
    metadata = mesh.oip.ModelMetadata(pb.ModelMetadataRequest(name=EP), timeout=5)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("input", "FP32", [-1, 30])]
    assert [t.name for t in metadata.outputs] == ["label", "probabilities"]


def test_model_specs_are_asked_of_an_instance_when_the_table_has_none(mesh, eval_rows):
    bare = control_pb2.EndpointRoute(
        endpoint_name="bare", variants=[mesh.variant("only", "cancer-strong", 1, ["strong-0"], with_specs=False)]
    )
    mesh.push(bare)
    got = mesh.invoke(npy(eval_rows), "application/x-npy", endpoint_name="bare")
    assert got.invoked_production_variant == "only"
    np.testing.assert_array_equal(np.load(io.BytesIO(got.body)), reference(mesh.models, "cancer-strong", eval_rows)["label"])


def test_invocations_are_reported_to_the_control_plane(mesh):
    mesh.push(mesh.cancer(1, 1))
    before = len(mesh.cp.reports)
    split(mesh, 50, target_variant="weak")

    def reported():
        total = 0
        for report in mesh.cp.reports[before:]:
            total += sum(v.invocations for v in report.variants if (v.endpoint_name, v.variant_name) == (EP, "weak"))
        return total >= 50

    wait_until(reported, what="stats for 50 invocations")


def test_the_proxy_keeps_serving_without_the_control_plane_and_resubscribes(mesh):
    mesh.push(mesh.cancer(1, 1))
    subscriptions = mesh.cp.subscriptions
    mesh.cp.stop()
    assert split(mesh, 40, target_variant="weak") == {"weak": 40}
    time.sleep(0.5)  # let the proxy find the control plane gone and retry at least once
    assert split(mesh, 40, target_variant="strong") == {"strong": 40}
    mesh.cp.start(mesh.cp.port)
    version = mesh.push(mesh.cancer(1, 1, name="after-restart"))
    assert mesh.ready("after-restart") and mesh.ready(f"probe-{version}")
    assert mesh.cp.subscriptions > subscriptions


def test_a_killed_instance_is_retried_on_the_other_one(mesh, module_services, eval_rows):
    for name in ("doomed", "survivor"):
        mesh.servers[name] = module_services(
            ["model-server", "--model", str(mesh.models["cancer-weak"]), "--model-name", "cancer-weak"]
        )
    mesh.push(mesh.cancer(1, 0, name="fragile", weak_servers=("doomed", "survivor")))
    assert split_on(mesh, "fragile", 10) == {"weak": 10}
    mesh.servers["doomed"].kill()
    assert split_on(mesh, "fragile", 40) == {"weak": 40}


def split_on(mesh, endpoint: str, n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(n):
        name = mesh.invoke(json.dumps([[0.5] * 30]).encode(), "application/json", endpoint_name=endpoint).invoked_production_variant
        counts[name] = counts.get(name, 0) + 1
    return counts
