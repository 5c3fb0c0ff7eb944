"""`mve model-server` as a real process: every Open Inference Protocol RPC, health, reflection,
input validation, CUDA refusal and graceful stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from onnx import TensorProto, helper, numpy_helper

from mve import __version__
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve.errors import reason_of
from mve.examples import load_eval_data, mlp_reference
from mve.tensors import decode_bytes_tensor, encode_bytes_tensor
from procs import run_mve, start_service

pytestmark = pytest.mark.integration

Tensor = pb.ModelInferRequest.InferInputTensor
Requested = pb.ModelInferRequest.InferRequestedOutputTensor


def _save(model, path):
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def build_adder(path):
    """Two dynamic 1-D inputs added together: valid metadata, but a runtime failure on unequal lengths."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "adder",
        inputs=[
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["m"]),
        ],
        outputs=[helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["k"])],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def build_slow(path, width=256, layers=1000):
    """A chain of `layers` MatMul+Tanh: seconds of real work for a couple of thousand rows."""
    weights = (np.random.default_rng(0).standard_normal((width, width)) / 16).astype(np.float32)
    nodes, previous = [], "input"
    for layer in range(layers):
        out = "output" if layer == layers - 1 else f"t{layer}"
        nodes += [
            helper.make_node("MatMul", [previous, "w"], [f"m{layer}"]),
            helper.make_node("Tanh", [f"m{layer}"], [out]),
        ]
        previous = out
    graph = helper.make_graph(
        nodes,
        "slow",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _served(path, name):
    service = start_service(["model-server", "--model", str(path), "--model-name", name, "--threads", "1"])
    channel = grpc.insecure_channel(service.address)
    try:
        yield service, channel
    finally:
        channel.close()
        service.stop()


@pytest.fixture(scope="module")
def cancer(example_models):
    yield from _served(example_models["cancer-strong"], "cancer")


@pytest.fixture(scope="module")
def stub(cancer):
    return pb_grpc.GRPCInferenceServiceStub(cancer[1])


@pytest.fixture(scope="module")
def mlp_stub(example_models):
    for _, channel in _served(example_models["mlp"], "mlp"):
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def adder_stub(tmp_path_factory):
    path = build_adder(tmp_path_factory.mktemp("adder") / "adder.onnx")
    for _, channel in _served(path, "adder"):
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _local(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _infer_request(x, **kwargs):
    return pb.ModelInferRequest(
        inputs=[Tensor(name="input", datatype="FP32", shape=list(x.shape))],
        raw_input_contents=[x.tobytes()],
        **kwargs,
    )


def _output(response, name):
    index = [o.name for o in response.outputs].index(name)
    meta = response.outputs[index]
    dtype = {"FP32": np.float32, "INT64": np.int64}[meta.datatype]
    return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(tuple(meta.shape))


def _rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


def _assert_still_serving(stub):
    x, _ = load_eval_data()
    response = stub.ModelInfer(_infer_request(x[:2], model_name="cancer"), timeout=10)
    assert _output(response, "label").shape == (2,)


def test_help_lists_every_flag():
    result = run_mve(["model-server", "--help"])
    assert result.returncode == 0
    for flag in ("--model", "--model-name", "--host", "--port", "--device", "--threads", "--grace-period-s"):
        assert flag in result.stdout


def test_ready_line_names_the_service_and_a_loopback_port(cancer):
    service, _ = cancer
    assert service.ready["service"] == "model-server"
    assert service.address.startswith("127.0.0.1:") and 0 < service.port <= 65535
    assert service.ready["pid"] == service.process.pid


def test_server_live_ready_and_metadata(stub):
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    metadata = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert (metadata.name, metadata.version, list(metadata.extensions)) == ("mve-model-server", __version__, [])


def test_model_ready_and_metadata_describe_the_real_model(stub):
    assert stub.ModelReady(pb.ModelReadyRequest(name="cancer"), timeout=10).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="cancer", version="1"), timeout=10).ready
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="cancer"), timeout=10)
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("cancer", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("input", "FP32", [-1, 30])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]


@pytest.mark.parametrize(
    "call, request_",
    [
        ("ModelReady", pb.ModelReadyRequest(name="other")),
        ("ModelMetadata", pb.ModelMetadataRequest(name="other")),
        ("ModelInfer", pb.ModelInferRequest(model_name="other")),
        ("ModelMetadata", pb.ModelMetadataRequest(name="cancer", version="7")),
    ],
)
def test_another_model_name_or_version_is_not_found(stub, call, request_):
    error = _rpc_error(getattr(stub, call), request_)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(error) == "ResourceNotFound"
    assert "cancer" in error.details()
    _assert_still_serving(stub)


