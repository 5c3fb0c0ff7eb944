"""The control plane's TLS and credential settings: flags and MVE_* variables, the combinations refused
(naming the flag), the files read at start (`mve.control.security`), and what they turn into: the
gatekeeper, the model servers' command line, the routing table's ``upstream_tls``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from mve.authn import ADMIN, TokenFileError, new_token
from mve.control.instances import LaunchSpec, LocalInstanceProvider
from mve.control.security import internal_address, is_loopback, load_security, names_host
from mve.control.settings import SettingsError, load_settings
from mve.pki import ensure_local_pki
from mve.tls import TlsConfigError, write_private


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return ensure_local_pki(tmp_path_factory.mktemp("pki") / "tls")


@pytest.fixture
def token_file(tmp_path) -> tuple[Path, str]:
    token = new_token()
    path = tmp_path / "tokens"
    write_private(path, f"# admins\n{token}\n".encode())
    return path, token


def _tls_flags(pki, role="control-plane", *, ca=True) -> dict:
    flags = {"tls_cert": str(pki.cert(role)), "tls_key": str(pki.key(role))}
    if ca:
        flags["tls_ca"] = str(pki.ca_cert)
    return flags


def _settings(tmp_path, flags=None, env=None):
    return load_settings({"data_dir": str(tmp_path), **(flags or {})}, env or {})


def test_plaintext_and_no_credentials_by_default(tmp_path):
    settings = _settings(tmp_path)
    assert not settings.tls_enabled and not settings.grpc_auth and not settings.model_server_tls
    assert settings.tls_client_auth == "none" and settings.open_reads is False
    security = load_security(settings)
    assert security.tls is None and security.gatekeeper is None and security.internal_token is None
    assert security.interceptors() == [] and security.internal_client().token is None
    assert security.describe() == {"tls": False, "auth": "none"}


def test_every_setting_comes_from_its_variable(tmp_path, pki, token_file):
    env = {
        "MVE_CONTROL_PLANE_TLS_CERT": str(pki.cert("control-plane")),
        "MVE_CONTROL_PLANE_TLS_KEY": str(pki.key("control-plane")),
        "MVE_CONTROL_PLANE_TLS_CA": str(pki.ca_cert),
        "MVE_CONTROL_PLANE_TLS_CLIENT_AUTH": " Require ",
        "MVE_CONTROL_PLANE_TOKEN_FILE": str(token_file[0]),
        "MVE_OPEN_READS": "true",
        "MVE_MODEL_SERVER_TLS_CERT": str(pki.cert("model-server")),
        "MVE_MODEL_SERVER_TLS_KEY": str(pki.key("model-server")),
    }
    settings = _settings(tmp_path, env=env)
    assert settings.tls_cert == pki.cert("control-plane") and settings.tls_ca == pki.ca_cert
    assert settings.require_client_certificates and settings.grpc_auth and settings.open_reads
    assert settings.token_file == token_file[0] and settings.model_server_tls_key == pki.key("model-server")


def test_a_flag_wins_over_its_variable(tmp_path, pki):
    settings = _settings(tmp_path, {**_tls_flags(pki), "tls_client_auth": "none"}, {"MVE_CONTROL_PLANE_TLS_CLIENT_AUTH": "require"})
    assert not settings.require_client_certificates


@pytest.mark.parametrize(("text", "value"), [("1", True), ("TRUE", True), ("0", False), ("false", False)])
def test_open_reads_variable(tmp_path, text, value):
    assert _settings(tmp_path, env={"MVE_OPEN_READS": text}).open_reads is value


def test_open_reads_refuses_anything_else_naming_the_variable(tmp_path):
    with pytest.raises(SettingsError, match="MVE_OPEN_READS must be 1, true, 0 or false, got 'yes'"):
        _settings(tmp_path, env={"MVE_OPEN_READS": "yes"})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"tls_client_auth": "optional"}, "--tls-client-auth must be one of none, require, got 'optional'"),
        ({"tls_cert": "c.crt"}, "--tls-cert and --tls-key go together"),
        ({"tls_key": "c.key"}, "--tls-cert and --tls-key go together"),
        ({"tls_ca": "ca.crt"}, "--tls-ca without --tls-cert and --tls-key"),
        ({"tls_client_auth": "require"}, "--tls-client-auth require needs --tls-cert, --tls-key and --tls-ca"),
        ({"tls_cert": "c", "tls_key": "k", "tls_client_auth": "require"}, "--tls-client-auth require needs"),
        ({"model_server_tls_cert": "m.crt"}, "--model-server-tls-cert and --model-server-tls-key go together"),
        ({"model_server_tls_cert": "m", "model_server_tls_key": "k"}, "--model-server-tls-cert needs this control plane's --tls-cert, --tls-key and --tls-ca"),
        ({"model_server_tls_cert": "m", "model_server_tls_key": "k", "tls_cert": "c", "tls_key": "k"}, "--model-server-tls-cert needs"),
    ],
)
def test_combinations_that_cannot_work_are_refused_naming_the_flag(tmp_path, flags, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        _settings(tmp_path, flags)


def test_the_files_are_checked_at_start_naming_the_flag(tmp_path, pki, token_file):
    with pytest.raises(TlsConfigError, match="--tls-cert: cannot read"):
        load_security(_settings(tmp_path, {**_tls_flags(pki), "tls_cert": str(tmp_path / "missing.crt")}))
    open_key = tmp_path / "open.key"
    open_key.write_bytes(pki.key("control-plane").read_bytes())
    os.chmod(open_key, 0o644)
    with pytest.raises(TlsConfigError, match="--tls-key: .* a private key must be 0600"):
        load_security(_settings(tmp_path, {**_tls_flags(pki), "tls_key": str(open_key)}))
    with pytest.raises(TlsConfigError, match="--tls-key: .* is not the key of the certificate"):
        load_security(_settings(tmp_path, {**_tls_flags(pki), "tls_key": str(pki.key("proxy"))}))
    os.chmod(token_file[0], 0o640)
    with pytest.raises(TokenFileError, match="--token-file: .* a token file must be 0600"):
        load_security(_settings(tmp_path, {"token_file": str(token_file[0])}))
    flags = {**_tls_flags(pki), "model_server_tls_cert": str(pki.cert("model-server")), "model_server_tls_key": str(pki.key("proxy"))}
    with pytest.raises(TlsConfigError, match="--model-server-tls-key: .* is not the key of the certificate"):
        load_security(_settings(tmp_path, flags))


def test_a_token_file_turns_authorization_on_with_an_internal_token_too(tmp_path, token_file):
    path, token = token_file
    security = load_security(_settings(tmp_path, {"token_file": str(path)}))
    assert security.auth_on and security.describe() == {"tls": False, "auth": "token"}
    tokens = security.gatekeeper.tokens
    assert len(tokens) == 2 and tokens.match(token) and tokens.match(security.internal_token)
    assert security.internal_token != token and not tokens.match(new_token())
    # The HTTP face sends the internal token, over plaintext like the door.
    client = security.internal_client()
    assert client.token == security.internal_token and not client.secure
    # A second start makes another internal token: it is never kept anywhere.
    assert load_security(_settings(tmp_path, {"token_file": str(path)})).internal_token != security.internal_token


def test_mutual_tls_alone_turns_authorization_on(tmp_path, pki):
    security = load_security(_settings(tmp_path, {**_tls_flags(pki), "tls_client_auth": "require"}))
    assert security.auth_on and security.require_client_auth
    assert security.describe() == {"tls": True, "auth": "mtls"}
    client = security.internal_client()
    assert client.secure and client.tls.has_identity and client.token == security.internal_token
    assert security.http_ssl_context() is not None


def test_open_reads_reach_the_policy(tmp_path, token_file):
    security = load_security(_settings(tmp_path, {"token_file": str(token_file[0]), "open_reads": True}))
    policy = security.gatekeeper.policy
    assert policy.rule("/mve.v1.EndpointControl/DescribeModel").kind == "open"
    assert ADMIN in policy.rule("/mve.v1.EndpointControl/CreateModel").roles


def test_model_servers_are_started_with_mutual_tls_and_dialled_with_the_control_planes_certificate(tmp_path, pki):
    flags = {
        **_tls_flags(pki), "model_server_tls_cert": str(pki.cert("model-server")),
        "model_server_tls_key": str(pki.key("model-server")),
    }
    model_servers = load_security(_settings(tmp_path, flags)).model_servers
    assert model_servers.flags() == [
        "--tls-cert", str(pki.cert("model-server").resolve()), "--tls-key", str(pki.key("model-server").resolve()),
        "--tls-ca", str(pki.ca_cert.resolve()), "--tls-client-auth", "require",
    ]
    assert model_servers.dial.cert_path == pki.cert("control-plane")
    provider = LocalInstanceProvider(
        tmp_path, tls_flags=tuple(model_servers.flags()), credentials=model_servers.channel_credentials()
    )
    spec = LaunchSpec("ep", "main", "i-1", "/m.onnx", "m", "cpu", 1)
    assert provider.command(spec)[-8:] == model_servers.flags()
    assert "--tls-cert" not in LocalInstanceProvider(tmp_path).command(spec)
    with pytest.raises(ValueError, match="tls_flags and credentials go together"):
        LocalInstanceProvider(tmp_path, tls_flags=("--tls-cert", "x"))


def test_the_routing_table_says_upstream_tls(tmp_path):
    from mve.control.routes import RoutePublisher
    from mve.control.store import SqliteStore

    store = SqliteStore(tmp_path / "mve.db")
    try:
        assert not RoutePublisher(store).current.upstream_tls
        assert RoutePublisher(store, upstream_tls=True).current.upstream_tls
    finally:
        store.close()


def test_certificate_names_and_the_address_the_http_face_dials(pki):
    cert = pki.cert("control-plane").read_bytes()
    assert names_host(cert, "127.0.0.1") and names_host(cert, "localhost") and names_host(cert, "[::1]")
    assert not names_host(cert, "10.1.2.3") and not names_host(cert, "example.com")
    from mve.tls import load_tls

    tls = load_tls(pki.cert("control-plane"), pki.key("control-plane"), pki.ca_cert)
    assert internal_address("0.0.0.0", 7070, tls) == "127.0.0.1:7070"
    assert internal_address("::", 7070, tls) == "[::1]:7070"
    assert internal_address("10.1.2.3", 7070, None) == "10.1.2.3:7070"
    with pytest.raises(TlsConfigError, match="--tls-cert: .* names neither 10.1.2.3 nor localhost"):
        internal_address("10.1.2.3", 7070, tls)
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_the_cli_knows_every_flag():
    from mve.control.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "control-plane", "--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a", "--tls-client-auth", "require",
        "--token-file", "t", "--open-reads", "--model-server-tls-cert", "mc", "--model-server-tls-key", "mk",
    ])
    assert (args.tls_cert, args.tls_key, args.tls_ca, args.tls_client_auth) == ("c", "k", "a", "require")
    assert (args.token_file, args.open_reads, args.model_server_tls_cert, args.model_server_tls_key) == ("t", True, "mc", "mk")
    assert parser.parse_args(["control-plane"]).open_reads is None  # not given: MVE_OPEN_READS decides


def test_the_internal_token_is_never_in_a_repr(tmp_path, token_file):
    security = load_security(_settings(tmp_path, {"token_file": str(token_file[0])}))
    assert security.internal_token not in repr(security)
    assert security.internal_token not in repr(security.internal_client())


def test_a_door_beyond_loopback_that_anyone_may_call_is_warned_about(tmp_path, token_file, caplog):
    from mve.control.server import _warn_about_exposure

    def warnings(flags):
        caplog.clear()
        settings = _settings(tmp_path, flags)
        _warn_about_exposure(settings, load_security(settings))
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    assert warnings({}) == []  # loopback
    [open_door] = warnings({"host": "0.0.0.0"})
    assert "event=grpc_auth_off" in open_door and "ANYONE WHO CAN REACH IT" in open_door
    [clear] = warnings({"host": "0.0.0.0", "token_file": str(token_file[0])})
    assert "event=tokens_in_clear" in clear
    assert token_file[1] not in clear
