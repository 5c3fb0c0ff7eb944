"""``mve keys create|list|delete`` against an in-process mve.v1.AccessKeys."""

from __future__ import annotations

import json

import pytest
from keys_server import KeysServer

from mve.cli import main


@pytest.fixture
def server(tmp_path):
    with KeysServer(tmp_path) as running:
        yield running


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_prints_the_secret_once_with_a_warning(server, capsys):
    code, out, err = run(capsys, "keys", "create", "--description", "ci", "--control-plane", server.address)
    assert code == 0
    [key] = server.store.list()
    assert f"AccessKeyId      {key.access_key_id}" in out
    secret_line = next(line for line in out.splitlines() if line.startswith("SecretAccessKey"))
    secret = secret_line.split()[1]
    assert len(secret) == 40
    assert f"aws_access_key_id = {key.access_key_id}\naws_secret_access_key = {secret}" in out
    assert "WARNING" in err and "shown only now" in err
    assert secret not in err

    code, out, _ = run(capsys, "keys", "list", "--control-plane", server.address)
    assert code == 0 and key.access_key_id in out and "ci" in out and secret not in out


def test_json_output(server, capsys):
    code, out, _ = run(capsys, "keys", "create", "--json", "--control-plane", server.address)
    created = json.loads(out)["AccessKey"]
    assert code == 0 and set(created) == {"AccessKeyId", "SecretAccessKey", "Status", "CreateDate", "Description"}
    code, out, _ = run(capsys, "keys", "list", "--json", "--control-plane", server.address)
    listed = json.loads(out)
    assert [k["AccessKeyId"] for k in listed["AccessKeyMetadata"]] == [created["AccessKeyId"]]
    assert "SecretAccessKey" not in out
    code, out, _ = run(capsys, "keys", "delete", created["AccessKeyId"], "--json", "--control-plane", server.address)
    assert code == 0 and json.loads(out) == {}
    assert server.store.list() == []


def test_delete_of_an_unknown_key_fails_naming_it(server, capsys):
    code, _, err = run(capsys, "keys", "delete", "MVEKNOSUCHKEYNOSUCH1", "--control-plane", server.address)
    assert code == 1
    assert "NoSuchEntity" in err and "MVEKNOSUCHKEYNOSUCH1" in err


def test_empty_list(server, capsys):
    code, out, _ = run(capsys, "keys", "list", "--control-plane", server.address)
    assert code == 0 and "no access keys" in out


def test_description_over_256_characters_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["keys", "create", "--description", "d" * 257])
    assert info.value.code == 2
    assert "at most 256 characters" in capsys.readouterr().err