def test_health_check_and_watch_report_serving(cancer):
    health = health_pb2_grpc.HealthStub(cancer[1])
    for service in ("", "inference.GRPCInferenceService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_reflection_lists_the_services(cancer):
    reflection = reflection_pb2_grpc.ServerReflectionStub(cancer[1])
    [response] = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {service.name for service in response.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_infer_raw_equals_onnxruntime_in_process(stub, example_models):
    x, _ = load_eval_data()
    response = stub.ModelInfer(_infer_request(x, model_name="cancer", id="req-1"), timeout=10)
    assert (response.model_name, response.model_version, response.id) == ("cancer", "1", "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("label", "INT64", [len(x)]),
        ("probabilities", "FP32", [len(x), 2]),
    ]
    labels, probabilities = _local(example_models["cancer-strong"]).run(None, {"input": x})
    np.testing.assert_array_equal(_output(response, "label"), labels)
    np.testing.assert_allclose(_output(response, "probabilities"), probabilities, rtol=1e-6)


def test_infer_typed_contents_equals_onnxruntime_in_process(mlp_stub, example_models):
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    tensor = Tensor(name="input", datatype="FP32", shape=[5, 16])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    response = mlp_stub.ModelInfer(pb.ModelInferRequest(model_name="mlp", inputs=[tensor]), timeout=10)
    [expected] = _local(example_models["mlp"]).run(None, {"input": x})
    np.testing.assert_array_equal(_output(response, "output"), expected)
    np.testing.assert_allclose(_output(response, "output"), mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_empty_model_name_means_this_model(stub):
    x, _ = load_eval_data()
    response = stub.ModelInfer(_infer_request(x[:4]), timeout=10)
    assert response.model_name == "cancer" and len(response.outputs) == 2


def test_requested_outputs_are_the_only_ones_returned(stub, example_models):
    x, _ = load_eval_data()
    request = _infer_request(x[:8], model_name="cancer", outputs=[Requested(name="probabilities")])
    response = stub.ModelInfer(request, timeout=10)
    assert [o.name for o in response.outputs] == ["probabilities"]
    assert len(response.raw_output_contents) == 1
    [probabilities] = _local(example_models["cancer-strong"]).run(["probabilities"], {"input": x[:8]})
    np.testing.assert_allclose(_output(response, "probabilities"), probabilities, rtol=1e-6)


def test_two_inputs_in_order(adder_stub):
    a, b = np.arange(4, dtype=np.float32), np.full(4, 0.5, dtype=np.float32)
    request = pb.ModelInferRequest(
        model_name="adder",
        inputs=[Tensor(name="b", datatype="FP32", shape=[4]), Tensor(name="a", datatype="FP32", shape=[4])],
        raw_input_contents=[b.tobytes(), a.tobytes()],
    )
    response = adder_stub.ModelInfer(request, timeout=10)
    np.testing.assert_array_equal(_output(response, "sum"), a + b)


def test_onnxruntime_failure_is_a_model_error(adder_stub):
    request = pb.ModelInferRequest(
        model_name="adder",
        inputs=[Tensor(name="a", datatype="FP32", shape=[2]), Tensor(name="b", datatype="FP32", shape=[3])],
        raw_input_contents=[np.zeros(2, np.float32).tobytes(), np.zeros(3, np.float32).tobytes()],
    )
    error = _rpc_error(adder_stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert reason_of(error) == "ModelError"
    assert "model failed" in error.details()
    assert adder_stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def build_text_echo(path):
    """A string tensor passed through unchanged (V2 BYTES in and out)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "text-echo",
        inputs=[helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        outputs=[helper.make_tensor_value_info("echo", TensorProto.STRING, ["n"])],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_bytes_tensors_round_trip_raw_and_typed(services, tmp_path):
    service = services(["model-server", "--model", str(build_text_echo(tmp_path / "echo.onnx"))])
    words = np.array(["héllo".encode(), b"", b"world"], dtype=object)
    with grpc.insecure_channel(service.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="echo"), timeout=10)
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("text", "BYTES", [-1])]
        raw = pb.ModelInferRequest(
            inputs=[Tensor(name="text", datatype="BYTES", shape=[3])], raw_input_contents=[encode_bytes_tensor(words)]
        )
        typed_tensor = Tensor(name="text", datatype="BYTES", shape=[3])
        typed_tensor.contents.bytes_contents.extend(list(words))
        for request in (raw, pb.ModelInferRequest(inputs=[typed_tensor])):
            response = stub.ModelInfer(request, timeout=10)
            assert (response.outputs[0].datatype, list(response.outputs[0].shape)) == ("BYTES", [3])
            assert list(decode_bytes_tensor(response.raw_output_contents[0], 3, "echo")) == list(words)
        bad = pb.ModelInferRequest(
            inputs=[Tensor(name="text", datatype="BYTES", shape=[1])],
            raw_input_contents=[encode_bytes_tensor(np.array([b"\xff\xfe"], dtype=object))],
        )
        error = _rpc_error(stub.ModelInfer, bad)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "input 'text'" in error.details()


def _x(rows=2):
    return load_eval_data()[0][:rows]


def _typed(name, shape, values):
    tensor = Tensor(name=name, datatype="FP32", shape=shape)
    tensor.contents.fp32_contents.extend(values)
    return tensor


def _raw(shape, *, datatype="FP32", name="input", copies=1, raw=None, **kwargs):
    """A request with `copies` copies of one input tensor and raw contents (two rows of real data by default)."""
    raw = _x().tobytes() if raw is None else raw
    return pb.ModelInferRequest(
        inputs=[Tensor(name=name, datatype=datatype, shape=shape)] * copies,
        raw_input_contents=[raw] * copies,
        **kwargs,
    )


BIG_ROWS = 52429  # 52429 x 30 FP32 = 6,291,480 bytes: just over 6 MB, under gRPC's 8 MiB limit

BAD_REQUESTS = {
    "unknown input": (_raw([2, 30], name="bogus"), "unknown input 'bogus'"),
    "missing input": (pb.ModelInferRequest(model_name="cancer"), "missing input 'input'"),
    "duplicate input": (_raw([2, 30], copies=2), "'input' is given more than once"),
    "wrong datatype": (_raw([1, 30], datatype="FP64"), "'input' has datatype 'FP64'"),
    "wrong rank": (_raw([60]), "'input' has shape [60]"),
    "wrong fixed dimension": (_raw([3, 20]), "'input' has shape [3, 20]"),
    "negative dimension": (_raw([-1, 30]), "'input' has shape [-1, 30]"),
    "byte size does not match shape": (_raw([3, 30]), "input 'input': 240 bytes of contents, expected 360"),
    "raw contents count": (
        pb.ModelInferRequest(
            inputs=[Tensor(name="input", datatype="FP32", shape=[2, 30])], raw_input_contents=[_x().tobytes()] * 2
        ),
        "raw_input_contents has 2 entries but the request has 1 inputs ('input')",
    ),
    "typed contents count": (
        pb.ModelInferRequest(inputs=[_typed("input", [2, 30], [0.5] * 59)]),
        "input 'input': 59 values",
    ),
    "raw and typed contents": (
        pb.ModelInferRequest(inputs=[_typed("input", [2, 30], [0.5] * 60)], raw_input_contents=[_x().tobytes()]),
        "'input' has both raw_input_contents and typed contents",
    ),
    "payload over 6 MB": (_raw([BIG_ROWS, 30], raw=bytes(BIG_ROWS * 30 * 4)), "'input' (6291480 bytes)"),
    "unknown requested output": (
        _raw([2, 30], outputs=[Requested(name="logits")]),
        "unknown requested output 'logits'",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_is_invalid_argument_naming_it_and_the_server_stays_up(stub, case):
    request, message = BAD_REQUESTS[case]
    error = _rpc_error(stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert reason_of(error) == "ValidationException"
    assert message in error.details()
    if case == "payload over 6 MB":
        assert "6 MB" in error.details()
    _assert_still_serving(stub)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--threads", "0"], "--threads must be 1.."),
        (["--port", "70000"], "--port must be 0..65535"),
        (["--host", "not a host!"], "--host"),
        (["--device", "tpu"], "--device"),
        (["--grace-period-s", "-1"], "--grace-period-s"),
        (["--model-name", "has space"], "--model-name"),
    ],
)
def test_bad_flags_exit_non_zero_with_a_clear_message(example_models, flags, message):
    result = run_mve(["model-server", "--model", str(example_models["mlp"]), *flags])
    assert result.returncode == 2
    assert message in result.stderr


def test_missing_or_broken_model_file_exits_non_zero(tmp_path):
    result = run_mve(["model-server", "--model", str(tmp_path / "nope.onnx")])
    assert result.returncode != 0 and "nope.onnx is not a file" in result.stderr
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    result = run_mve(["model-server", "--model", str(broken)])
    assert result.returncode != 0 and "cannot load model" in result.stderr and "broken.onnx" in result.stderr


def test_port_in_use_exits_non_zero(example_models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_mve(["model-server", "--model", str(example_models["mlp"]), "--port", str(port)])
    assert result.returncode != 0 and f"cannot bind 127.0.0.1:{port}" in result.stderr


def test_missing_cuda_device_is_refused_not_run_on_cpu(example_models):
    result = run_mve(["model-server", "--model", str(example_models["mlp"]), "--device", "cuda:63"])
    assert result.returncode != 0
    assert "CUDA is not available for device cuda:63" in result.stderr
    assert '"event": "ready"' not in result.stdout


def test_cuda_serves_on_cuda_or_refuses_with_the_reason(example_models):
    """Where CUDA works the server runs on CUDAExecutionProvider; elsewhere it exits and says why.
    Never a silent CPU fallback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mve", "model-server", "--model", str(example_models["mlp"]), "--device", "cuda"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = process.stdout.readline()
        if not line:
            assert process.wait(30) != 0
            stderr = process.stderr.read()
            assert "CUDA is not available for device cuda:0: " in stderr
            reason = stderr.split("CUDA is not available for device cuda:0: ", 1)[1].strip()
            assert reason, "the refusal must say why"
            return
        address = json.loads(line)["address"]
        with grpc.insecure_channel(address) as channel:
            x = np.ones((2, 16), np.float32)
            response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_infer_request(x), timeout=30)
        np.testing.assert_allclose(_output(response, "output"), mlp_reference(x), rtol=1e-3, atol=1e-4)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "providers=CUDAExecutionProvider" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _start_slow(tmp_path_factory, grace):
    path = build_slow(tmp_path_factory.mktemp("slow") / "slow.onnx")
    return start_service(
        ["model-server", "--model", str(path), "--log-level", "DEBUG", "--grace-period-s", str(grace)]
    )


def _call_in_background(address, x):
    result: dict = {}

    def call():
        with grpc.insecure_channel(address) as channel:
            try:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                result["response"] = stub.ModelInfer(_infer_request(x), timeout=120)
            except grpc.RpcError as error:
                result["error"] = error

    thread = threading.Thread(target=call)
    thread.start()
    return thread, result


def _wait_for_log(service, text, limit_s=60.0):
    deadline = time.monotonic() + limit_s
    while not any(text in line for line in service.output):
        assert time.monotonic() < deadline and service.alive(), f"no {text!r} in:\n{''.join(service.output)}"
        time.sleep(0.01)


def test_sigterm_lets_the_request_in_flight_finish_then_exits_zero(tmp_path_factory):
    service = _start_slow(tmp_path_factory, grace=60)
    try:
        x = np.random.default_rng(1).standard_normal((1200, 256)).astype(np.float32)
        thread, result = _call_in_background(service.address, x)
        _wait_for_log(service, "event=infer_start")
        service.process.send_signal(signal.SIGTERM)
        _wait_for_log(service, "event=stopping")
        assert thread.is_alive(), "the request should still be running when the server starts stopping"
        thread.join(120)
        assert "error" not in result, result.get("error")
        assert _output(result["response"], "output").shape == (1200, 256)
        assert service.process.wait(60) == 0
    finally:
        service.stop()


def test_sigterm_after_the_grace_period_cancels_the_run_and_exits_zero(tmp_path_factory):
    service = _start_slow(tmp_path_factory, grace=0.2)
    try:
        x = np.random.default_rng(1).standard_normal((5000, 256)).astype(np.float32)
        thread, result = _call_in_background(service.address, x)
        _wait_for_log(service, "event=infer_start")
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(60) == 0
        assert any("event=grace_period_over model=slow cancelled_runs=1" in line for line in service.output)
        thread.join(60)
        assert "error" in result and "response" not in result
    finally:
        service.stop()
