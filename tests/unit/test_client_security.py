"""The client side of TLS and credentials: what ``mve.client`` dials with and sends, where it finds it
(keywords, then MVE_* variables, then a secure data dir), the errors naming what is wrong, the CLI and
the first access key on a secure data dir, and what ``mve up --secure`` gives each child.

The servers here are small in-process gRPC servers on 127.0.0.1 that record what each call carried:
its metadata and the Common Name of the client certificate it presented.
"""

from __future__ import annotations

import logging
import stat
from concurrent import futures

import grpc
import pytest

import mve
from mve._proto import control_pb2, keys_pb2
from mve.authn import new_token
from mve.cli import main
from mve.first_key import ensure_first_key
from mve.mesh import Mesh
from mve.mesh_security import host_missing_from_certificates, prepare_secure_data_dir
from mve.sdk import EndpointConnectionError
from mve.sdk.security import PLAINTEXT, data_dir_security, resolve_client_security
from mve.tls import load_tls, write_private

ENV = ("MVE_TLS_CA", "MVE_TLS_CERT", "MVE_TLS_KEY", "MVE_TOKEN", "MVE_TOKEN_FILE", "MVE_DATA_DIR")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No MVE_* credential variables, and a working directory without a ./.mve."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def secure_dir(tmp_path_factory):
    """A data dir as ``mve up --secure`` leaves it: tls/ (CA, role certificates) and token."""
    data_dir = tmp_path_factory.mktemp("secure") / "data"
    prepare_secure_data_dir(data_dir, host="127.0.0.1")
    return data_dir


@pytest.fixture(scope="module")
def token(secure_dir):
    return (secure_dir / "token").read_text().strip()


class Recorder:
    """An in-process EndpointControl.ListModels and AccessKeys on 127.0.0.1; records each call."""

    def __init__(self, credentials: grpc.ServerCredentials | None):
        self.calls: list[dict] = []
        self.keys: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("mve.v1.EndpointControl", {
                "ListModels": self._handler(control_pb2.ListModelsRequest, lambda r: control_pb2.ListModelsResponse()),
            }),
            grpc.method_handlers_generic_handler("mve.v1.AccessKeys", {
                "ListAccessKeys": self._handler(keys_pb2.ListAccessKeysRequest, self._list_keys),
                "CreateAccessKey": self._handler(keys_pb2.CreateAccessKeyRequest, self._create_key),
            }),
        ))
        address = "127.0.0.1:0"
        port = (self.server.add_secure_port(address, credentials) if credentials is not None
                else self.server.add_insecure_port(address))
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def _handler(self, request_type, answer):
        def handle(request, context):
            names = context.auth_context().get("x509_common_name") or [None]
            name = names[0].decode() if isinstance(names[0], bytes) else names[0]
            self.calls.append({"metadata": dict(context.invocation_metadata()), "common_name": name})
            return answer(request)

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=request_type.FromString, response_serializer=lambda m: m.SerializeToString())

    def _list_keys(self, request):
        return keys_pb2.ListAccessKeysResponse(access_keys=[keys_pb2.AccessKeyMetadata(access_key_id=k) for k in self.keys])

    def _create_key(self, request):
        self.keys.append(f"MVEK{len(self.keys):016d}")
        return keys_pb2.CreateAccessKeyResponse(
            access_key=keys_pb2.AccessKeyMetadata(access_key_id=self.keys[-1]), secret_access_key="s" * 40)

    def stop(self):
        self.server.stop(None)


@pytest.fixture
def serve(secure_dir):
    """``serve(tls=None|"tls"|"mtls")``: a Recorder, plaintext, TLS, or TLS requiring a client certificate."""
    started = []

    def start(tls: str | None = None) -> Recorder:
        credentials = None
        if tls is not None:
            files = load_tls(secure_dir / "tls/control-plane.crt", secure_dir / "tls/control-plane.key",
                             secure_dir / "tls/ca.crt")
            credentials = files.server_credentials(require_client_auth=tls == "mtls")
        started.append(Recorder(credentials))
        return started[-1]

    yield start
    for recorder in started:
        recorder.stop()


def _tls_keywords(secure_dir, role: str = "client") -> dict:
    tls = secure_dir / "tls"
    return {"tls_ca": tls / "ca.crt", "tls_cert": tls / f"{role}.crt", "tls_key": tls / f"{role}.key"}


# ---------------------------------------------------------------- what is dialled and sent


def test_with_nothing_set_a_client_is_plaintext_and_sends_no_token(serve):
    server = serve()
    with mve.client("sagemaker", address=server.address) as sm:
        assert not sm.security.secure and sm.security.token is None
        assert sm.list_models()["Models"] == []
    [call] = server.calls
    assert "authorization" not in call["metadata"] and call["common_name"] is None


