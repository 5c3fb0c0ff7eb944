"""The access key store: ids and secrets, encryption at rest, the master key, date keys around today."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import threading

import pytest

from mve.control.access_keys import (
    MAX_KEYS,
    AccessKeyStore,
    MasterKeyError,
    seconds_to_next_day,
    window_days,
)
from mve.errors import NotFound, ResourceLimitExceeded, ValidationError

# 2024-02-29 12:00:00 UTC
NOON = 1709208000.0


class Clock:
    def __init__(self, now: float = NOON):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    keys = AccessKeyStore(tmp_path / "mve.db", tmp_path / "master.key", clock=clock)
    yield keys
    keys.close()


def botocore_date_key(secret: str, day: str) -> bytes:
    from botocore.auth import SigV4Auth
    from botocore.credentials import Credentials

    return SigV4Auth(Credentials("x", secret), "sagemaker", "us-east-1")._sign(f"AWS4{secret}".encode(), day)


def test_ids_and_secrets_have_the_documented_shape(store):
    key, secret = store.create("laptop")
    assert len(key.access_key_id) == 20 and key.access_key_id.startswith("MVEK")
    assert key.access_key_id[4:].isalnum() and key.access_key_id == key.access_key_id.upper()
    assert len(secret) == 40
    assert key.description == "laptop" and key.created == NOON
    other, other_secret = store.create("")
    assert other.access_key_id != key.access_key_id and other_secret != secret


def test_list_and_delete(store, clock):
    first, _ = store.create("a")
    clock.now += 1
    second, _ = store.create("b")
    assert [k.access_key_id for k in store.list()] == [first.access_key_id, second.access_key_id]
    store.delete(first.access_key_id)
    assert [k.access_key_id for k in store.list()] == [second.access_key_id]


def test_delete_of_an_unknown_key_names_it(store):
    with pytest.raises(NotFound) as info:
        store.delete("MVEKNOSUCHKEYNOSUCH1")
    assert "MVEKNOSUCHKEYNOSUCH1" in info.value.message


def test_description_is_limited(store):
    store.create("d" * 256)
    with pytest.raises(ValidationError):
        store.create("d" * 257)
    with pytest.raises(ValidationError):
        store.create("two\nlines")


def test_at_most_100_keys(store):
    for _ in range(MAX_KEYS):
        store.create("")
    with pytest.raises(ResourceLimitExceeded):
        store.create("one too many")
    assert len(store.list()) == MAX_KEYS


def test_secrets_are_encrypted_at_rest(tmp_path, store):
    _, secret = store.create("at rest")
    store.close()
    for path in tmp_path.iterdir():  # mve.db, its WAL and shared memory, the master key
        assert secret.encode() not in path.read_bytes(), path.name


def test_master_key_is_made_0600_on_first_use(tmp_path, store):
    master = tmp_path / "master.key"
    assert not master.exists()  # no key yet: nothing to encrypt
    store.create("")
    assert stat.S_IMODE(master.stat().st_mode) == 0o600


def test_a_master_key_others_can_read_is_refused(tmp_path, store, clock):
    store.create("")
    store.close()
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(MasterKeyError) as info:
        AccessKeyStore(tmp_path / "mve.db", tmp_path / "master.key", clock=clock)
    assert "chmod 600" in str(info.value)


def test_keys_survive_a_restart(tmp_path, store, clock):
    key, secret = store.create("kept")
    store.close()
    again = AccessKeyStore(tmp_path / "mve.db", tmp_path / "master.key", clock=clock)
    try:
        assert [k.access_key_id for k in again.list()] == [key.access_key_id]
        assert again.date_key(key.access_key_id, "20240229") == botocore_date_key(secret, "20240229")
    finally:
        again.close()


def test_date_keys_match_botocore_for_yesterday_today_tomorrow(store):
    key, secret = store.create("")
    assert window_days(NOON) == ("20240228", "20240229", "20240301")
    for day in window_days(NOON):
        assert store.date_key(key.access_key_id, day) == botocore_date_key(secret, day)
    assert store.date_key(key.access_key_id, "20240302") is None
    assert store.date_key("MVEKNOSUCHKEYNOSUCH1", "20240229") is None
    expected = hmac.new(f"AWS4{secret}".encode(), b"20240229", hashlib.sha256).digest()
    assert store.date_key(key.access_key_id, "20240229") == expected


def test_signing_keys_three_per_key_sorted(store):
    first, _ = store.create("")
    second, _ = store.create("")
    keys = store.signing_keys()
    assert len(keys) == 6
    assert [(k.access_key_id, k.date) for k in keys] == sorted(
        (key_id, day) for key_id in (first.access_key_id, second.access_key_id) for day in window_days(NOON)
    )
    store.delete(first.access_key_id)
    assert {k.access_key_id for k in store.signing_keys()} == {second.access_key_id}
    assert store.date_key(first.access_key_id, "20240229") is None


def test_refresh_moves_the_window_when_the_day_turns(store, clock):
    key, secret = store.create("")
    assert not store.refresh()
    clock.now += 6 * 3600
    assert not store.refresh()  # same UTC day
    clock.now += 12 * 3600  # 2024-03-01 06:00
    assert store.refresh()
    assert store.days == ("20240229", "20240301", "20240302")
    assert store.date_key(key.access_key_id, "20240228") is None
    assert store.date_key(key.access_key_id, "20240302") == botocore_date_key(secret, "20240302")


def test_a_secret_that_does_not_decrypt_is_left_out_and_logged(tmp_path, store, clock, caplog):
    key, _ = store.create("")
    store.close()
    (tmp_path / "master.key").unlink()
    from cryptography.fernet import Fernet

    fd = os.open(tmp_path / "master.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, Fernet.generate_key())
    os.close(fd)
    with caplog.at_level(logging.ERROR):
        again = AccessKeyStore(tmp_path / "mve.db", tmp_path / "master.key", clock=clock)
    try:
        assert again.signing_keys() == []
        assert key.access_key_id in caplog.text
    finally:
        again.close()


def test_the_secret_is_never_logged(store, caplog):
    with caplog.at_level(logging.DEBUG):
        key, secret = store.create("logged?")
        store.delete(key.access_key_id)
    assert key.access_key_id in caplog.text
    assert secret not in caplog.text


def test_worker_threads_can_create_at_once(store):
    made = []

    def create():
        made.append(store.create("")[0].access_key_id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(made) == sorted(k.access_key_id for k in store.list())
    assert len(store.signing_keys()) == 8 * 3


def test_seconds_to_next_day():
    assert seconds_to_next_day(NOON) == 12 * 3600
    assert seconds_to_next_day(NOON - 12 * 3600) == 24 * 3600
