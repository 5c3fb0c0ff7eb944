"""mve up's first access key: an AWS credentials file in the data dir (0600), reused, replaced when deleted."""

from __future__ import annotations

import argparse
import configparser
import os
import stat

import pytest
from keys_server import KeysServer

from mve.first_key import credentials_path, ensure_first_key, read_credentials, write_credentials


@pytest.fixture
def server(tmp_path):
    with KeysServer(tmp_path / "control") as running:
        yield running


def test_first_run_makes_a_key_and_a_0600_credentials_file(tmp_path, server):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    key = ensure_first_key(data_dir, server.address)
    assert key.created and key.path == credentials_path(data_dir)
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    parser = configparser.ConfigParser()
    parser.read(key.path)
    assert parser.get("mve", "aws_access_key_id") == key.access_key_id
    assert parser.get("mve", "aws_secret_access_key") == key.secret_access_key
    assert [k.access_key_id for k in server.store.list()] == [key.access_key_id]
    assert f"AWS_SHARED_CREDENTIALS_FILE={key.path.resolve()} AWS_PROFILE=mve" in key.usage()
    assert key.secret_access_key not in key.usage()


def test_a_later_run_reuses_the_key(tmp_path, server):
    first = ensure_first_key(tmp_path, server.address)
    again = ensure_first_key(tmp_path, server.address)
    assert not again.created
    assert (again.access_key_id, again.secret_access_key) == (first.access_key_id, first.secret_access_key)
    assert len(server.store.list()) == 1


def test_a_deleted_key_is_replaced(tmp_path, server):
    first = ensure_first_key(tmp_path, server.address)
    server.store.delete(first.access_key_id)
    again = ensure_first_key(tmp_path, server.address)
    assert again.created and again.access_key_id != first.access_key_id
    assert read_credentials(again.path) == (again.access_key_id, again.secret_access_key)


def test_the_credentials_file_works_with_boto3(tmp_path, server, monkeypatch):
    import boto3

    key = ensure_first_key(tmp_path, server.address)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(key.path))
    credentials = boto3.Session(profile_name="mve").get_credentials()
    assert (credentials.access_key, credentials.secret_key) == (key.access_key_id, key.secret_access_key)


def test_other_profiles_are_kept_and_the_mode_is_0600(tmp_path):
    path = tmp_path / "credentials"
    path.write_text("[default]\naws_access_key_id = A\naws_secret_access_key = B\n")
    os.chmod(path, 0o644)
    write_credentials(path, "MVEKAAAAAAAAAAAAAAAA", "s/e+c" * 8)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    assert parser.get("default", "aws_access_key_id") == "A"
    assert read_credentials(path) == ("MVEKAAAAAAAAAAAAAAAA", "s/e+c" * 8)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["credentials"]  # no temporary file left


def test_mve_up_auth_flag(monkeypatch):
    from mve.mesh import register

    def parse(*argv):
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"))
        return parser.parse_args(["up", *argv])

    monkeypatch.delenv("MVE_AUTH", raising=False)
    assert parse().auth == "sigv4"
    assert parse("--auth", "NONE").auth == "none"
    monkeypatch.setenv("MVE_AUTH", "none")
    assert parse().auth == "none"
    with pytest.raises(SystemExit):
        parse("--auth", "off")
