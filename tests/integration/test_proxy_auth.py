"""The proxy's TLS and invocation auth as real processes: a bearer token (--invoke-token-file) or a
client certificate (--tls-client-auth require) needed on every invocation method, health open; the
gRPC door on TLS and the HTTP door on HTTPS; the control plane dialled with mutual TLS and the
proxy's token (--control-plane-token-file); model servers dialled under mutual TLS when the routing
table says ``upstream_tls``, and refused by name, never in plaintext, when the proxy has no
certificate for them. Tokens never appear in the proxy's log.

Routing tables come from a fake control plane in the test process (`FakeControlPlane`), which
records the metadata and client certificate each call came with.
"""

from __future__ import annotations

import http.client
import io
import itertools
import queue
import ssl
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import mve

from mve._proto import control_pb2, control_pb2_grpc, runtime_pb2, runtime_pb2_grpc
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve.authn import bearer_metadata, new_token
from mve.errors import reason_of
from mve.pki import ensure_local_pki, make_certificate
from mve.sdk import ClientError
from mve.tls import write_private
from procs import run_mve, wait_until
from tiny_models import build_model, npy

pytestmark = pytest.mark.integration

EP = "plus"
Tensor = pb.ModelInferRequest.InferInputTensor
X = np.array([[1.0, 2.0]], dtype=np.float32)


