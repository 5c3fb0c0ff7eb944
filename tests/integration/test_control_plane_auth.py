"""Who may call the control plane, with real processes: bearer tokens, TLS, mutual TLS and model servers on TLS.

Three control planes serve the module, one per way of running it:

- ``token``: plaintext, ``--token-file`` (logs at DEBUG, to show the token is never written);
- ``open``: TLS without client certificates, ``--token-file`` and ``--open-reads``;
- ``mtls``: TLS, ``--tls-client-auth require``, ``--token-file`` and ``--model-server-tls-*``;

each with its HTTP face (``--auth none`` on the first two: the face's own gRPC calls are what is
tested there; SigV4 on the third, with a key boto3 signs with). Certificates come from
`mve.pki.ensure_local_pki`, plus a reader's from `mve.pki.make_certificate`.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import grpc
import pytest
from botocore.config import Config
from grpc_health.v1 import health_pb2, health_pb2_grpc

import mve
from control_plane_helpers import describe, variant
from mve._proto import control_pb2 as pb
from mve._proto import control_pb2_grpc as pb_grpc
from mve._proto import grpc_predict_v2_pb2 as v2
from mve._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from mve.authn import bearer_metadata, new_token
from mve.errors import reason_of
from mve.pki import ensure_local_pki, make_certificate
from mve.tls import write_private
from procs import run_mve
from tiny_models import build_model

pytestmark = pytest.mark.integration

ONE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1})


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    files = ensure_local_pki(directory / "tls")
    reader = make_certificate(directory, "reader", "alice", files)
    return files, reader


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """(token, its file): one administrator's token, in a 0600 file."""
    value = new_token()
    path = tmp_path_factory.mktemp("token") / "tokens"
    write_private(path, f"{value}\n".encode())
    return value, path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "plus.onnx"
    build_model(path, "plus")
    return path


def _tls_flags(pki, role="control-plane"):
    files, _ = pki
    return ["--tls-cert", str(files.cert(role)), "--tls-key", str(files.key(role)), "--tls-ca", str(files.ca_cert)]


def _plane_args(data_dir, *flags):
    return [
        "control-plane", "--data-dir", str(data_dir), "--port", "0", "--http-port", "0", "--drain-seconds", "0",
        *flags,
    ]


class Plane:
    """The mutual-TLS control plane (replaced by its successor when a test restarts it)."""

    def __init__(self, service, args):
        self.service, self.args = service, args


@pytest.fixture(scope="module")
def planes(module_services, tmp_path_factory, token, pki):
    """The module's three control planes, started side by side: {"token", "open", "mtls"}."""
    files, _ = pki
    args = {
        "token": _plane_args(tmp_path_factory.mktemp("token"), "--token-file", str(token[1]), "--auth", "none",
                             "--log-level", "DEBUG"),
        "open": _plane_args(tmp_path_factory.mktemp("open"), *_tls_flags(pki), "--token-file", str(token[1]),
                            "--open-reads", "--auth", "none"),
        "mtls": _plane_args(
            tmp_path_factory.mktemp("mtls"), *_tls_flags(pki), "--tls-client-auth", "require",
            "--token-file", str(token[1]), "--model-server-tls-cert", str(files.cert("model-server")),
            "--model-server-tls-key", str(files.key("model-server")),
        ),
    }
    with ThreadPoolExecutor(len(args)) as pool:
        started = {name: pool.submit(module_services, plane_args) for name, plane_args in args.items()}
    return {name: future.result() for name, future in started.items()}, args


@pytest.fixture(scope="module")
def token_plane(planes):
    return planes[0]["token"]


@pytest.fixture(scope="module")
def open_plane(planes):
    return planes[0]["open"]


@pytest.fixture(scope="module")
def mtls(planes):
    return Plane(planes[0]["mtls"], planes[1]["mtls"])


