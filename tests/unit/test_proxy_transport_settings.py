"""``mve proxy --transport auto|native|grpc-aio``: what auto picks, what is refused and why (exit 2,
a message naming the flag), and the environment variable."""

from __future__ import annotations

import pytest

from mve.cli import build_parser, main
from mve.proxy import cli, settings as proxy_settings
from mve.proxy.settings import ProxySettings

BUILT = proxy_settings.native_transport_available()


def _settings(argv: list[str]) -> ProxySettings:
    return cli.settings_from_args(build_parser().parse_args(["proxy", *argv]))


def test_auto_is_the_default_and_picks_native_where_it_was_built(monkeypatch):
    monkeypatch.delenv("MVE_PROXY_TRANSPORT", raising=False)
    settings = _settings([])
    assert settings.transport == "auto"
    assert settings.effective_transport == ("native" if BUILT else "grpc-aio")


def test_auto_picks_grpc_aio_for_a_door_with_tls():
    assert ProxySettings(tls_cert="/some/cert.pem", tls_key="/some/key.pem").effective_transport == "grpc-aio"


def test_auto_picks_grpc_aio_where_the_extension_is_missing(monkeypatch):
    monkeypatch.setattr(proxy_settings, "native_transport_available", lambda: False)
    assert ProxySettings().effective_transport == "grpc-aio"


def test_grpc_aio_on_request(monkeypatch):
    assert _settings(["--transport", "grpc-aio"]).effective_transport == "grpc-aio"
    monkeypatch.setenv("MVE_PROXY_TRANSPORT", "grpc-aio")
    assert _settings([]).effective_transport == "grpc-aio"
    assert _settings(["--transport", "auto"]).transport == "auto"    # the flag wins


def test_an_unknown_transport_exits_2_naming_the_flag(capsys):
    assert main(["proxy", "--transport", "quic"]) == 2
    assert "--transport must be one of auto, native, grpc-aio, got 'quic'" in capsys.readouterr().err


def test_native_with_tls_is_refused_with_the_reason(capsys):
    assert main(["proxy", "--transport", "native", "--tls-cert", "/x/cert.pem", "--tls-key", "/x/key.pem"]) == 2
    assert "--transport native serves plaintext HTTP/2 only" in capsys.readouterr().err


def test_native_without_the_extension_is_refused_with_how_to_build_it(monkeypatch, capsys):
    monkeypatch.setattr(proxy_settings, "native_transport_available", lambda: False)
    assert main(["proxy", "--transport", "native"]) == 2
    assert "libnghttp2-dev" in capsys.readouterr().err


@pytest.mark.skipif(not BUILT, reason="mve._h2transport not built: libnghttp2-dev is missing")
def test_native_on_request_where_it_was_built():
    assert _settings(["--transport", "native"]).effective_transport == "native"
