"""``--http-port``: the control plane's HTTP face setting (flag, env, range, clashes), and how
``mve up`` / `Mesh` pass it on and keep it across a restart."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mve.control.settings import SettingsError, load_settings
from mve.mesh import Mesh
from mve.supervise import Child


def test_default_flag_env_and_off(tmp_path: Path):
    assert load_settings({"data_dir": tmp_path}, {}).http_port == 7071
    assert load_settings({"data_dir": tmp_path, "http_port": 0}, {}).http_port == 0
    assert load_settings({"data_dir": tmp_path}, {"MVE_CONTROL_PLANE_HTTP_PORT": "9000"}).http_port == 9000
    assert load_settings({"data_dir": tmp_path, "http_port": 8000}, {"MVE_CONTROL_PLANE_HTTP_PORT": "9000"}).http_port == 8000
    off = load_settings({"data_dir": tmp_path, "http_port": -1}, {})
    assert not off.http_enabled
    assert load_settings({"data_dir": tmp_path}, {}).http_enabled


@pytest.mark.parametrize("port", [-2, 65536, 100000])
def test_out_of_range_names_the_flag(tmp_path: Path, port: int):
    with pytest.raises(SettingsError, match="--http-port must be 0-65535"):
        load_settings({"data_dir": tmp_path, "http_port": port}, {})


def test_a_bad_env_value_names_the_variable(tmp_path: Path):
    with pytest.raises(SettingsError, match="MVE_CONTROL_PLANE_HTTP_PORT"):
        load_settings({"data_dir": tmp_path}, {"MVE_CONTROL_PLANE_HTTP_PORT": "web"})


def test_the_http_port_must_not_be_the_grpc_or_metrics_port(tmp_path: Path):
    with pytest.raises(SettingsError, match="--http-port must differ from --port"):
        load_settings({"data_dir": tmp_path, "port": 7080, "http_port": 7080}, {})
    with pytest.raises(SettingsError, match="--http-port must differ from --metrics-port"):
        load_settings({"data_dir": tmp_path, "metrics_port": 7080, "http_port": 7080}, {})
    assert load_settings({"data_dir": tmp_path, "port": 0, "http_port": 0, "metrics_port": 0}, {}).http_port == 0


def test_the_flag_reaches_the_settings():
    from mve.control.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["control-plane", "--http-port", "-1"]).http_port == -1


def test_mve_up_flag_default_and_env(monkeypatch):
    from mve.mesh import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["up"]).control_plane_http_port == 7071
    assert parser.parse_args(["up", "--control-plane-http-port", "0"]).control_plane_http_port == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--control-plane-http-port", "70000"])
    monkeypatch.setenv("MVE_CONTROL_PLANE_HTTP_PORT", "7171")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["up"]).control_plane_http_port == 7171


def test_mesh_passes_the_port_and_a_restart_keeps_the_bound_one(tmp_path: Path):
    mesh = Mesh(tmp_path, control_plane_http_port=0)
    child = Child("control-plane", lambda port: [], 0, None, {})
    assert mesh._http_args(child) == ["--http-port", "0"]
    child.ready_event = {"http_address": "127.0.0.1:45123"}
    assert mesh._http_args(child) == ["--http-port", "45123"]
    assert Mesh(tmp_path, control_plane_http_port=-1)._http_args(Child("control-plane", None, 0, None, {})) == [
        "--http-port", "-1"]
    with pytest.raises(ValueError, match="control_plane_http_port"):
        Mesh(tmp_path, control_plane_http_port=70000)