class FakeControlPlane(control_pb2_grpc.EndpointControlServicer):
    """WatchRoutes from pushed tables; records each call's metadata and client certificate name."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None):
        self.latest: control_pb2.RoutingTable | None = None
        self.subscribers: list[queue.Queue] = []
        self.calls: list[tuple[str, dict, str | None]] = []  # (method, metadata, common name)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        control_pb2_grpc.add_EndpointControlServicer_to_server(self, self.server)
        if credentials is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.address = f"127.0.0.1:{port}"
        self.server.start()
        self.versions = itertools.count(1)

    def push(self, *endpoints, upstream_tls: bool = False) -> None:
        self.latest = control_pb2.RoutingTable(
            version=next(self.versions), control_plane_id="fake", endpoints=endpoints, upstream_tls=upstream_tls
        )
        for subscriber in list(self.subscribers):
            subscriber.put(self.latest)

    def _record(self, method, context):
        names = context.auth_context().get("x509_common_name") or [None]
        name = names[0].decode() if isinstance(names[0], bytes) else names[0]
        self.calls.append((method, dict(context.invocation_metadata()), name))

    def WatchRoutes(self, request, context):
        self._record("WatchRoutes", context)
        subscriber: queue.Queue = queue.Queue()
        self.subscribers.append(subscriber)
        if self.latest is not None:
            subscriber.put(self.latest)
        while context.is_active():
            try:
                yield subscriber.get(timeout=0.05)
            except queue.Empty:
                continue

    def ReportStats(self, request, context):
        self._record("ReportStats", context)
        return control_pb2.ReportStatsResponse()

    def stop(self):
        self.server.stop(grace=0).wait(5)


def route(server, *, name: str = EP) -> control_pb2.EndpointRoute:
    """One endpoint, one variant on `server` (model metadata asked of the model server itself)."""
    return control_pb2.EndpointRoute(
        endpoint_name=name,
        variants=[control_pb2.VariantRoute(
            variant_name="v", model_name="plus", weight=1.0, routing_strategy="RANDOM",
            instances=[control_pb2.InstanceRoute(instance_id=f"{name}-0", address=server.address)],
        )],
    )


def credentials(pki, cert_key=None) -> grpc.ChannelCredentials:
    key = cert_key[1].read_bytes() if cert_key else None
    cert = cert_key[0].read_bytes() if cert_key else None
    return grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), key, cert)


def role(pki, name):
    return pki.cert(name), pki.key(name)


def invoke(channel, metadata=()):
    request = runtime_pb2.InvokeEndpointRequest(endpoint_name=EP, body=npy(X), content_type="application/x-npy")
    response = runtime_pb2_grpc.EndpointRuntimeStub(channel).InvokeEndpoint(request, timeout=10, metadata=metadata)
    return np.load(io.BytesIO(response.body)).tolist()


def model_infer(channel, metadata=()):
    request = pb.ModelInferRequest(
        model_name=EP, inputs=[Tensor(name="x", datatype="FP32", shape=[1, 2])], raw_input_contents=[X.tobytes()]
    )
    response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10, metadata=metadata)
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(1, 2).tolist()


ANSWER = [[2.0, 3.0]]

# The Open Inference Protocol's other methods: each needs a credential too.
OIP_CALLS = {
    "ServerLive": lambda stub, md: stub.ServerLive(pb.ServerLiveRequest(), timeout=10, metadata=md),
    "ServerReady": lambda stub, md: stub.ServerReady(pb.ServerReadyRequest(), timeout=10, metadata=md),
    "ServerMetadata": lambda stub, md: stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10, metadata=md),
    "ModelReady": lambda stub, md: stub.ModelReady(pb.ModelReadyRequest(name=EP), timeout=10, metadata=md),
    "ModelMetadata": lambda stub, md: stub.ModelMetadata(pb.ModelMetadataRequest(name=EP), timeout=10, metadata=md),
}


def refused(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def health(channel, metadata=()):
    request = health_pb2.HealthCheckRequest(service="")
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10, metadata=metadata).status


def wait_ready(channel, metadata=(), name=EP):
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    wait_until(lambda: stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=5, metadata=metadata).ready,
               what=f"{name} ready on the proxy")


@pytest.fixture(scope="module")
def world(module_services, tmp_path_factory):
    """A local CA, tokens, a plain and a mutual-TLS model server."""
    directory = tmp_path_factory.mktemp("proxy-auth")
    pki = ensure_local_pki(directory / "tls")
    reader = make_certificate(directory, "reader", "someone-else", pki)
    invoke_token, control_token = new_token(), new_token()
    write_private(directory / "invoke.token", f"# invocations\n{invoke_token}\n".encode())
    write_private(directory / "control.token", f"{control_token}\n".encode())
    model = directory / "plus.onnx"
    build_model(model, "plus")
    plain = module_services(["model-server", "--model", str(model), "--model-name", "plus"])
    mutual = module_services([
        "model-server", "--model", str(model), "--model-name", "plus",
        "--tls-cert", str(pki.cert("model-server")), "--tls-key", str(pki.key("model-server")),
        "--tls-ca", str(pki.ca_cert), "--tls-client-auth", "require",
    ])
    return {
        "dir": directory, "pki": pki, "reader": reader, "invoke_token": invoke_token, "control_token": control_token,
        "plain": plain, "mutual": mutual,
    }


def _tls_flags(pki):
    return ["--tls-cert", str(pki.cert("proxy")), "--tls-key", str(pki.key("proxy")), "--tls-ca", str(pki.ca_cert)]


@pytest.fixture(scope="module")
def token_proxy(module_services, world):
    """TLS door, --invoke-token-file, the control plane under mutual TLS with the proxy's token,
    model servers under mutual TLS."""
    pki = world["pki"]
    control_plane = FakeControlPlane(grpc.ssl_server_credentials(
        [(pki.key("control-plane").read_bytes(), pki.cert("control-plane").read_bytes())],
        root_certificates=pki.ca_cert.read_bytes(), require_client_auth=True,
    ))
    control_plane.push(route(world["mutual"]), upstream_tls=True)
    proxy = module_services([
        "proxy", "--control-plane", control_plane.address, "--port", "0", "--stats-interval", "0.2",
        *_tls_flags(pki), "--invoke-token-file", str(world["dir"] / "invoke.token"),
    ], env={"MVE_PROXY_CONTROL_PLANE_TOKEN_FILE": str(world["dir"] / "control.token")})
    channel = grpc.secure_channel(proxy.address, credentials(pki))
    wait_ready(channel, bearer_metadata(world["invoke_token"]))
    yield proxy, channel, control_plane
    channel.close()
    control_plane.stop()


@pytest.fixture(scope="module")
def mutual_proxy(module_services, world):
    """--tls-client-auth require, no token file; a plaintext control plane (--control-plane-tls off)."""
    control_plane = FakeControlPlane()
    control_plane.push(route(world["mutual"]), upstream_tls=True)
    proxy = module_services([
        "proxy", "--control-plane", control_plane.address, "--port", "0", *_tls_flags(world["pki"]),
        "--tls-client-auth", "require", "--control-plane-tls", "off",
    ])
    channel = grpc.secure_channel(proxy.address, credentials(world["pki"], role(world["pki"], "client")))
    wait_ready(channel)
    yield proxy, channel, control_plane
    channel.close()
    control_plane.stop()


# --- invocation auth with a token file ---------------------------------------------------------------


@pytest.mark.parametrize("call", [invoke, model_infer], ids=["InvokeEndpoint", "ModelInfer"])
def test_an_invocation_without_a_token_is_unauthenticated(token_proxy, call):
    _, channel, _ = token_proxy
    error = refused(lambda: call(channel))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) == "MissingAuthenticationTokenException"
    assert "bearer token" in error.details()


@pytest.mark.parametrize("call", [invoke, model_infer], ids=["InvokeEndpoint", "ModelInfer"])
def test_a_wrong_token_is_an_unrecognized_client(token_proxy, call):
    _, channel, _ = token_proxy
    for metadata in (bearer_metadata(new_token()), (("authorization", "Basic dXNlcjpwYXNz"),)):
        error = refused(lambda: call(channel, metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(error) == "UnrecognizedClientException"


@pytest.mark.parametrize("call", [invoke, model_infer], ids=["InvokeEndpoint", "ModelInfer"])
def test_the_right_token_is_answered(token_proxy, world, call):
    _, channel, _ = token_proxy
    assert call(channel, bearer_metadata(world["invoke_token"])) == ANSWER


@pytest.mark.parametrize("method", sorted(OIP_CALLS))
def test_every_other_inference_protocol_method_needs_the_token(token_proxy, world, method):
    _, channel, _ = token_proxy
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    error = refused(lambda: OIP_CALLS[method](stub, ()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) == "MissingAuthenticationTokenException"
    OIP_CALLS[method](stub, bearer_metadata(world["invoke_token"]))


def test_health_needs_no_token(token_proxy):
    _, channel, _ = token_proxy
    assert health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_the_tls_door_refuses_plaintext_and_strangers_certificates(token_proxy, world, tmp_path):
    proxy, _, _ = token_proxy
    with grpc.insecure_channel(proxy.address) as channel:
        assert refused(lambda: health(channel)).code() == grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA does not accept the proxy's certificate.
    stranger = ensure_local_pki(tmp_path / "other-ca")
    with grpc.secure_channel(proxy.address, credentials(stranger)) as channel:
        assert refused(lambda: health(channel)).code() == grpc.StatusCode.UNAVAILABLE
    assert proxy.alive()


def test_the_http_door_serves_https_with_the_same_certificate(token_proxy, world):
    proxy, _, _ = token_proxy
    host, port = proxy.ready["http_address"].rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(world["pki"].ca_cert))
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    connection.request("POST", f"/endpoints/{EP}/invocations", body=npy(X), headers={"Content-Type": "application/x-npy"})
    answer = connection.getresponse()
    # The handshake with the proxy's certificate worked and the door answered; the table here checks
    # no signatures (a fake control plane), and a proxy that wants credentials serves no unsigned call.
    body = answer.read()
    assert answer.status == 403, body
    assert answer.getheader("x-amzn-ErrorType", "").startswith("MissingAuthenticationTokenException"), body
    connection.close()
    plain = http.client.HTTPConnection(host, int(port), timeout=10)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        plain.request("POST", f"/endpoints/{EP}/invocations", body=npy(X), headers={"Content-Type": "application/x-npy"})
        plain.getresponse()
    plain.close()


def test_the_control_plane_is_dialled_with_mutual_tls_and_the_proxys_token(token_proxy, world):
    _, channel, control_plane = token_proxy
    invoke(channel, bearer_metadata(world["invoke_token"]))  # counts to report
    wait_until(lambda: any(method == "ReportStats" for method, _, _ in control_plane.calls), what="a stats report")
    for method in ("WatchRoutes", "ReportStats"):
        calls = [(metadata, name) for m, metadata, name in control_plane.calls if m == method]
        assert calls, method
        for metadata, name in calls:
            assert metadata.get("authorization") == f"Bearer {world['control_token']}"
            assert name == "mve-proxy"


# --- invocation auth with client certificates ----------------------------------------------------------


@pytest.mark.parametrize("who", ["client", "reader"])
def test_a_ca_signed_client_certificate_invokes_without_a_token(mutual_proxy, world, who):
    proxy, _, _ = mutual_proxy
    cert_key = world["reader"] if who == "reader" else role(world["pki"], who)
    with grpc.secure_channel(proxy.address, credentials(world["pki"], cert_key)) as channel:
        assert invoke(channel) == ANSWER
        assert model_infer(channel) == ANSWER


def test_without_a_client_certificate_the_handshake_fails(mutual_proxy, world):
    proxy, _, _ = mutual_proxy
    with grpc.secure_channel(proxy.address, credentials(world["pki"])) as channel:
        error = refused(lambda: invoke(channel, bearer_metadata(world["invoke_token"])))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert refused(lambda: health(channel)).code() == grpc.StatusCode.UNAVAILABLE


def test_under_client_auth_the_https_door_wants_a_certificate_too(mutual_proxy, world):
    proxy, _, _ = mutual_proxy
    host, port = proxy.ready["http_address"].rsplit(":", 1)

    def post(context):
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        try:
            connection.request("POST", f"/endpoints/{EP}/invocations", body=npy(X),
                               headers={"Content-Type": "application/x-npy"})
            return connection.getresponse().status
        finally:
            connection.close()

    context = ssl.create_default_context(cafile=str(world["pki"].ca_cert))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        post(context)
    context.load_cert_chain(*role(world["pki"], "client"))
    # With a certificate the handshake passes and the door answers: 403, since the (fake) control
    # plane's table checks no signatures and this proxy serves no unsigned call (docs/security.md).
    assert post(context) == 403


def test_a_table_switching_upstream_tls_replaces_the_channels(mutual_proxy, world):
    proxy, channel, control_plane = mutual_proxy
    control_plane.push(route(world["plain"]), upstream_tls=False)
    wait_until(lambda: control_plane.latest.version and "event=upstream_mode tls=off" in "".join(proxy.output),
               what="plaintext mode")
    assert invoke(channel) == ANSWER
    control_plane.push(route(world["mutual"]), upstream_tls=True)
    wait_until(lambda: "".join(proxy.output).count("event=upstream_mode tls=on") >= 2, what="TLS mode again")
    assert invoke(channel) == ANSWER


# --- a proxy without certificates, a table with upstream_tls --------------------------------------------


def test_a_proxy_without_certificates_refuses_tls_upstreams_by_name_never_in_plaintext(module_services, world):
    control_plane = FakeControlPlane()
    try:
        control_plane.push(route(world["mutual"]), upstream_tls=True)
        proxy = module_services(["proxy", "--control-plane", control_plane.address, "--port", "0"])
        with grpc.insecure_channel(proxy.address) as channel:
            wait_until(lambda: "event=upstream_tls_unavailable" in "".join(proxy.output), what="the ERROR line")
            error = refused(lambda: invoke(channel))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert reason_of(error) == "ModelNotReadyException"
            assert "--tls-cert, --tls-key and --tls-ca" in error.details()
            assert refused(lambda: model_infer(channel)).code() == grpc.StatusCode.UNAVAILABLE
            assert health(channel) == health_pb2.HealthCheckResponse.SERVING
            log = "".join(proxy.output)
            assert "level=ERROR" in log and "--tls-cert, --tls-key and --tls-ca" in log
            # The same model servers in plaintext: served again.
            control_plane.push(route(world["plain"]), upstream_tls=False)
            wait_until(lambda: _answers(channel), what="the plaintext table served")
        assert proxy.alive()
    finally:
        control_plane.stop()


def _answers(channel) -> bool:
    try:
        return invoke(channel) == ANSWER
    except grpc.RpcError:
        return False


# --- a real control plane: token on WatchRoutes and ReportStats, model servers under mutual TLS --------


@pytest.fixture(scope="module")
def secure_control_plane(module_services, world):
    """A control plane on TLS taking tokens (--token-file), launching model servers under mutual TLS
    (--model-server-tls-cert), with a model and an endpoint of one instance in service."""
    pki, directory = world["pki"], world["dir"]
    control = module_services([
        "control-plane", "--data-dir", str(directory / "data"), "--port", "0",
        "--tls-cert", str(pki.cert("control-plane")), "--tls-key", str(pki.key("control-plane")),
        "--tls-ca", str(pki.ca_cert), "--token-file", str(directory / "control.token"),
        "--model-server-tls-cert", str(pki.cert("model-server")), "--model-server-tls-key", str(pki.key("model-server")),
    ])
    sm = mve.client("sagemaker", address=control.address, token=world["control_token"], tls_ca=pki.ca_cert)
    sm.create_model(ModelName="plus", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(directory / "plus.onnx")})
    sm.create_endpoint_config(EndpointConfigName="plus-config", ProductionVariants=[{
        "VariantName": "v", "ModelName": "plus", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
    }])
    sm.create_endpoint(EndpointName=EP, EndpointConfigName="plus-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=EP, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    return control


def test_through_a_real_control_plane_the_proxy_invokes_model_servers_under_mutual_tls(
    module_services, world, secure_control_plane
):
    pki = world["pki"]
    proxy = module_services([
        "proxy", "--control-plane", secure_control_plane.address, "--port", "0", *_tls_flags(pki),
        "--control-plane-token-file", str(world["dir"] / "control.token"),
        "--invoke-token-file", str(world["dir"] / "invoke.token"),
    ])
    runtime = mve.client("sagemaker-runtime", address=proxy.address, token=world["invoke_token"], tls_ca=pki.ca_cert)

    def answer():
        try:
            response = runtime.invoke_endpoint(EndpointName=EP, Body=npy(X), ContentType="application/x-npy")
        except ClientError:
            return None  # the table reaches the proxy a moment after InService
        return np.load(io.BytesIO(response["Body"].read())).tolist()

    assert wait_until(answer, what="an answer through the proxy") == ANSWER
    assert "event=upstream_mode tls=on" in "".join(proxy.output)
    assert "level=ERROR" not in "".join(proxy.output)


def test_without_its_token_the_proxy_is_refused_by_the_control_plane_and_says_so(
    module_services, world, secure_control_plane
):
    proxy = module_services(["proxy", "--control-plane", secure_control_plane.address, "--port", "0", *_tls_flags(world["pki"])])
    wait_until(lambda: "code=UNAUTHENTICATED" in "".join(proxy.output), what="the refusal")
    refusal = next(line for line in proxy.output if "event=watch_routes_failed" in line)
    assert "level=ERROR" in refusal and "--control-plane-token-file" in refusal
    with grpc.secure_channel(proxy.address, credentials(world["pki"])) as channel:
        ready = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest(), timeout=10)
        assert not ready.ready  # no routing table
    assert world["control_token"] not in "".join(secure_control_plane.output)


# --- settings and logs ------------------------------------------------------------------------------


def test_bad_security_flags_stop_the_start_naming_the_flag(world, tmp_path):
    result = run_mve(["proxy", "--port", "0", "--tls-client-auth", "require"])
    assert result.returncode == 2 and "--tls-client-auth require needs" in result.stderr
    loose = tmp_path / "loose.token"
    loose.write_text(world["invoke_token"] + "\n")
    loose.chmod(0o644)
    result = run_mve(["proxy", "--port", "0"], env={"MVE_PROXY_INVOKE_TOKEN_FILE": str(loose)})
    assert result.returncode == 2 and "--invoke-token-file" in result.stderr and "chmod 600" in result.stderr
    assert world["invoke_token"] not in result.stderr


def test_tokens_never_appear_in_the_proxys_log(token_proxy, world):
    proxy, channel, _ = token_proxy
    refused(lambda: invoke(channel, bearer_metadata(new_token())))
    invoke(channel, bearer_metadata(world["invoke_token"]))
    log = "".join(proxy.output)
    assert "event=call_refused" in log
    assert world["invoke_token"] not in log and world["control_token"] not in log
    assert "control_plane_token=token:" in log
