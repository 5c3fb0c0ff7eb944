"""`mve model-server` under mutual TLS, as the control plane launches it: only the control plane's,
proxies' and administrators' certificates may call it; other CA-signed callers are refused by name;
health and reflection stay open to any CA-signed caller; no certificate, another CA or plaintext
never get past the handshake."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve.errors import reason_of
from mve.pki import ensure_local_pki, make_certificate
from procs import run_mve
from tiny_models import build_model

pytestmark = pytest.mark.integration

Tensor = pb.ModelInferRequest.InferInputTensor


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    files = ensure_local_pki(directory / "tls")
    reader = make_certificate(directory, "reader", "someone-else", files)
    return files, reader


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "plus.onnx"
    build_model(path, "plus")
    return path


@pytest.fixture(scope="module")
def server(module_services, pki, model_path):
    files, _ = pki
    return module_services([
        "model-server", "--model", str(model_path), "--model-name", "plus",
        "--tls-cert", str(files.cert("model-server")), "--tls-key", str(files.key("model-server")),
        "--tls-ca", str(files.ca_cert), "--tls-client-auth", "require",
    ])


def _channel(server, pki, role=None, *, cert_key=None):
    """A TLS channel to the server verifying it against the CA, presenting `role`'s certificate (or `cert_key`)."""
    files, _ = pki
    if role is not None:
        cert_key = (files.cert(role), files.key(role))
    if cert_key is not None:
        credentials = grpc.ssl_channel_credentials(
            files.ca_cert.read_bytes(), cert_key[1].read_bytes(), cert_key[0].read_bytes()
        )
    else:
        credentials = grpc.ssl_channel_credentials(files.ca_cert.read_bytes())
    return grpc.secure_channel(server.address, credentials)


def _infer(channel):
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    request = pb.ModelInferRequest(
        model_name="plus", inputs=[Tensor(name="x", datatype="FP32", shape=[1, 2])], raw_input_contents=[x.tobytes()]
    )
    response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).tolist()


def _refused(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("role", ["proxy", "control-plane", "client"])
def test_the_proxy_control_plane_and_admin_certificates_may_infer(server, pki, role):
    with _channel(server, pki, role) as channel:
        assert _infer(channel) == [2.0, 3.0]
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(pb.ModelReadyRequest(name="plus"), timeout=10).ready
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="plus"), timeout=10).name == "plus"


@pytest.mark.parametrize("who", ["reader", "model-server"])
def test_other_ca_signed_callers_are_refused_by_name(server, pki, who):
    cert_key = pki[1] if who == "reader" else (pki[0].cert(who), pki[0].key(who))
    with _channel(server, pki, cert_key=cert_key) as channel:
        error = _refused(lambda: _infer(channel))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(error) == "AccessDeniedException"
        name = "someone-else" if who == "reader" else "mve-model-server"
        assert f"User: {name} is not authorized to perform" in error.details()
        live = _refused(lambda: pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10))
        assert live.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_is_open_to_any_ca_signed_caller(server, pki):
    with _channel(server, pki, cert_key=pki[1]) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_no_client_certificate_another_ca_or_plaintext_fail_the_handshake(server, pki, tmp_path):
    with _channel(server, pki) as channel:
        assert _refused(lambda: _infer(channel)).code() == grpc.StatusCode.UNAVAILABLE
    stranger = ensure_local_pki(tmp_path / "other-ca")
    with _channel(server, pki, cert_key=(stranger.cert("proxy"), stranger.key("proxy"))) as channel:
        assert _refused(lambda: _infer(channel)).code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(server.address) as channel:
        assert _refused(lambda: _infer(channel)).code() == grpc.StatusCode.UNAVAILABLE
    assert server.alive()


def test_a_bad_tls_flag_stops_the_start_naming_it(model_path, pki):
    files, _ = pki
    result = run_mve([
        "model-server", "--model", str(model_path), "--tls-cert", str(files.cert("model-server")),
        "--tls-key", str(files.key("model-server")), "--tls-client-auth", "require",
    ])
    assert result.returncode == 2
    assert "--tls-client-auth require needs" in result.stderr and "--tls-ca" in result.stderr
