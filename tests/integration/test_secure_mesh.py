"""``mve up --secure`` with real processes: one secure Mesh on a temporary data dir, used as a user would.

The SDK finds the data dir's CA, admin certificate and token through ``MVE_DATA_DIR`` alone; the
endpoint's model servers run under mutual TLS; the proxy wants the token for invocations; callers
without TLS, without a client certificate, without the token, or with the proxy's certificate are
refused as docs/security.md says; boto3 works over HTTPS with ``verify=ca.crt``; the token is never
in the logs; and the data dir stays secure on a later ``mve up`` without ``--secure``.
"""

from __future__ import annotations

import io
import stat
import threading
from collections import Counter

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import mve
from mve._proto import control_pb2, control_pb2_grpc, runtime_pb2, runtime_pb2_grpc
from mve.first_key import ensure_first_key
from mve.mesh import Mesh
from mve.sdk import ClientError, EndpointConnectionError
from mve.tls import load_tls
from procs import start_service
from tiny_models import build_model, npy

pytestmark = pytest.mark.integration

ENDPOINT = "secure"
ROWS = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
FAST = {"Delay": 0.2, "MaxAttempts": 600}
CREDENTIAL_VARIABLES = ("MVE_TLS_CA", "MVE_TLS_CERT", "MVE_TLS_KEY", "MVE_TOKEN", "MVE_TOKEN_FILE")


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """One secure mesh (ports 0, metrics off), its data dir and log, and the endpoint made through the
    SDK with nothing but MVE_DATA_DIR set."""
    work = tmp_path_factory.mktemp("secure-mesh")
    data_dir = work / "data"
    build_model(work / "plus.onnx", "plus")
    mesh = Mesh(data_dir, secure=True, log_path=work / "mesh.log", control_plane_metrics_port=-1,
                proxy_metrics_port=-1, env={"MVE_PROXY_DRAIN_S": "0"})
    with pytest.MonkeyPatch.context() as env:
        for name in CREDENTIAL_VARIABLES:
            env.delenv(name, raising=False)
        env.setenv("MVE_DATA_DIR", str(data_dir))
        mesh.start()
        try:
            with mve.client("sagemaker", address=mesh.control_plane_address) as sm:
                sm.create_model(ModelName="plus", PrimaryContainer={"Image": "onnxruntime",
                                                                    "ModelDataUrl": str(work / "plus.onnx")})
                sm.create_endpoint_config(EndpointConfigName=ENDPOINT, ProductionVariants=[
                    {"VariantName": "AllTraffic", "ModelName": "plus", "InitialInstanceCount": 1,
                     "InstanceType": "ml.cpu.small"}])
                sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=ENDPOINT)
                sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig=FAST)
            yield {"mesh": mesh, "data_dir": data_dir, "work": work, "tls": data_dir / "tls",
                   "token": (data_dir / "token").read_text().strip()}
        finally:
            mesh.stop()


@pytest.fixture
def data_dir_env(secure, monkeypatch):
    """MVE_DATA_DIR at the secure data dir, and no other credential variable."""
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MVE_DATA_DIR", str(secure["data_dir"]))


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """Nothing for the SDK to find: no variables, MVE_DATA_DIR at an empty dir."""
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MVE_DATA_DIR", str(tmp_path))


def _admin_channel(secure, address: str) -> grpc.Channel:
    tls = secure["tls"]
    files = load_tls(tls / "client.crt", tls / "client.key", tls / "ca.crt")
    return grpc.secure_channel(address, files.channel_credentials())


def _routing_table(secure) -> control_pb2.RoutingTable:
    """The control plane's current routing table, read as an administrator (mutual TLS)."""
    with _admin_channel(secure, secure["mesh"].control_plane_address) as channel:
        stream = control_pb2_grpc.EndpointControlStub(channel).WatchRoutes(
            control_pb2.WatchRoutesRequest(proxy_id="test-secure-mesh"), timeout=10)
        table = next(stream)
        stream.cancel()
        return table


def _answer(response) -> np.ndarray:
    return np.load(io.BytesIO(response["Body"].read()))


