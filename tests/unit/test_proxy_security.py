"""The proxy's security flags (`mve.proxy.security`): checked at start with messages naming the flag,
and what they make: the gatekeeper (none when invocations need no credential), the doors' TLS, the
control plane's channel and token, and the upstream pool's TLS mode."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl

import grpc
import pytest

from mve.authn import new_token
from mve.errors import ModelNotReady, ValidationError
from mve.pki import ensure_local_pki
from mve.proxy import cli
from mve.proxy.security import ControlPlaneStub
from mve.proxy.settings import ProxySettings
from mve.proxy.transport.grpc_registry import _authorized
from mve.proxy.transport.upstream import UpstreamPool
from mve.tls import write_private


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return ensure_local_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def token_file(tmp_path):
    token = new_token()
    path = tmp_path / "token"
    write_private(path, f"# comment\n{token}\n{new_token()}\n".encode())
    return path, token


def _tls(pki, **more):
    return dict(tls_cert=str(pki.cert("proxy")), tls_key=str(pki.key("proxy")), tls_ca=str(pki.ca_cert), **more)


def test_with_no_security_flag_nothing_is_on():
    security = ProxySettings().validate().security
    assert security.gatekeeper() is None
    assert security.server_credentials() is None and security.http_ssl_context() is None
    assert not security.control_plane_tls and security.upstream_credentials() is None
    assert security.describe() == "tls=off invoke_auth=off control_plane_tls=off control_plane_token=none"


def test_flags_come_from_the_environment(pki, token_file, monkeypatch):
    path, token = token_file
    for name, value in {
        "MVE_PROXY_TLS_CERT": pki.cert("proxy"), "MVE_PROXY_TLS_KEY": pki.key("proxy"), "MVE_PROXY_TLS_CA": pki.ca_cert,
        "MVE_PROXY_TLS_CLIENT_AUTH": "require", "MVE_PROXY_INVOKE_TOKEN_FILE": path,
        "MVE_PROXY_CONTROL_PLANE_TOKEN_FILE": path, "MVE_PROXY_CONTROL_PLANE_TLS": "off",
    }.items():
        monkeypatch.setenv(name, str(value))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    security = cli.settings_from_args(parser.parse_args(["proxy"])).security
    assert security.door_tls and security.require_client_auth and not security.control_plane_tls
    assert security.invoke_tokens.match(token) and security.control_plane_token == token
    assert security.describe().startswith("tls=mutual invoke_auth=token+cert control_plane_tls=off control_plane_token=token:")
    assert token not in repr(security) and token not in security.describe()


def test_the_control_plane_is_dialled_with_tls_when_a_ca_is_given_unless_told_otherwise(pki):
    assert ProxySettings(**_tls(pki)).validate().security.control_plane_tls
    assert ProxySettings(tls_ca=str(pki.ca_cert)).validate().security.control_plane_tls
    assert not ProxySettings(**_tls(pki, control_plane_tls="off")).validate().security.control_plane_tls
    assert ProxySettings(control_plane_tls="on").validate().security.control_plane_tls  # the system's CAs
    assert not ProxySettings(**_tls(pki)).validate().security.invoke_auth


def test_the_gatekeeper_exists_only_when_invocations_need_a_credential(pki, token_file):
    assert ProxySettings(**_tls(pki)).validate().security.gatekeeper() is None
    by_token = ProxySettings(invoke_token_file=str(token_file[0])).validate().security.gatekeeper()
    assert by_token.tokens.match(token_file[1])
    by_certificate = ProxySettings(**_tls(pki, tls_client_auth="require")).validate().security.gatekeeper()
    assert by_certificate is not None and by_certificate.tokens is None


def test_client_auth_require_asks_https_callers_for_a_certificate_too(pki):
    assert ProxySettings(**_tls(pki)).validate().security.http_ssl_context().verify_mode == ssl.CERT_NONE
    context = ProxySettings(**_tls(pki, tls_client_auth="require")).validate().security.http_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tls_client_auth": "optional"}, "--tls-client-auth must be one of none, require"),
        ({"control_plane_tls": "yes"}, "--control-plane-tls must be one of auto, on, off"),
        ({"tls_client_auth": "require"}, "--tls-client-auth require needs"),
        ({"tls_cert": "CERT"}, "--tls-cert and --tls-key go together"),
        ({"tls_cert": "CERT", "tls_key": "/nonexistent.key"}, "--tls-key: cannot read"),
        ({"tls_ca": "/nonexistent.crt"}, "--tls-ca: cannot read"),
        ({"invoke_token_file": "/nonexistent.token"}, "--invoke-token-file: cannot read"),
        ({"control_plane_token_file": "/nonexistent.token"}, "--control-plane-token-file: cannot read"),
    ],
)
def test_a_bad_flag_is_refused_naming_it(pki, fields, named):
    fields = {k: str(pki.cert("proxy")) if v == "CERT" else v for k, v in fields.items()}
    with pytest.raises(ValidationError) as caught:
        ProxySettings(**fields).validate()
    assert named in caught.value.message


def test_token_files_and_keys_others_can_read_are_refused(pki, token_file, tmp_path):
    path, token = token_file
    path.chmod(0o640)
    with pytest.raises(ValidationError, match="--invoke-token-file.*chmod 600") as caught:
        ProxySettings(invoke_token_file=str(path)).validate()
    assert token not in caught.value.message
    key = tmp_path / "open.key"
    key.write_bytes(pki.key("proxy").read_bytes())
    key.chmod(0o644)
    with pytest.raises(ValidationError, match="--tls-key.*chmod 600"):
        ProxySettings(tls_cert=str(pki.cert("proxy")), tls_key=str(key)).validate()
    empty = tmp_path / "empty.token"
    write_private(empty, b"# nothing\n")
    with pytest.raises(ValidationError, match="--control-plane-token-file.*holds no token"):
        ProxySettings(control_plane_token_file=str(empty)).validate()


def test_the_control_plane_stub_sends_the_token_on_both_calls():
    seen = []

    class Stub:
        def WatchRoutes(self, request, **kwargs):  # noqa: N802
            seen.append(("WatchRoutes", kwargs))

        def ReportStats(self, request, **kwargs):  # noqa: N802
            seen.append(("ReportStats", kwargs))

    stub = ControlPlaneStub(Stub(), (("authorization", "Bearer abc"),))
    stub.WatchRoutes(None)
    stub.ReportStats(None, timeout=1.0)
    assert seen == [
        ("WatchRoutes", {"metadata": (("authorization", "Bearer abc"),)}),
        ("ReportStats", {"metadata": (("authorization", "Bearer abc"),), "timeout": 1.0}),
    ]


def test_without_a_gatekeeper_handlers_are_registered_untouched():
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    assert _authorized(handler, "/inference.GRPCInferenceService/ModelInfer", None) is handler
    gatekeeper = ProxySettings(tls_client_auth="none").validate().security.gatekeeper()
    assert gatekeeper is None


def test_health_stays_untouched_under_a_gatekeeper(token_file):
    gatekeeper = ProxySettings(invoke_token_file=str(token_file[0])).validate().security.gatekeeper()
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    assert _authorized(handler, "/grpc.health.v1.Health/Check", gatekeeper) is handler
    assert _authorized(handler, "/inference.GRPCInferenceService/ModelInfer", gatekeeper) is not handler


def test_the_upstream_pool_replaces_its_channels_when_the_table_changes_mode(monkeypatch):
    opened = []
    real_secure, real_insecure = grpc.aio.secure_channel, grpc.aio.insecure_channel
    monkeypatch.setattr(grpc.aio, "secure_channel", lambda *a, **k: opened.append("tls") or real_secure(*a, **k))
    monkeypatch.setattr(grpc.aio, "insecure_channel", lambda *a, **k: opened.append("plain") or real_insecure(*a, **k))

    async def main():
        pool = UpstreamPool(close_grace_s=0, tls_credentials=grpc.ssl_channel_credentials())
        pool.sync({"127.0.0.1:1"})
        first = pool.stub("127.0.0.1:1")
        pool.sync({"127.0.0.1:1"}, upstream_tls=False)
        assert pool.stub("127.0.0.1:1") is first  # same mode: kept
        pool.sync({"127.0.0.1:1"}, upstream_tls=True)
        assert pool.stub("127.0.0.1:1") is not first
        pool.sync({"127.0.0.1:1"}, upstream_tls=False)
        await pool.close(grace=0)

    asyncio.run(main())
    assert opened == ["plain", "tls", "plain"]


def test_a_pool_without_credentials_refuses_tls_tables_by_name_and_never_in_plaintext(monkeypatch, caplog):
    opened = []
    real_insecure = grpc.aio.insecure_channel
    monkeypatch.setattr(grpc.aio, "insecure_channel", lambda *a, **k: opened.append("plain") or real_insecure(*a, **k))

    async def main():
        pool = UpstreamPool(close_grace_s=0)
        pool.sync({"127.0.0.1:1"})
        with caplog.at_level(logging.ERROR, logger="mve.proxy.transport.upstream"):
            pool.sync({"127.0.0.1:1", "127.0.0.1:2"}, upstream_tls=True)
            pool.sync({"127.0.0.1:1", "127.0.0.1:2"}, upstream_tls=True)
        assert pool.addresses == set()
        for call in (pool.stub, pool.raw_model_infer):
            with pytest.raises(ModelNotReady, match="--tls-cert, --tls-key and --tls-ca"):
                call("127.0.0.1:2")
        pool.sync({"127.0.0.1:2"}, upstream_tls=False)
        assert pool.addresses == {"127.0.0.1:2"}
        await pool.close(grace=0)

    asyncio.run(main())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("--tls-cert, --tls-key and --tls-ca" in r.getMessage() for r in errors)
    assert opened == ["plain", "plain"]