def test_keywords_dial_mutual_tls_and_send_the_token_on_every_call(serve, secure_dir, token):
    server = serve("mtls")
    with mve.client("sagemaker", address=server.address, token=token, **_tls_keywords(secure_dir)) as sm:
        sm.list_models()
        sm.list_models()
    assert len(server.calls) == 2
    for call in server.calls:
        assert call["metadata"]["authorization"] == f"Bearer {token}"
        assert call["metadata"]["x-mve-request-id"]  # still sent beside the token
        assert call["common_name"] == "mve-admin"


def test_a_ca_alone_is_tls_without_a_client_certificate(serve, secure_dir):
    server = serve("tls")
    with mve.client("sagemaker", address=server.address, tls_ca=str(secure_dir / "tls/ca.crt")) as sm:
        sm.list_models()
    assert server.calls[0]["common_name"] is None and "authorization" not in server.calls[0]["metadata"]


def test_the_environment_is_used_when_no_keyword_is_given(serve, secure_dir, token, monkeypatch):
    server = serve("mtls")
    for name, path in zip(("MVE_TLS_CA", "MVE_TLS_CERT", "MVE_TLS_KEY"), _tls_keywords(secure_dir).values()):
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("MVE_TOKEN", token)
    with mve.client("sagemaker", address=server.address) as sm:
        sm.list_models()
    assert server.calls[0]["metadata"]["authorization"] == f"Bearer {token}"
    assert server.calls[0]["common_name"] == "mve-admin"


def test_mve_token_file_gives_its_first_token(serve, tmp_path, monkeypatch):
    first, second = new_token(), new_token()
    write_private(tmp_path / "tokens", f"# ci\n{first}\n{second}\n".encode())
    monkeypatch.setenv("MVE_TOKEN_FILE", str(tmp_path / "tokens"))
    server = serve()
    with mve.client("sagemaker", address=server.address) as sm:
        sm.list_models()
    assert server.calls[0]["metadata"]["authorization"] == f"Bearer {first}"


@pytest.mark.parametrize("where", ["MVE_DATA_DIR", "./.mve"])
def test_a_secure_data_dir_gives_the_admin_certificate_and_the_token(serve, secure_dir, token, monkeypatch, tmp_path,
                                                                   where):
    if where == "MVE_DATA_DIR":
        monkeypatch.setenv("MVE_DATA_DIR", str(secure_dir))
    else:
        (tmp_path / ".mve").symlink_to(secure_dir)
    server = serve("mtls")
    with mve.client("sagemaker", address=server.address) as sm:
        sm.list_models()
        assert "(TLS)" in repr(sm)
    assert server.calls[0]["common_name"] == "mve-admin"
    assert server.calls[0]["metadata"]["authorization"] == f"Bearer {token}"


def test_a_data_dir_without_tls_ca_is_plaintext_even_with_a_token_file(serve, tmp_path, monkeypatch):
    write_private(tmp_path / "plain" / "token", (new_token() + "\n").encode())
    monkeypatch.setenv("MVE_DATA_DIR", str(tmp_path / "plain"))
    server = serve()
    with mve.client("sagemaker", address=server.address) as sm:
        sm.list_models()
    assert "authorization" not in server.calls[0]["metadata"]


def test_settings_come_from_one_place_keywords_before_environment_before_data_dir(serve, secure_dir, monkeypatch):
    monkeypatch.setenv("MVE_DATA_DIR", str(secure_dir))
    server = serve("mtls")
    # The proxy's certificate as keywords: the data dir's admin token is NOT added to it.
    with mve.client("sagemaker", address=server.address, **_tls_keywords(secure_dir, "proxy")) as sm:
        sm.list_models()
    assert server.calls[-1]["common_name"] == "mve-proxy" and "authorization" not in server.calls[-1]["metadata"]
    # The environment before the data dir, and wholly: a token alone means plaintext with that token.
    other = new_token()
    monkeypatch.setenv("MVE_TOKEN", other)
    security = resolve_client_security()
    assert security.token == other and not security.secure and security.source == "environment"


# ---------------------------------------------------------------- refusals


def test_a_plaintext_client_cannot_talk_to_a_tls_server(serve):
    server = serve("tls")
    with mve.client("sagemaker", address=server.address, timeout=5) as sm:
        with pytest.raises(EndpointConnectionError):
            sm.list_models()
    assert server.calls == []


