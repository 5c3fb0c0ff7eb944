"""Dynamic batching end to end: a real proxy batching for real model servers (mlp example model).

Routes come from the fake WatchRoutes server of test_proxy.py, so a test sets batching knobs and
instances exactly; the proxy's per-variant batch counters arrive there through ReportStats, which
is how these tests prove that requests were batched (fewer model calls than requests).
"""

from __future__ import annotations

import io
import itertools
import re

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from procs import wait_until
from test_proxy import FakeControlPlane

import mve
from mve._proto import control_pb2, runtime_pb2, runtime_pb2_grpc
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve.errors import reason_of
from mve.sdk import ClientError

pytestmark = pytest.mark.integration

EP = "mlp"
FEATURES = 16


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class BatchMesh:
    """Two mlp model servers, the fake control plane and a proxy reporting stats every 0.1 s."""

    def __init__(self, services, models):
        self.cp = FakeControlPlane()
        cp_address = self.cp.start()
        self.services = services
        self.model_path = str(models["mlp"])
        self.servers = {name: self.model_server() for name in ("mlp-0", "mlp-1")}
        self.proxy = services(["proxy", "--control-plane", cp_address, "--port", "0", "--stats-interval", "0.1"])
        self.channel = grpc.insecure_channel(self.proxy.address)
        self.runtime = runtime_pb2_grpc.EndpointRuntimeStub(self.channel)
        self.oip = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.session = ort.InferenceSession(self.model_path, providers=["CPUExecutionProvider"])
        self.versions = itertools.count(1)

    def model_server(self):
        return self.services(["model-server", "--model", self.model_path, "--model-name", "mlp"])

    def variant(self, name: str, servers, *, batch: int, delay_us: int, weight: float = 1.0, in_flight: int = 1):
        tensor = control_pb2.TensorSpec
        return control_pb2.VariantRoute(
            variant_name=name,
            model_name="mlp",
            weight=weight,
            routing_strategy="LEAST_OUTSTANDING_REQUESTS",
            batching=control_pb2.BatchingConfig(
                max_batch_size=batch, max_delay_us=delay_us, max_batches_in_flight_per_instance=in_flight
            ),
            instances=[control_pb2.InstanceRoute(instance_id=s, address=self.servers[s].address) for s in servers],
            inputs=[tensor(name="input", datatype="FP32", shape=[-1, FEATURES])],
            outputs=[tensor(name="output", datatype="FP32", shape=[-1, 4])],
        )

    def push(self, *variants: control_pb2.VariantRoute) -> None:
        """Serve endpoint `mlp` with these variants and wait until the proxy has the table."""
        version = next(self.versions)
        probe = control_pb2.EndpointRoute(
            endpoint_name=f"probe-{version}",
            variants=[self.variant("p", ["mlp-0"], batch=0, delay_us=0)],
        )
        endpoint = control_pb2.EndpointRoute(endpoint_name=EP, variants=list(variants))
        self.cp.send(control_pb2.RoutingTable(version=version, control_plane_id="fake", endpoints=[endpoint, probe]))
        wait_until(
            lambda: self.oip.ModelReady(pb.ModelReadyRequest(name=f"probe-{version}"), timeout=5).ready,
            what=f"table {version}",
        )

    def reported(self, variant: str) -> tuple[int, int]:
        """(batches, batched requests) the proxy has reported for `variant` so far."""
        key = (EP, variant)
        rows = [v for r in list(self.cp.reports) for v in r.variants if (v.endpoint_name, v.variant_name) == key]
        # One BatchSize sample per batch sent, one QueueTime sample per request that went in one.
        return sum(v.batch_size.count for v in rows), sum(v.queue_time_us.count for v in rows)

    def expected(self, x: np.ndarray) -> np.ndarray:
        """The model's unbatched answer, from onnxruntime in this process."""
        return self.session.run(None, {"input": x})[0]

    def infer_future(self, x: np.ndarray, rid: str, variant: str = "", timeout: float = 30):
        request = pb.ModelInferRequest(model_name=EP, id=rid)
        request.inputs.add(name="input", datatype="FP32", shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
        if variant:
            request.parameters["target_variant"].string_param = variant
        return self.oip.ModelInfer.future(request, timeout=timeout)

    def invoke_future(self, x: np.ndarray, variant: str = "", timeout: float = 30):
        request = runtime_pb2.InvokeEndpointRequest(
            endpoint_name=EP, body=npy(x), content_type="application/x-npy", target_variant=variant
        )
        return self.runtime.InvokeEndpoint.future(request, timeout=timeout)

    def close(self):
        self.channel.close()
        self.cp.stop()


@pytest.fixture(scope="module")
def mesh(module_services, example_models):
    mesh = BatchMesh(module_services, example_models)
    yield mesh
    mesh.close()
    assert mesh.proxy.stop() == 0
    assert "Traceback" not in "".join(mesh.proxy.output)


def outputs_of(response) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(tuple(response.outputs[0].shape))


def wait_reported(mesh, variant: str, requests: int) -> tuple[int, int]:
    return wait_until(
        lambda: mesh.reported(variant) if mesh.reported(variant)[1] >= requests else None,
        what=f"{requests} batched requests reported for {variant}",
    )


def test_concurrent_mixed_size_callers_each_get_exactly_their_own_rows(mesh):
    mesh.push(mesh.variant("batched", ["mlp-0", "mlp-1"], batch=16, delay_us=5000))
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((int(rng.integers(1, 8)), FEATURES)).astype(np.float32) for _ in range(200)]
    calls = []
    for i, x in enumerate(inputs):
        if i % 2:
            calls.append(("oip", mesh.infer_future(x, f"req-{i}")))
        else:
            calls.append(("invoke", mesh.invoke_future(x)))
    for i, ((kind, call), x) in enumerate(zip(calls, inputs)):
        response = call.result()
        if kind == "oip":
            assert response.id == f"req-{i}"
            assert response.parameters["invoked_production_variant"].string_param == "batched"
            got = outputs_of(response)
        else:
            assert response.invoked_production_variant == "batched"
            got = np.load(io.BytesIO(response.body))
        assert got.shape == (len(x), 4)
        np.testing.assert_allclose(got, mesh.expected(x), rtol=1e-5, atol=1e-6)
    batches, requests = wait_reported(mesh, "batched", 200)
    assert requests == 200
    assert batches < 200  # the model servers saw fewer ModelInfer calls than there were requests


