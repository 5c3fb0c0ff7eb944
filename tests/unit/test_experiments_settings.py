"""The control plane's experiments settings: --capture-index-interval and experiments.db."""

from __future__ import annotations

from pathlib import Path

import pytest

from mve.control.settings import SettingsError, load_settings


def test_capture_index_interval_default_flag_and_env(tmp_path: Path):
    assert load_settings({"data_dir": tmp_path}, {}).capture_index_interval_s == 1.0
    assert load_settings({"data_dir": tmp_path, "capture_index_interval_s": 0.2}, {}).capture_index_interval_s == 0.2
    settings = load_settings({"data_dir": tmp_path}, {"MVE_CAPTURE_INDEX_INTERVAL_S": "5"})
    assert settings.capture_index_interval_s == 5.0
    assert settings.experiments_db_path == tmp_path / "experiments.db"


@pytest.mark.parametrize("interval", [0.1, 61.0])
def test_capture_index_interval_out_of_range_names_the_flag(tmp_path: Path, interval: float):
    with pytest.raises(SettingsError, match="--capture-index-interval must be 0.2-60"):
        load_settings({"data_dir": tmp_path, "capture_index_interval_s": interval}, {})


def test_the_flag_reaches_the_settings():
    import argparse

    from mve.control.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["control-plane", "--capture-index-interval", "0.5"])
    assert args.capture_index_interval_s == 0.5