def test_a_client_without_a_certificate_cannot_talk_to_a_server_that_requires_one(serve, secure_dir):
    server = serve("mtls")
    with mve.client("sagemaker", address=server.address, tls_ca=secure_dir / "tls/ca.crt", timeout=5) as sm:
        with pytest.raises(EndpointConnectionError):
            sm.list_models()
    assert server.calls == []


# ---------------------------------------------------------------- errors name what is wrong


def test_a_missing_ca_file_names_the_keyword(tmp_path):
    with pytest.raises(ValueError, match=r"^tls_ca: cannot read .*nothing\.crt"):
        mve.client("sagemaker", tls_ca=tmp_path / "nothing.crt")


def test_an_open_key_in_the_environment_names_the_variable(secure_dir, tmp_path, monkeypatch):
    key = tmp_path / "client.key"
    key.write_bytes((secure_dir / "tls/client.key").read_bytes())
    key.chmod(0o644)
    monkeypatch.setenv("MVE_TLS_CA", str(secure_dir / "tls/ca.crt"))
    monkeypatch.setenv("MVE_TLS_CERT", str(secure_dir / "tls/client.crt"))
    monkeypatch.setenv("MVE_TLS_KEY", str(key))
    with pytest.raises(ValueError, match=r"^MVE_TLS_KEY: .*mode 644.*chmod 600"):
        mve.client("sagemaker")


def test_a_key_of_another_certificate_names_the_key(secure_dir):
    tls = secure_dir / "tls"
    with pytest.raises(ValueError, match=r"^tls_key: .*proxy\.key is not the key of the certificate in .*client\.crt"):
        mve.client("sagemaker", tls_ca=tls / "ca.crt", tls_cert=tls / "client.crt", tls_key=tls / "proxy.key")


@pytest.mark.parametrize(
    ("keywords", "message"),
    [({"tls_cert": "c.crt"}, "tls_cert and tls_key go together"),
     ({"tls_cert": "c.crt", "tls_key": "c.key"}, "tls_cert without tls_ca"),
     ({"token": "short"}, "token: not a token"),
     ({"token": "x" * 40 + "\nsecond"}, "token: not a token")],
)
def test_incomplete_or_malformed_keywords_are_refused(keywords, message):
    with pytest.raises(ValueError, match=message):
        mve.client("sagemaker", **keywords)


