"""``<data-dir>/experiments.db``: feedback, the capture index and bandit policies, in SQLite (WAL).

Three parts of the control plane use it from three places: SendFeedback and the bandit API from
the event loop's worker threads, the capture index from its own thread, reports from worker
threads. Each thread gets its own connection (`ExperimentsDb.connection`); WAL lets readers run
beside the one writer, and a writer waits up to `BUSY_TIMEOUT_S` for another's transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

BUSY_TIMEOUT_S = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    endpoint TEXT NOT NULL, inference_id TEXT NOT NULL, labels TEXT, reward REAL,
    observation_time REAL NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (endpoint, inference_id));
CREATE INDEX IF NOT EXISTS feedback_by_time ON feedback (endpoint, observation_time);
CREATE INDEX IF NOT EXISTS feedback_by_age ON feedback (received);
CREATE TABLE IF NOT EXISTS captured (
    id INTEGER PRIMARY KEY, endpoint TEXT NOT NULL, variant TEXT NOT NULL, inference_id TEXT NOT NULL,
    time REAL NOT NULL, rows INTEGER NOT NULL, labels TEXT, scores TEXT, outputs TEXT);
CREATE INDEX IF NOT EXISTS captured_by_time ON captured (endpoint, time);
CREATE INDEX IF NOT EXISTS captured_by_id ON captured (endpoint, inference_id);
CREATE TABLE IF NOT EXISTS capture_files (
    path TEXT PRIMARY KEY, endpoint TEXT NOT NULL, variant TEXT NOT NULL, offset INTEGER NOT NULL,
    inode INTEGER NOT NULL, seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS capture_errors (
    endpoint TEXT NOT NULL, variant TEXT NOT NULL, malformed INTEGER NOT NULL, last_error TEXT NOT NULL,
    PRIMARY KEY (endpoint, variant));
CREATE TABLE IF NOT EXISTS bandit_policies (endpoint TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


class ExperimentsDb:
    """One SQLite file; a connection per thread, made on first use, all closed by `close`."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.connection().executescript(SCHEMA)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use `transaction` to group writes)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(str(self.path), isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on this thread's connection, ROLLBACK when the block raises."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection (at shutdown, when no thread uses them any more)."""
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()
