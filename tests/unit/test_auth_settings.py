"""The control plane's --auth setting (MVE_AUTH): sigv4 by default, none on request, anything else refused."""

from __future__ import annotations

import pytest

from mve.control.settings import SettingsError, load_settings


def test_sigv4_is_the_default(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, env={})
    assert settings.auth == "sigv4" and settings.auth_required
    assert settings.master_key_path == tmp_path / "master.key"


def test_flag_and_env(tmp_path):
    assert not load_settings({"data_dir": str(tmp_path), "auth": "none"}, env={}).auth_required
    assert not load_settings({"data_dir": str(tmp_path)}, env={"MVE_AUTH": "NONE"}).auth_required
    assert load_settings({"data_dir": str(tmp_path), "auth": "SigV4"}, env={"MVE_AUTH": "none"}).auth_required


@pytest.mark.parametrize("value", ["off", "", "sigv2", "true"])
def test_anything_else_is_refused_naming_the_flag(tmp_path, value):
    with pytest.raises(SettingsError) as info:
        load_settings({"data_dir": str(tmp_path), "auth": value or " "}, env={})
    assert "--auth must be one of sigv4, none" in str(info.value)


def test_the_cli_knows_the_flag():
    import argparse

    from mve.control.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["control-plane", "--auth", "none"]).auth == "none"