def _plain(service) -> pb_grpc.EndpointControlStub:
    return pb_grpc.EndpointControlStub(grpc.insecure_channel(service.address))


def _credentials(pki, role=None, cert_key=None):
    """TLS credentials verifying the server against the CA, presenting `role`'s certificate (or `cert_key`)."""
    files, _ = pki
    if role is not None:
        cert_key = (files.cert(role), files.key(role))
    if cert_key is None:
        return grpc.ssl_channel_credentials(files.ca_cert.read_bytes())
    return grpc.ssl_channel_credentials(files.ca_cert.read_bytes(), cert_key[1].read_bytes(), cert_key[0].read_bytes())


def _secure(service, pki, role=None, cert_key=None) -> pb_grpc.EndpointControlStub:
    return pb_grpc.EndpointControlStub(grpc.secure_channel(service.address, _credentials(pki, role, cert_key)))


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _create_model(stub, name, path, metadata=()):
    request = pb.CreateModelRequest(model_name=name, primary_container=pb.ContainerDefinition(model_data_url=str(path)))
    return stub.CreateModel(request, metadata=metadata, timeout=10)


def _list_models(stub, metadata=()):
    return [m.model_name for m in stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10).models]


def _health(service, credentials=None):
    address = service.address
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


# --- bearer tokens, plaintext -------------------------------------------------------------------


def test_the_ready_line_says_how_the_door_is_guarded(token_plane, open_plane, mtls):
    assert (token_plane.ready["tls"], token_plane.ready["auth"]) == (False, "token")
    assert (open_plane.ready["tls"], open_plane.ready["auth"]) == (True, "token")
    assert (mtls.service.ready["tls"], mtls.service.ready["auth"]) == (True, "token+mtls")


def test_a_write_without_a_token_is_unauthenticated(token_plane, model_path):
    error = _refused(lambda: _create_model(_plain(token_plane), "m", model_path))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) == "MissingAuthenticationTokenException"
    assert "sagemaker:CreateModel" in error.details()


def test_a_wrong_token_is_an_unrecognized_client(token_plane, model_path):
    error = _refused(lambda: _create_model(_plain(token_plane), "m", model_path, bearer_metadata(new_token())))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) == "UnrecognizedClientException"
    error = _refused(lambda: _create_model(_plain(token_plane), "m", model_path, (("authorization", "Basic abc"),)))
    assert reason_of(error) == "UnrecognizedClientException"


def test_the_right_token_writes_and_reads(token_plane, token, model_path):
    stub = _plain(token_plane)
    _create_model(stub, "with-token", model_path, bearer_metadata(token[0]))
    assert "with-token" in _list_models(stub, bearer_metadata(token[0]))
    # mve.client sends it on every call
    with mve.client("sagemaker", address=token_plane.address, token=token[0]) as sm:
        assert sm.describe_model(ModelName="with-token")["ModelName"] == "with-token"


def test_reads_need_a_token_too(token_plane):
    stub = _plain(token_plane)
    for call in (
        lambda: _list_models(stub),
        lambda: stub.DescribeModel(pb.DescribeModelRequest(model_name="with-token"), timeout=10),
        lambda: stub.ListEndpoints(pb.ListEndpointsRequest(), timeout=10),
    ):
        error = _refused(call)
        assert (error.code(), reason_of(error)) == (grpc.StatusCode.UNAUTHENTICATED, "MissingAuthenticationTokenException")


def test_health_needs_no_credential(token_plane):
    assert _health(token_plane) == health_pb2.HealthCheckResponse.SERVING


def test_the_http_face_reaches_the_door_with_its_internal_token(token_plane, token, model_path):
    sm = boto3.client(
        "sagemaker", endpoint_url=f"http://{token_plane.ready['http_address']}", region_name="us-east-1",
        aws_access_key_id="AKIAIGNORED", aws_secret_access_key="ignored", config=ONE_ATTEMPT,
    )
    sm.create_model(ModelName="over-http", PrimaryContainer={"ModelDataUrl": str(model_path)},
                    ExecutionRoleArn="arn:aws:iam::123456789012:role/ignored")
    assert "over-http" in [m["ModelName"] for m in sm.list_models()["Models"]]


