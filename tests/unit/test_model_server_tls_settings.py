"""`mve model-server`'s --tls-* flags: checked at start, every refusal naming the flag at fault."""

from __future__ import annotations

import argparse

import pytest

from mve.modelserver.settings import ModelServerSettings, SettingsError
from mve.pki import ensure_local_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return ensure_local_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not parsed by the settings")
    return path


def _args(model, **tls):
    values = dict(model=str(model), model_name=None, host="127.0.0.1", port=0, device="cpu", threads=1,
                  grace_period_s=1.0, tls_cert=None, tls_key=None, tls_ca=None, tls_client_auth="none")
    values.update(tls)
    return argparse.Namespace(**values)


def test_without_tls_flags_the_server_is_plaintext(model):
    settings = ModelServerSettings.from_args(_args(model))
    assert settings.tls is None and not settings.require_client_auth


def test_mutual_tls_takes_the_certificate_its_key_and_the_ca(model, pki):
    settings = ModelServerSettings.from_args(_args(
        model, tls_cert=pki.cert("model-server"), tls_key=pki.key("model-server"), tls_ca=pki.ca_cert,
        tls_client_auth="require",
    ))
    assert settings.require_client_auth
    assert settings.tls.has_identity and settings.tls.ca_pem is not None


def test_tls_without_client_certificates(model, pki):
    settings = ModelServerSettings.from_args(_args(model, tls_cert=pki.cert("model-server"), tls_key=pki.key("model-server")))
    assert settings.tls.has_identity and not settings.require_client_auth


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"tls_client_auth": "optional"}, "--tls-client-auth"),
        ({"tls_client_auth": "require"}, "--tls-client-auth require needs --tls-cert"),
        ({"tls_client_auth": "require", "cert": True}, "--tls-ca"),
        ({"ca": True}, "--tls-ca"),
        ({"ca": True, "tls_client_auth": "require"}, "--tls-cert"),
        ({"cert_only": True}, "--tls-key"),
    ],
)
def test_a_bad_combination_is_refused_naming_the_flag(model, pki, flags, named):
    tls = {}
    if flags.pop("cert", False):
        tls.update(tls_cert=pki.cert("model-server"), tls_key=pki.key("model-server"))
    if flags.pop("ca", False):
        tls.update(tls_ca=pki.ca_cert)
    if flags.pop("cert_only", False):
        tls.update(tls_cert=pki.cert("model-server"))
    with pytest.raises(SettingsError, match=named.replace("-", r"\-")):
        ModelServerSettings.from_args(_args(model, **tls, **flags))


def test_a_key_others_can_read_is_refused(model, pki, tmp_path):
    key = tmp_path / "open.key"
    key.write_bytes(pki.key("model-server").read_bytes())
    key.chmod(0o644)
    with pytest.raises(SettingsError, match=r"\-\-tls\-key.*chmod 600"):
        ModelServerSettings.from_args(_args(model, tls_cert=pki.cert("model-server"), tls_key=key))


def test_a_key_of_another_certificate_is_refused(model, pki):
    with pytest.raises(SettingsError, match=r"\-\-tls\-key.*not the key of the certificate"):
        ModelServerSettings.from_args(_args(model, tls_cert=pki.cert("model-server"), tls_key=pki.key("proxy")))


def test_a_missing_certificate_file_is_refused(model, pki, tmp_path):
    with pytest.raises(SettingsError, match=r"\-\-tls\-cert: cannot read"):
        ModelServerSettings.from_args(_args(model, tls_cert=tmp_path / "nope.crt", tls_key=pki.key("model-server")))