def test_requests_the_model_rejects_fail_alone_and_their_neighbours_succeed(mesh):
    mesh.push(mesh.variant("batched", ["mlp-0", "mlp-1"], batch=32, delay_us=20_000))
    rng = np.random.default_rng(8)
    good = [rng.standard_normal((3, FEATURES)).astype(np.float32) for _ in range(20)]
    bad = [rng.standard_normal((2, FEATURES - 1)).astype(np.float32) for _ in range(5)]  # wrong width
    good_calls = [mesh.infer_future(x, f"g{i}") for i, x in enumerate(good)]
    bad_calls = [mesh.infer_future(x, f"b{i}") for i, x in enumerate(bad)]
    for call in bad_calls:
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert re.search(r"input 'input' has shape \[\d+, 15\]", info.value.details())  # a batch of only them
    for call, x in zip(good_calls, good):
        np.testing.assert_allclose(outputs_of(call.result()), mesh.expected(x), rtol=1e-5, atol=1e-6)


def test_a_batch_on_a_killed_instance_fails_its_members_only_and_later_batches_succeed(mesh):
    doomed = mesh.model_server()
    mesh.servers["doomed"] = doomed
    mesh.push(
        mesh.variant("batched", ["mlp-0"], batch=8, delay_us=20_000),
        mesh.variant("fragile", ["doomed"], batch=8, delay_us=20_000, weight=0.0),
    )
    doomed.kill()
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((2, FEATURES)).astype(np.float32) for _ in range(8)]
    fragile = [mesh.infer_future(x, f"f{i}", variant="fragile") for i, x in enumerate(xs[:4])]
    healthy = [mesh.infer_future(x, f"h{i}", variant="batched") for i, x in enumerate(xs[4:])]
    for call in fragile:
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(info.value) == "ModelNotReadyException"
    for call, x in zip(healthy, xs[4:]):
        np.testing.assert_allclose(outputs_of(call.result()), mesh.expected(x), rtol=1e-5, atol=1e-6)
    # The control plane replaces the instance; the variant's later batches succeed.
    mesh.push(
        mesh.variant("batched", ["mlp-0"], batch=8, delay_us=20_000),
        mesh.variant("fragile", ["mlp-1"], batch=8, delay_us=20_000, weight=0.0),
    )
    later = [mesh.infer_future(x, f"l{i}", variant="fragile") for i, x in enumerate(xs[:4])]
    for call, x in zip(later, xs[:4]):
        np.testing.assert_allclose(outputs_of(call.result()), mesh.expected(x), rtol=1e-5, atol=1e-6)


