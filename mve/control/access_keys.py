"""Access keys: the AWS-style key pairs that sign (SigV4) the calls boto3 makes to mve's HTTP faces.

Kept in the control plane's store, ``<data-dir>/mve.db``, table ``access_keys``: the id, a
description, the creation time, and the secret encrypted with Fernet (AES-128-CBC + HMAC-SHA256)
under the master key ``<data-dir>/master.key`` (made 0600 on first use; a master key others can
read is refused). The secret is returned once, by `AccessKeyStore.create`, and never logged.

Signatures are checked with *date keys*, HMAC-SHA256("AWS4" + secret, "YYYYMMDD"): the store keeps
those of yesterday, today and tomorrow (UTC) for every key in memory (`date_key`, `signing_keys`),
so a request never waits for the disk or the cipher, and a proxy is sent date keys, never secrets.
`refresh` moves that window when the UTC day turns (`keep_window_current` calls it).

Every method may be called from a worker thread (one lock guards the database); `date_key` and
`signing_keys` read an immutable snapshot and never block.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import sqlite3
import stat
import string
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mve._proto import control_pb2
from mve.errors import NotFound, ResourceLimitExceeded, ValidationError
from mve.sigv4 import date_key as derive_date_key

log = logging.getLogger(__name__)

ID_PREFIX = "MVEK"
ID_PATTERN = re.compile(r"^MVEK[A-Z0-9]{16}$")
ID_ALPHABET = string.ascii_uppercase + string.digits
SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"
SECRET_LENGTH = 40
MAX_DESCRIPTION = 256
MAX_KEYS = 100
DAY_S = 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS access_keys (
    access_key_id TEXT PRIMARY KEY, description TEXT NOT NULL, created REAL NOT NULL, secret BLOB NOT NULL);
"""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MasterKeyError(RuntimeError):
    """The master key file cannot be used (unreadable, malformed, or readable by others)."""


@dataclass(frozen=True)
class AccessKey:
    """An access key's metadata (never its secret)."""

    access_key_id: str
    description: str
    created: float


def utc_day(epoch: float) -> str:
    """YYYYMMDD of the UTC day `epoch` falls in."""
    return time.strftime("%Y%m%d", time.gmtime(epoch))


def window_days(now: float) -> tuple[str, str, str]:
    """Yesterday, today and tomorrow (UTC) around `now`: the days a routing table carries date keys for."""
    return utc_day(now - DAY_S), utc_day(now), utc_day(now + DAY_S)