def test_no_token_is_ever_written_to_the_log(token_plane, token, model_path):
    wrong = new_token()
    _refused(lambda: _create_model(_plain(token_plane), "m", model_path, bearer_metadata(wrong)))
    _create_model(_plain(token_plane), "logged", model_path, bearer_metadata(token[0]))
    output = "".join(token_plane.output)
    assert "event=call_refused" in output  # refusals are logged ...
    assert token[0] not in output and wrong not in output  # ... by fingerprint only


# --- TLS, tokens, open reads --------------------------------------------------------------------


def test_open_reads_need_no_credential_but_writes_still_do(open_plane, token, pki, model_path):
    stub = _secure(open_plane, pki)  # TLS, no client certificate, no token
    assert _list_models(stub) == []
    error = _refused(lambda: stub.DescribeModel(pb.DescribeModelRequest(model_name="nope"), timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # read, not refused
    error = _refused(lambda: _create_model(stub, "m", model_path))
    assert (error.code(), reason_of(error)) == (grpc.StatusCode.UNAUTHENTICATED, "MissingAuthenticationTokenException")
    _create_model(stub, "m", model_path, bearer_metadata(token[0]))
    assert _list_models(stub) == ["m"]


def test_tls_without_client_certificates_refuses_plaintext(open_plane):
    error = _refused(lambda: _list_models(_plain(open_plane)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_the_https_face_reaches_a_tls_door_with_its_internal_token(open_plane, pki, model_path):
    files, _ = pki
    sm = boto3.client(
        "sagemaker", endpoint_url=f"https://{open_plane.ready['http_address']}", region_name="us-east-1",
        aws_access_key_id="AKIAIGNORED", aws_secret_access_key="ignored", config=ONE_ATTEMPT,
        verify=str(files.ca_cert),
    )
    sm.create_model(ModelName="over-https", PrimaryContainer={"ModelDataUrl": str(model_path)},
                    ExecutionRoleArn="arn:aws:iam::123456789012:role/ignored")
    assert "over-https" in _list_models(_secure(open_plane, pki))


# --- mutual TLS ---------------------------------------------------------------------------------


def test_plaintext_and_certificateless_callers_never_get_past_the_handshake(mtls, pki):
    for stub in (_plain(mtls.service), _secure(mtls.service, pki)):
        error = _refused(lambda: _list_models(stub))
        assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_the_admin_certificate_writes(mtls, pki, model_path):
    stub = _secure(mtls.service, pki, "client")  # CN mve-admin
    _create_model(stub, "by-admin-cert", model_path)
    assert "by-admin-cert" in _list_models(stub)


def test_the_proxy_certificate_reads_and_watches_routes_but_may_not_write(mtls, pki, model_path):
    stub = _secure(mtls.service, pki, "proxy")
    assert isinstance(_list_models(stub), list)
    error = _refused(lambda: _create_model(stub, "by-proxy", model_path))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "AccessDeniedException"
    assert "mve-proxy" in error.details() and "sagemaker:CreateModel" in error.details()
    stream = stub.WatchRoutes(pb.WatchRoutesRequest(proxy_id="test"), timeout=10)
    table = next(stream)
    stream.cancel()
    assert table.upstream_tls


def test_a_reader_certificate_reads_only(mtls, pki, model_path):
    _, reader = pki
    stub = _secure(mtls.service, pki, cert_key=reader)  # CN alice: any other name the CA signed
    assert isinstance(_list_models(stub), list)
    for call in (
        lambda: _create_model(stub, "by-reader", model_path),
        lambda: next(stub.WatchRoutes(pb.WatchRoutesRequest(proxy_id="alice"), timeout=10)),
    ):
        error = _refused(call)
        assert (error.code(), reason_of(error)) == (grpc.StatusCode.PERMISSION_DENIED, "AccessDeniedException")
        assert "alice" in error.details()


def test_a_token_over_mutual_tls_is_an_administrators(mtls, pki, token, model_path):
    _, reader = pki
    stub = _secure(mtls.service, pki, cert_key=reader)
    _create_model(stub, "by-token", model_path, bearer_metadata(token[0]))


def test_boto3_over_https_with_a_sigv4_key(mtls, pki, model_path):
    files, _ = pki
    with mve.client("iam", address=mtls.service.address, tls_ca=files.ca_cert, tls_cert=files.cert("client"),
                    tls_key=files.key("client")) as iam:
        key = iam.create_access_key(Description="https test")["AccessKey"]
    sm = boto3.client(
        "sagemaker", endpoint_url=f"https://{mtls.service.ready['http_address']}", region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], config=ONE_ATTEMPT,
        verify=str(files.ca_cert),
    )
    sm.create_model(ModelName="by-boto3", PrimaryContainer={"ModelDataUrl": str(model_path)},
                    ExecutionRoleArn="arn:aws:iam::123456789012:role/ignored")
    assert sm.describe_model(ModelName="by-boto3")["ModelName"] == "by-boto3"


# --- model servers on mutual TLS ----------------------------------------------------------------


def _wait_in_service(stub, name, timeout=60.0):
    deadline = time.monotonic() + timeout
    while (described := describe(stub, name)).endpoint_status not in ("InService", "Failed"):
        assert time.monotonic() < deadline, f"{name} still {described.endpoint_status}"
        time.sleep(0.05)
    assert described.endpoint_status == "InService", described.failure_reason
    return described


def _instances(stub, endpoint):
    stream = stub.WatchRoutes(pb.WatchRoutesRequest(proxy_id="test"), timeout=10)
    try:
        table = next(stream)
    finally:
        stream.cancel()
    route = next(e for e in table.endpoints if e.endpoint_name == endpoint)
    return table, [i for v in route.variants for i in v.instances]


def _model_ready(address, credentials=None) -> bool:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        return v2_grpc.GRPCInferenceServiceStub(channel).ServerReady(v2.ServerReadyRequest(), timeout=5).ready


@pytest.fixture(scope="module")
def tls_endpoint(mtls, pki, model_path):
    """Endpoint "secure": one model server started on mutual TLS, InService."""
    stub = _secure(mtls.service, pki, "client")
    _create_model(stub, "plus", model_path)
    stub.CreateEndpointConfig(pb.CreateEndpointConfigRequest(
        endpoint_config_name="secure-config", production_variants=[variant("main", "plus")]
    ))
    stub.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="secure", endpoint_config_name="secure-config"))
    _wait_in_service(stub, "secure")
    return "secure"


def test_model_servers_run_on_mutual_tls_and_the_table_says_so(mtls, pki, tls_endpoint):
    stub = _secure(mtls.service, pki, "client")
    table, [instance] = _instances(stub, tls_endpoint)
    assert table.upstream_tls
    assert _model_ready(instance.address, _credentials(pki, "proxy"))  # what a proxy will do
    with pytest.raises(grpc.RpcError) as plaintext:
        _model_ready(instance.address)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as anonymous:
        _model_ready(instance.address, _credentials(pki))
    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE


def test_after_a_crash_the_next_control_plane_adopts_its_tls_model_servers(module_services, mtls, pki, tls_endpoint):
    stub = _secure(mtls.service, pki, "client")
    _, [instance] = _instances(stub, tls_endpoint)
    mtls.service.kill()  # SIGKILL: the model server lives on
    mtls.service = module_services(mtls.args)
    stub = _secure(mtls.service, pki, "client")
    assert describe(stub, tls_endpoint).endpoint_status == "InService"
    _, [adopted] = _instances(stub, tls_endpoint)
    assert (adopted.instance_id, adopted.address) == (instance.instance_id, instance.address)
    assert "event=instance_adopted" in "".join(mtls.service.output)


# --- flags refused at start ---------------------------------------------------------------------


def test_bad_tls_flags_exit_2_naming_the_flag(tmp_path, pki):
    files, _ = pki
    open_key = tmp_path / "open.key"
    open_key.write_bytes(files.key("control-plane").read_bytes())
    os.chmod(open_key, 0o644)
    base = ["control-plane", "--data-dir", str(tmp_path / "d"), "--port", "0"]
    cases = [
        (["--tls-cert", str(files.cert("control-plane")), "--tls-key", str(tmp_path / "missing.key")],
         "--tls-key: cannot read"),
        (["--tls-cert", str(files.cert("control-plane")), "--tls-key", str(open_key)],
         "a private key must be 0600"),
        (["--tls-cert", str(files.cert("control-plane")), "--tls-key", str(files.key("control-plane")),
          "--tls-client-auth", "require"], "--tls-client-auth require needs --tls-cert, --tls-key and --tls-ca"),
    ]
    for flags, message in cases:
        result = run_mve([*base, *flags], timeout=30)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "mve control-plane: error:" in result.stderr


def test_model_servers_never_run_on_plaintext_behind_a_tls_flag(tmp_path, pki):
    files, _ = pki
    result = run_mve([
        "control-plane", "--data-dir", str(tmp_path / "d"), "--port", "0",
        "--model-server-tls-cert", str(files.cert("model-server")), "--model-server-tls-key", str(files.key("model-server")),
    ], timeout=30)
    assert result.returncode == 2
    assert "--model-server-tls-cert needs this control plane's --tls-cert, --tls-key and --tls-ca" in result.stderr



# --- hostile credentials ------------------------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("MVE_FUZZ_EXAMPLES", "20"))


def test_hostile_authorization_values_are_refused_cleanly_and_change_nothing(token_plane, token, model_path):
    """Random, long, near-miss and wrongly-schemed authorization values: every write is refused with
    UNAUTHENTICATED and a SageMaker name, the door keeps answering, and no model appears."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    stub = _plain(token_plane)
    right = token[0]
    printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
    values = st.one_of(
        st.text(printable, max_size=64),
        st.text(printable, min_size=1000, max_size=8000),
        st.builds(lambda scheme, body: f"{scheme} {body}", st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", ""]),
                  st.text(printable, max_size=600)),
        # one character off the right token, or a prefix / an extension of it
        st.integers(0, len(right) - 1).map(lambda i: f"Bearer {right[:i]}{'A' if right[i] != 'A' else 'B'}{right[i + 1:]}"),
        st.integers(1, len(right) - 1).map(lambda i: f"Bearer {right[:i]}"),
        st.text(printable, min_size=1, max_size=8).map(lambda tail: f"Bearer {right}{tail}"),
    )
    seen = {}

    @settings(max_examples=FUZZ_EXAMPLES * 5, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(values)
    def refused(value):
        if value.strip() in (f"Bearer {right}", f"bearer {right}", f"BEARER {right}"):
            return  # (the right token, had the strategy made it)
        try:
            _create_model(stub, "fuzzed", model_path, (("authorization", value),))
        except grpc.RpcError as error:
            code = error.code()
            seen[code] = seen.get(code, 0) + 1
            assert code == grpc.StatusCode.UNAUTHENTICATED, (value[:80], code, error.details())
            assert reason_of(error) in ("MissingAuthenticationTokenException", "UnrecognizedClientException")
        else:
            raise AssertionError(f"a write with authorization {value[:80]!r} was accepted")

    refused()
    assert sum(seen.values()) >= FUZZ_EXAMPLES  # the strategy ran
    assert token_plane.alive()
    assert "fuzzed" not in _list_models(stub, bearer_metadata(right))