def test_cancelled_and_timed_out_callers_leave_the_queue_and_the_others_are_served(mesh):
    # A 1 s delay and a batch size nobody reaches: every request waits in the queue for a second.
    mesh.push(mesh.variant("patient", ["mlp-0", "mlp-1"], batch=1024, delay_us=1_000_000))
    _, before = mesh.reported("patient")
    rng = np.random.default_rng(10)
    xs = [rng.standard_normal((int(rng.integers(1, 5)), FEATURES)).astype(np.float32) for _ in range(30)]
    calls = [mesh.infer_future(x, f"c{i}") for i, x in enumerate(xs[:20])]
    hurried = [mesh.infer_future(x, f"t{i}", timeout=0.2) for i, x in enumerate(xs[20:25])]
    cancelled = [mesh.infer_future(x, f"x{i}") for i, x in enumerate(xs[25:])]
    for call in cancelled:
        assert call.cancel()
    for call in hurried:
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        # The client's deadline, or the proxy's answer at that same deadline.
        assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    for call, x in zip(calls, xs[:20]):
        np.testing.assert_allclose(outputs_of(call.result()), mesh.expected(x), rtol=1e-5, atol=1e-6)
    batches, requests = wait_reported(mesh, "patient", before + 20)
    assert requests == before + 20  # the 10 that left were never sent to a model server
    assert batches == 1


def _fixed_batch_model(path) -> str:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "fixed", [x], [y]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    save(model, str(path))
    return str(path)


def test_batching_set_through_the_sdk_reaches_the_proxy(services, example_models, tmp_path):
    control = services(["control-plane", "--data-dir", str(tmp_path / "data"), "--port", "0"])
    proxy = services(["proxy", "--control-plane", control.address, "--port", "0"])
    sm = mve.client("sagemaker", address=control.address)
    sm.create_model(ModelName="mlp", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(example_models["mlp"])})
    sm.create_model(ModelName="fixed", PrimaryContainer={"ModelDataUrl": _fixed_batch_model(tmp_path / "fixed.onnx")})
    batching = {"MaxBatchSize": 8, "MaxDelayMicroseconds": 2000, "MaxBatchesInFlightPerInstance": 2}
    with pytest.raises(ClientError) as info:
        sm.create_endpoint_config(
            EndpointConfigName="no",
            ProductionVariants=[{"VariantName": "V", "ModelName": "fixed", "InitialInstanceCount": 1, "Batching": batching}],
        )
    assert "first dimension that is not dynamic (-1) in input 'X' [2, 3], output 'Y' [2, 3]" in str(info.value)
    sm.create_endpoint_config(
        EndpointConfigName="cfg",
        ProductionVariants=[{"VariantName": "V", "ModelName": "mlp", "InitialInstanceCount": 1, "Batching": batching}],
    )
    assert sm.describe_endpoint_config(EndpointConfigName="cfg")["ProductionVariants"][0]["Batching"] == batching
    sm.create_endpoint(EndpointName=EP, EndpointConfigName="cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=EP, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})

    channel = grpc.insecure_channel(proxy.address)
    oip = pb_grpc.GRPCInferenceServiceStub(channel)
    wait_until(lambda: oip.ModelReady(pb.ModelReadyRequest(name=EP), timeout=5).ready, what="the proxy's table")
    session = ort.InferenceSession(str(example_models["mlp"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((int(rng.integers(1, 8)), FEATURES)).astype(np.float32) for _ in range(40)]
    calls = []
    for x in xs:
        request = pb.ModelInferRequest(model_name=EP)
        request.inputs.add(name="input", datatype="FP32", shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
        calls.append(oip.ModelInfer.future(request, timeout=30))
    for call, x in zip(calls, xs):
        np.testing.assert_allclose(outputs_of(call.result()), session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    channel.close()