def load_master_key(path: Path, *, create: bool):
    """The Fernet cipher of the master key at `path`, made (mode 0600) when absent and `create`.

    None when absent and not `create`. MasterKeyError when the file is readable by group or others
    (its mode must be 0600 or stricter) or is not a Fernet key.
    """
    from cryptography.fernet import Fernet

    path = Path(path)
    if not path.exists():
        if not create:
            return None
        key = Fernet.generate_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_master_key(path, create=False)  # made by another process just now
        with os.fdopen(fd, "wb") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        log.info("event=master_key_created path=%s", path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise MasterKeyError(
            f"{path} is readable by others (mode {mode:04o}); it encrypts the access keys' secrets: chmod 600 {path}"
        )
    try:
        return Fernet(path.read_bytes().strip())
    except (ValueError, OSError) as error:
        raise MasterKeyError(f"{path} is not a usable master key: {error}") from None


def new_access_key_id() -> str:
    """"MVEK" and 16 random upper-case letters and digits."""
    return ID_PREFIX + "".join(secrets.choice(ID_ALPHABET) for _ in range(20 - len(ID_PREFIX)))


def new_secret() -> str:
    """40 random characters of letters, digits, '+' and '/' (as AWS's secrets)."""
    return "".join(secrets.choice(SECRET_ALPHABET) for _ in range(SECRET_LENGTH))


def validate_description(description: str) -> str:
    """The description, or ValidationError when over 256 characters or holding control characters."""
    if len(description) > MAX_DESCRIPTION:
        raise ValidationError(
            f"1 validation error detected: Value at 'description' failed to satisfy constraint: "
            f"Member must have length less than or equal to {MAX_DESCRIPTION}"
        )
    if _CONTROL.search(description):
        raise ValidationError("Description must not contain control characters (newlines, tabs, ...)")
    return description


def _missing(access_key_id: str) -> NotFound:
    shown = access_key_id if len(access_key_id) <= 64 else access_key_id[:64] + "..."
    return NotFound(f"The Access Key with id {shown} cannot be found.")


class AccessKeyStore:
    """Access keys in SQLite with Fernet-encrypted secrets, and their date keys around today in memory."""

    def __init__(self, db_path: Path, master_key_path: Path, *, clock: Callable[[], float] = time.time):
        self.db_path = Path(db_path)
        self.master_key_path = Path(master_key_path)
        self._clock = clock
        self._lock = threading.Lock()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.db_path), isolation_level=None, timeout=10.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._cipher = None
        self._days: tuple[str, ...] = ()
        self._window: dict[tuple[str, str], bytes] = {}
        self._signing: list[control_pb2.SigningKey] = []
        self.refresh(force=True)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _fernet(self, create: bool):
        if self._cipher is None:
            self._cipher = load_master_key(self.master_key_path, create=create)
        return self._cipher

    # ------------------------------------------------------------ keys

    def create(self, description: str = "") -> tuple[AccessKey, str]:
        """A new key and its secret (returned here only).

        ValidationError for a description over 256 characters or with control characters;
        ResourceLimitExceeded past 100 keys.
        """
        description = validate_description(description)
        secret = new_secret()
        with self._lock:
            token = self._fernet(create=True).encrypt(secret.encode())
            count = self._db.execute("SELECT COUNT(*) FROM access_keys").fetchone()[0]
            if count >= MAX_KEYS:
                raise ResourceLimitExceeded(
                    f"Cannot exceed quota for AccessKeysPerUser: {MAX_KEYS}. Delete a key (mve keys delete) first."
                )
            created = self._clock()
            for _ in range(5):
                key = AccessKey(new_access_key_id(), description, created)
                try:
                    self._db.execute(
                        "INSERT INTO access_keys VALUES (?, ?, ?, ?)",
                        (key.access_key_id, key.description, key.created, token),
                    )
                    break
                except sqlite3.IntegrityError:  # the same 16 random characters twice: draw again
                    continue
            else:  # pragma: no cover - 36**16 ids
                raise RuntimeError("could not draw an unused access key id")
            window = dict(self._window)
            for day in self._days:
                window[(key.access_key_id, day)] = derive_date_key(secret, day)
            self._set_window(self._days, window)
        log.info("event=access_key_created access_key_id=%s keys=%d", key.access_key_id, count + 1)
        return key, secret

    def list(self) -> list[AccessKey]:
        """Every key, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT access_key_id, description, created FROM access_keys ORDER BY created, access_key_id"
            ).fetchall()
        return [AccessKey(*row) for row in rows]

    def delete(self, access_key_id: str) -> None:
        """Delete a key: requests it signs are refused from the next routing table on.

        NotFound naming the id when there is no such key.
        """
        with self._lock:
            deleted = self._db.execute("DELETE FROM access_keys WHERE access_key_id=?", (access_key_id,)).rowcount
            if not deleted:
                raise _missing(access_key_id)
            window = {k: v for k, v in self._window.items() if k[0] != access_key_id}
            self._set_window(self._days, window)
        log.info("event=access_key_deleted access_key_id=%s", access_key_id)

    # ------------------------------------------------------------ date keys

    def date_key(self, access_key_id: str, date: str) -> bytes | None:
        """The key's date key for `date` (YYYYMMDD) when that day is yesterday, today or tomorrow; else None."""
        return self._window.get((access_key_id, date))

    @property
    def days(self) -> tuple[str, ...]:
        """The UTC days (YYYYMMDD) the date keys in memory are for: yesterday, today, tomorrow."""
        return self._days

    def signing_keys(self) -> list[control_pb2.SigningKey]:
        """Every key's date keys for yesterday, today and tomorrow, sorted by key id then date."""
        return list(self._signing)

    def refresh(self, force: bool = False) -> bool:
        """Recompute the date keys when the UTC day turned (or `force`); True when they changed.

        Decrypts every secret (milliseconds for 100 keys): call it from a worker thread on an event loop.
        A secret that does not decrypt (the master key was replaced) is logged and left out.
        """
        days = window_days(self._clock())
        if days == self._days and not force:
            return False
        with self._lock:
            rows = self._db.execute("SELECT access_key_id, secret FROM access_keys").fetchall()
            cipher = self._fernet(create=False) if rows else None
            window: dict[tuple[str, str], bytes] = {}
            unreadable = []
            for access_key_id, token in rows:
                secret = self._decrypt(cipher, token)
                if secret is None:
                    unreadable.append(access_key_id)
                    continue
                for day in days:
                    window[(access_key_id, day)] = derive_date_key(secret, day)
            changed = days != self._days or window != self._window
            self._set_window(days, window)
        if unreadable:
            log.error(
                "event=access_keys_unreadable access_key_ids=%s reason=%r", ",".join(sorted(unreadable)),
                f"their secrets do not decrypt with {self.master_key_path}; delete them and create new keys",
            )
        return changed

    @staticmethod
    def _decrypt(cipher, token: bytes) -> str | None:
        from cryptography.fernet import InvalidToken

        if cipher is None:
            return None
        try:
            return cipher.decrypt(bytes(token)).decode()
        except (InvalidToken, UnicodeDecodeError):
            return None

    def _set_window(self, days: tuple[str, ...], window: dict[tuple[str, str], bytes]) -> None:
        self._days = days
        self._window = window  # one reference swap: readers see the old snapshot or the new one
        self._signing = [
            control_pb2.SigningKey(access_key_id=key_id, date=day, date_key=value)
            for (key_id, day), value in sorted(window.items())
        ]


def seconds_to_next_day(now: float) -> float:
    """Seconds from `now` to the next UTC midnight."""
    return DAY_S - (now % DAY_S)


async def keep_window_current(
    store: AccessKeyStore,
    on_change: Callable[[], object],
    *,
    clock: Callable[[], float] = time.time,
    check_every_s: float = 60.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Move the date-key window when the UTC day turns, and call `on_change` (re-publish the table).

    Wakes at the next midnight, and at least every `check_every_s` so that a clock set forward is
    followed within that long.
    """
    while True:
        await sleep(min(check_every_s, seconds_to_next_day(clock()) + 0.5))
        try:
            changed = await asyncio.to_thread(store.refresh)
        except Exception:  # noqa: BLE001 - retried at the next check; the error is logged
            log.exception("event=signing_keys_refresh_failed")
            continue
        if changed:
            log.info("event=signing_keys_day_turned days=%s", ",".join(store.days))
            on_change()