def test_the_data_dirs_keys_certificates_and_token_are_0600(secure):
    files = sorted(p for p in secure["tls"].iterdir()) + [secure["data_dir"] / "token"]
    assert {p.name for p in files} >= {"ca.crt", "ca.key", "control-plane.key", "proxy.key", "model-server.key",
                                        "client.key", "token"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
    assert stat.S_IMODE(secure["tls"].stat().st_mode) == 0o700


def test_model_servers_run_under_mutual_tls(secure):
    table = _routing_table(secure)
    assert table.upstream_tls
    [route] = [e for e in table.endpoints if e.endpoint_name == ENDPOINT]
    [instance] = route.variants[0].instances
    # A plaintext caller cannot even reach the model server's health check.
    with grpc.insecure_channel(instance.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_sdk_invokes_through_the_proxy_with_the_data_dirs_token(secure, data_dir_env):
    with mve.client("sagemaker-runtime", address=secure["mesh"].proxy_address) as smr:
        response = smr.invoke_endpoint(EndpointName=ENDPOINT, Body=npy(ROWS), ContentType="application/x-npy")
    assert response["InvokedProductionVariant"] == "AllTraffic"
    np.testing.assert_allclose(_answer(response), ROWS + 1)


def test_four_threads_invoke_200_times_without_a_failure(secure, data_dir_env):
    outcomes: Counter = Counter()
    lock = threading.Lock()
    body = npy(ROWS)
    with mve.client("sagemaker-runtime", address=secure["mesh"].proxy_address) as smr:

        def invoke(count: int) -> None:
            for _ in range(count):
                try:
                    response = smr.invoke_endpoint(EndpointName=ENDPOINT, Body=body, ContentType="application/x-npy")
                    outcome = "ok" if np.allclose(_answer(response), ROWS + 1) else "wrong answer"
                except Exception as error:  # noqa: BLE001 - counted, shown below
                    outcome = f"{type(error).__name__}: {error}"
                with lock:
                    outcomes[outcome] += 1

        threads = [threading.Thread(target=invoke, args=(50,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert outcomes == Counter({"ok": 200}), outcomes


def test_mesh_client_dials_with_the_data_dirs_admin_credentials(secure, no_credentials):
    mesh = secure["mesh"]
    with mesh.client("sagemaker") as sm, mesh.client("sagemaker-runtime") as smr:
        assert sm.security.secure and sm.security.token == secure["token"]
        assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == [ENDPOINT]
        response = smr.invoke_endpoint(EndpointName=ENDPOINT, Body=npy(ROWS), ContentType="application/x-npy")
        np.testing.assert_allclose(_answer(response), ROWS + 1)


def test_a_plaintext_client_cannot_reach_the_control_plane(secure, no_credentials):
    with mve.client("sagemaker", address=secure["mesh"].control_plane_address, timeout=5) as sm:
        assert not sm.security.secure
        with pytest.raises(EndpointConnectionError):
            sm.list_endpoints()


def test_a_client_with_the_ca_but_no_certificate_is_refused_by_the_control_plane(secure, no_credentials):
    with mve.client("sagemaker", address=secure["mesh"].control_plane_address, timeout=5,
                    tls_ca=secure["tls"] / "ca.crt") as sm:
        with pytest.raises(EndpointConnectionError):  # the TLS handshake itself fails
            sm.list_endpoints()


def test_the_runtime_without_the_token_is_unauthenticated(secure, no_credentials):
    proxy = secure["mesh"].proxy_address
    with mve.client("sagemaker-runtime", address=proxy, tls_ca=secure["tls"] / "ca.crt") as smr:
        with pytest.raises(ClientError) as caught:
            smr.invoke_endpoint(EndpointName=ENDPOINT, Body=npy(ROWS), ContentType="application/x-npy")
    assert caught.value.response["Error"]["Code"] == "MissingAuthenticationTokenException"
    with mve.client("sagemaker-runtime", address=proxy, tls_ca=secure["tls"] / "ca.crt",
                    token="w" * 43) as smr:
        with pytest.raises(ClientError) as caught:
            smr.invoke_endpoint(EndpointName=ENDPOINT, Body=npy(ROWS), ContentType="application/x-npy")
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"
    # On the wire: UNAUTHENTICATED.
    files = load_tls(ca=secure["tls"] / "ca.crt")
    with grpc.secure_channel(proxy, files.channel_credentials()) as channel:
        with pytest.raises(grpc.RpcError) as raw:
            runtime_pb2_grpc.EndpointRuntimeStub(channel).InvokeEndpoint(
                runtime_pb2.InvokeEndpointRequest(endpoint_name=ENDPOINT, body=npy(ROWS),
                                                  content_type="application/x-npy"), timeout=5)
    assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_proxys_certificate_may_describe_but_not_create(secure, no_credentials):
    tls = secure["tls"]
    with mve.client("sagemaker", address=secure["mesh"].control_plane_address, tls_ca=tls / "ca.crt",
                    tls_cert=tls / "proxy.crt", tls_key=tls / "proxy.key") as sm:
        assert sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"] == "InService"
        with pytest.raises(ClientError) as caught:
            sm.create_model(ModelName="intruder", PrimaryContainer={
                "Image": "onnxruntime", "ModelDataUrl": str(secure["work"] / "plus.onnx")})
    error = caught.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert "mve-proxy is not authorized to perform: sagemaker:CreateModel" in error["Message"]


def test_boto3_over_https_with_the_data_dirs_ca_and_first_key(secure, data_dir_env):
    import boto3
    from botocore.config import Config

    mesh = secure["mesh"]
    key = ensure_first_key(secure["data_dir"], mesh.control_plane_address)
    options = dict(region_name="us-east-1", aws_access_key_id=key.access_key_id,
                   aws_secret_access_key=key.secret_access_key, verify=str(secure["tls"] / "ca.crt"),
                   config=Config(retries={"total_max_attempts": 1}))
    sm = boto3.client("sagemaker", endpoint_url=f"https://{mesh.control_plane_http_address}", **options)
    assert ENDPOINT in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    runtime = boto3.client("sagemaker-runtime", endpoint_url=f"https://{mesh.proxy_http_address}", **options)
    response = runtime.invoke_endpoint(EndpointName=ENDPOINT, Body=npy(ROWS), ContentType="application/x-npy",
                                       Accept="application/x-npy")
    np.testing.assert_allclose(np.load(io.BytesIO(response["Body"].read())), ROWS + 1)


def test_the_token_is_never_in_the_logs(secure):
    log = (secure["work"] / "mesh.log").read_text()
    assert "event=call_refused" in log  # the refusals above were logged...
    assert secure["token"] not in log  # ...and nothing anywhere shows the token


def test_a_later_run_without_secure_stays_secure(secure, data_dir_env):
    mesh, data_dir = secure["mesh"], secure["data_dir"]
    with mve.client("sagemaker", address=mesh.control_plane_address) as sm:
        sm.delete_endpoint(EndpointName=ENDPOINT)  # nothing for the next run to start
        sm.get_waiter("endpoint_deleted").wait(EndpointName=ENDPOINT, WaiterConfig=FAST)
    before = {p.name: p.read_bytes() for p in (data_dir / "tls").iterdir()}
    token = (data_dir / "token").read_bytes()
    mesh.stop()
    # `mve up` itself, without --secure, on the same data dir.
    service = start_service(["up", "--data-dir", str(data_dir), "--control-plane-port", "0", "--proxy-port", "0",
                             "--control-plane-metrics-port", "-1", "--proxy-metrics-port", "-1"], timeout=120)
    try:
        ready = service.ready
        assert ready["secure"] is True
        output = "".join(service.output)
        assert "stays secure" in output and f"remove {data_dir.resolve() / 'tls'}" in output
        assert f"https://{ready['control_plane_http']}" in output and f"MVE_DATA_DIR={data_dir.resolve()}" in output
        assert ready["credentials"]  # the first key, asked for with the data dir's admin credentials
        assert {p.name: p.read_bytes() for p in (data_dir / "tls").iterdir()} == before
        assert (data_dir / "token").read_bytes() == token
        with mve.client("sagemaker", address=ready["control_plane"]) as sm:
            assert sm.list_endpoints()["Endpoints"] == []
        assert secure["token"] not in "".join(service.output)
    finally:
        service.stop()