def test_token_files_are_checked_and_named(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(new_token() + "\n")
    path.chmod(0o644)
    monkeypatch.setenv("MVE_TOKEN_FILE", str(path))
    with pytest.raises(ValueError, match=r"^MVE_TOKEN_FILE: .*must be 0600"):
        mve.client("sagemaker")
    monkeypatch.setenv("MVE_TOKEN", new_token())
    with pytest.raises(ValueError, match="MVE_TOKEN and MVE_TOKEN_FILE are both set"):
        mve.client("sagemaker")


def test_a_secure_data_dirs_bad_token_file_is_named(secure_dir, tmp_path, monkeypatch):
    data_dir = tmp_path / "copy"
    (data_dir / "tls").mkdir(parents=True)
    for name in ("ca.crt", "client.crt", "client.key"):
        write_private(data_dir / "tls" / name, (secure_dir / "tls" / name).read_bytes())
    write_private(data_dir / "token", b"not a token\n")
    monkeypatch.setenv("MVE_DATA_DIR", str(data_dir))
    with pytest.raises(ValueError, match=r"data dir's token .*line 1 .* is not a token"):
        mve.client("sagemaker")


def test_the_token_is_never_in_reprs_or_warnings(secure_dir, token, caplog):
    with caplog.at_level(logging.WARNING, logger="mve.sdk.security"):
        sm = mve.client("sagemaker", address="10.0.0.5:7070", token=token)
    assert token not in repr(sm.security) and token not in repr(sm)
    # A token over plaintext to another machine is worth a warning, which names its fingerprint only.
    assert "event=token_in_plaintext" in caplog.text and token not in caplog.text
    sm.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mve.sdk.security"):
        mve.client("sagemaker", address="127.0.0.1:7070", token=token).close()
    assert caplog.text == ""


# ---------------------------------------------------------------- the CLI and the first access key


def test_the_cli_uses_the_data_dirs_credentials(serve, secure_dir, token, monkeypatch, capsys):
    monkeypatch.setenv("MVE_DATA_DIR", str(secure_dir))
    server = serve("mtls")
    assert main(["models", "list", "--control-plane", server.address]) == 0
    assert server.calls[0]["common_name"] == "mve-admin"
    assert server.calls[0]["metadata"]["authorization"] == f"Bearer {token}"


def test_the_cli_names_a_bad_tls_variable_and_exits_nonzero(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MVE_TLS_CA", str(tmp_path / "missing.crt"))
    assert main(["models", "list", "--control-plane", "127.0.0.1:1"]) != 0
    assert "MVE_TLS_CA" in capsys.readouterr().err


def test_the_first_key_of_a_secure_data_dir_is_made_with_its_own_credentials(serve, secure_dir, token, monkeypatch):
    # Whatever the caller's environment says, the data dir's admin certificate and token are used.
    monkeypatch.setenv("MVE_TOKEN", new_token())
    server = serve("mtls")
    key = ensure_first_key(secure_dir, server.address)
    assert key.created and server.keys == [key.access_key_id]
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    for call in server.calls:
        assert call["common_name"] == "mve-admin" and call["metadata"]["authorization"] == f"Bearer {token}"
    assert not ensure_first_key(secure_dir, server.address).created
    key.path.unlink()


def test_the_first_key_of_a_plaintext_data_dir_is_asked_for_in_plaintext(serve, secure_dir, tmp_path, monkeypatch):
    # A secure ./.mve in the working directory and MVE_* variables are not the mesh's: they are not used.
    (tmp_path / ".mve").symlink_to(secure_dir)
    monkeypatch.setenv("MVE_TOKEN", new_token())
    server = serve()
    (tmp_path / "plain").mkdir()
    key = ensure_first_key(tmp_path / "plain", server.address)
    assert key.created and all("authorization" not in call["metadata"] for call in server.calls)


def test_data_dir_security_is_the_data_dirs_or_plaintext(secure_dir, token, tmp_path, monkeypatch):
    monkeypatch.setenv("MVE_TLS_CA", str(tmp_path / "unused.crt"))
    security = data_dir_security(secure_dir)
    assert security.secure and security.tls.has_identity and security.token == token
    assert data_dir_security(tmp_path) is PLAINTEXT


# ---------------------------------------------------------------- mve up --secure: files and flags


def test_a_secure_data_dir_is_made_once_with_0600_files_and_kept(tmp_path):
    data_dir = tmp_path / "data"
    first = prepare_secure_data_dir(data_dir, host="127.0.0.1")
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    assert [p.relative_to(data_dir).as_posix() for p in files] == [
        "tls/ca.crt", "tls/ca.key", "tls/client.crt", "tls/client.key", "tls/control-plane.crt",
        "tls/control-plane.key", "tls/model-server.crt", "tls/model-server.key", "tls/proxy.crt", "tls/proxy.key",
        "token"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    before = {p: p.read_bytes() for p in files}
    again = prepare_secure_data_dir(data_dir, host="127.0.0.1")
    assert again == first and {p: p.read_bytes() for p in files} == before


def test_an_open_token_file_stops_the_mesh_naming_it(tmp_path):
    prepare_secure_data_dir(tmp_path, host="127.0.0.1")
    (tmp_path / "token").chmod(0o644)
    from mve.supervise import MeshError

    with pytest.raises(MeshError, match=r"token file .*must be 0600"):
        Mesh(tmp_path).start()


def test_the_children_get_the_briefs_flags(tmp_path):
    security = prepare_secure_data_dir(tmp_path, host="127.0.0.1")
    tls, token = str(tmp_path.resolve() / "tls"), str(tmp_path.resolve() / "token")
    assert security.control_plane_args() == [
        "--tls-cert", f"{tls}/control-plane.crt", "--tls-key", f"{tls}/control-plane.key", "--tls-ca", f"{tls}/ca.crt",
        "--tls-client-auth", "require", "--token-file", token,
        "--model-server-tls-cert", f"{tls}/model-server.crt", "--model-server-tls-key", f"{tls}/model-server.key"]
    assert security.proxy_args() == [
        "--tls-cert", f"{tls}/proxy.crt", "--tls-key", f"{tls}/proxy.key", "--tls-ca", f"{tls}/ca.crt",
        "--tls-client-auth", "none", "--invoke-token-file", token]
    assert (tmp_path / "token").read_text().strip() not in security.usage()


def test_a_data_dir_with_a_ca_is_secure_without_the_flag(tmp_path):
    assert not Mesh(tmp_path).secure
    prepare_secure_data_dir(tmp_path, host="127.0.0.1")
    assert Mesh(tmp_path).secure and Mesh(tmp_path, secure=True).secure


def test_certificates_made_for_another_host_are_noticed(tmp_path):
    security = prepare_secure_data_dir(tmp_path, host="mve.internal")
    assert not host_missing_from_certificates(security, "mve.internal")
    assert not host_missing_from_certificates(security, "127.0.0.1")
    assert not host_missing_from_certificates(security, "0.0.0.0")
    assert host_missing_from_certificates(security, "10.1.2.3")

