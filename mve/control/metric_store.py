"""The control plane's metric time series, in SQLite beside the main store (``metrics.db``).

A series is one (namespace, metric, dimension set). Its points are per-second buckets of
count, sum, min, max and, where the metric keeps one, sparse histogram buckets; samples from
several proxies in the same second add into one point. Points older than `raw_retention_s`
(3 hours, as CloudWatch keeps 1-second data) are rolled up into 60-second points, and those are
deleted after `retention_s` (15 days by default), so the store stays bounded.

A proxy's report counts once: `apply_report` remembers the last sequence applied per proxy
incarnation in the same transaction as the points, so a report sent again (a lost answer, a
retry) changes nothing, and a restarted proxy starts a new incarnation from zero.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mve.control.metric_catalog import MetricSpec, Samples

RAW_RESOLUTION_S = 1
ROLLUP_RESOLUTION_S = 60
DEFAULT_RAW_RETENTION_S = 3 * 3600
DEFAULT_RETENTION_S = 15 * 86400
# A report stamped further than this from the control plane's clock is filed at "now".
MAX_CLOCK_SKEW_S = 300.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, namespace TEXT NOT NULL, metric_name TEXT NOT NULL,
    dimensions TEXT NOT NULL, unit TEXT NOT NULL, last_seen REAL NOT NULL,
    UNIQUE (namespace, metric_name, dimensions));
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL, resolution INTEGER NOT NULL, ts INTEGER NOT NULL,
    count REAL NOT NULL, sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL, hist BLOB,
    PRIMARY KEY (series_id, resolution, ts)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_by_age ON points (resolution, ts);
CREATE TABLE IF NOT EXISTS reports (
    incarnation TEXT PRIMARY KEY, proxy_id TEXT NOT NULL, last_sequence INTEGER NOT NULL, seen REAL NOT NULL);
"""

_UPSERT = """
INSERT INTO points (series_id, resolution, ts, count, sum, min, max, hist) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (series_id, resolution, ts) DO UPDATE SET
    count = count + excluded.count, sum = sum + excluded.sum,
    min = min(min, excluded.min), max = max(max, excluded.max),
    hist = merge_hist(hist, excluded.hist)
"""

Dimensions = tuple[tuple[str, str], ...]


def encode_histogram(index: np.ndarray | None, counts: np.ndarray | None) -> bytes | None:
    """Sparse histogram buckets as one blob (int64 indexes, then int64 counts)."""
    if index is None or len(index) == 0:
        return None
    return np.concatenate([np.asarray(index, np.int64), np.asarray(counts, np.int64)]).tobytes()


def decode_histogram(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(index, counts) from `encode_histogram`'s blob."""
    values = np.frombuffer(blob, dtype=np.int64)
    half = len(values) // 2
    return values[:half], values[half:]


def merge_histograms(blobs: Iterable[bytes | None]) -> bytes | None:
    """One blob with the bucket counts of all of `blobs` added up."""
    parts = [decode_histogram(b) for b in blobs if b]
    if not parts:
        return None
    if len(parts) == 1:
        return encode_histogram(*parts[0])
    index = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    unique, position = np.unique(index, return_inverse=True)
    summed = np.zeros(len(unique), dtype=np.int64)
    np.add.at(summed, position, counts)
    return encode_histogram(unique, summed)


def _merge_pair(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is None:
        return b
    if b is None:
        return a
    return merge_histograms((a, b))


def canonical_dimensions(dimensions: Iterable[tuple[str, str]]) -> str:
    """The dimension set as the JSON key of its series (sorted by name)."""
    return json.dumps(sorted(dimensions), separators=(",", ":"))


@dataclass(frozen=True)
class SeriesInfo:
    """A stored series: its id, metric and unit."""

    id: int
    namespace: str
    metric_name: str
    dimensions: Dimensions
    unit: str
    last_seen: float


@dataclass(frozen=True)
class Point:
    """One stored bucket of a series."""

    ts: int
    count: float
    sum: float
    min: float
    max: float
    hist: bytes | None


class MetricStore:
    """Per-second metric points with roll-up, retention and exactly-once proxy reports."""

    def __init__(
        self,
        path: Path | str,
        *,
        raw_retention_s: float = DEFAULT_RAW_RETENTION_S,
        retention_s: float = DEFAULT_RETENTION_S,
        clock=time.time,
    ):
        self.path = Path(path)
        self.raw_retention_s = raw_retention_s
        self.retention_s = retention_s
        self._clock = clock
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.create_function("merge_hist", 2, _merge_pair, deterministic=True)
        self.db.executescript(_SCHEMA)
        self._series_ids: dict[tuple[str, str, str], int] = {}

    # ------------------------------------------------------------ writing

    def _series_id(self, spec: MetricSpec, dimensions: Dimensions, now: float) -> int:
        key = (spec.namespace, spec.name, canonical_dimensions(dimensions))
        series_id = self._series_ids.get(key)
        if series_id is None:
            self.db.execute(
                "INSERT OR IGNORE INTO series (namespace, metric_name, dimensions, unit, last_seen) VALUES (?, ?, ?, ?, ?)",
                (*key, spec.unit, now),
            )
            series_id = self.db.execute(
                "SELECT id FROM series WHERE namespace=? AND metric_name=? AND dimensions=?", key
            ).fetchone()[0]
            self._series_ids[key] = series_id
        return series_id

    def _file_time(self, timestamp: float) -> int:
        now = self._clock()
        if not math.isfinite(timestamp) or abs(timestamp - now) > MAX_CLOCK_SKEW_S:
            timestamp = now
        return int(math.floor(timestamp))

    def _write(self, items: Sequence[tuple[MetricSpec, Dimensions, Samples]], ts: int) -> None:
        now = self._clock()
        rows = []
        touched = set()
        for spec, dimensions, s in items:
            series_id = self._series_id(spec, dimensions, now)
            touched.add(series_id)
            rows.append(
                (series_id, RAW_RESOLUTION_S, ts, float(s.count), float(s.sum), float(s.min), float(s.max),
                 encode_histogram(s.index, s.counts))
            )
        self.db.executemany(_UPSERT, rows)
        self.db.executemany("UPDATE series SET last_seen=? WHERE id=?", [(now, i) for i in touched])

    def record(self, items: Sequence[tuple[MetricSpec, Dimensions, Samples]], timestamp: float) -> None:
        """Add samples taken by the control plane itself (utilisation), filed at `timestamp`."""
        if not items:
            return
        with self._transaction():
            self._write(items, self._file_time(timestamp))

    def apply_report(
        self,
        proxy_id: str,
        incarnation: str,
        sequence: int,
        timestamp: float,
        items: Sequence[tuple[MetricSpec, Dimensions, Samples]],
    ) -> bool:
        """Add a proxy's report once; False (and nothing changes) when it was applied before."""
        with self._transaction():
            row = self.db.execute("SELECT last_sequence FROM reports WHERE incarnation=?", (incarnation,)).fetchone()
            if row is not None and sequence <= row[0]:
                return False
            self.db.execute(
                "INSERT INTO reports (incarnation, proxy_id, last_sequence, seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (incarnation) DO UPDATE SET last_sequence=excluded.last_sequence, seen=excluded.seen",
                (incarnation, proxy_id, sequence, self._clock()),
            )
            if items:
                self._write(items, self._file_time(timestamp))
        return True

    def _transaction(self):
        return _Transaction(self.db)

    # ------------------------------------------------------------ upkeep

    def compact(self) -> tuple[int, int]:
        """Roll up per-second points past the raw retention into minutes; delete what is past retention.

        Returns (points rolled up, points deleted).
        """
        now = self._clock()
        raw_horizon = int(math.floor((now - self.raw_retention_s) / ROLLUP_RESOLUTION_S) * ROLLUP_RESOLUTION_S)
        horizon = int(now - self.retention_s)
        with self._transaction():
            old = self.db.execute(
                "SELECT series_id, ts, count, sum, min, max, hist FROM points WHERE resolution=? AND ts<?",
                (RAW_RESOLUTION_S, raw_horizon),
            ).fetchall()
            minutes: dict[tuple[int, int], list] = {}
            for series_id, ts, count, total, smallest, largest, hist in old:
                key = (series_id, ts - ts % ROLLUP_RESOLUTION_S)
                entry = minutes.get(key)
                if entry is None:
                    minutes[key] = [count, total, smallest, largest, [hist]]
                else:
                    entry[0] += count
                    entry[1] += total
                    entry[2] = min(entry[2], smallest)
                    entry[3] = max(entry[3], largest)
                    entry[4].append(hist)
            self.db.executemany(
                _UPSERT,
                [
                    (series_id, ROLLUP_RESOLUTION_S, ts, c, s, lo, hi, merge_histograms(h))
                    for (series_id, ts), (c, s, lo, hi, h) in minutes.items()
                ],
            )
            self.db.execute("DELETE FROM points WHERE resolution=? AND ts<?", (RAW_RESOLUTION_S, raw_horizon))
            deleted = self.db.execute("DELETE FROM points WHERE ts<?", (horizon,)).rowcount
            self.db.execute("DELETE FROM reports WHERE seen<?", (horizon,))
        return len(old), deleted

    # ------------------------------------------------------------ reading

    def find_series(self, namespace: str, metric_name: str, dimensions: Iterable[tuple[str, str]]) -> SeriesInfo | None:
        """The series with exactly these dimensions (CloudWatch matches the whole set), or None."""
        row = self.db.execute(
            "SELECT id, namespace, metric_name, dimensions, unit, last_seen FROM series "
            "WHERE namespace=? AND metric_name=? AND dimensions=?",
            (namespace, metric_name, canonical_dimensions(dimensions)),
        ).fetchone()
        return _series(row) if row else None

    def list_series(self, namespace: str = "", metric_name: str = "", active_since: float | None = None) -> list[SeriesInfo]:
        """Every series, filtered by namespace, metric name and last report time, in a stable order."""
        clause, args = where(("namespace=?", namespace), ("metric_name=?", metric_name), ("last_seen>=?", active_since))
        query = f"SELECT id, namespace, metric_name, dimensions, unit, last_seen FROM series{clause} ORDER BY namespace, metric_name, dimensions"
        return [_series(row) for row in self.db.execute(query, args).fetchall()]

    def points(self, series_id: int, start: float, end: float) -> list[Point]:
        """The series' points with start <= ts < end, oldest first (minute and second points)."""
        rows = self.db.execute(
            "SELECT ts, count, sum, min, max, hist FROM points WHERE series_id=? AND ts>=? AND ts<? ORDER BY ts",
            (series_id, int(math.floor(start)), int(math.ceil(end))),
        ).fetchall()
        return [Point(*row) for row in rows]

    def close(self) -> None:
        """Close the database."""
        self.db.close()


def where(*conditions: tuple[str, object]) -> tuple[str, list]:
    """A WHERE clause of the conditions whose value is given (None and "" leave one out), and its values."""
    given = [(sql, value) for sql, value in conditions if value is not None and value != ""]
    if not given:
        return "", []
    return " WHERE " + " AND ".join(sql for sql, _ in given), [value for _, value in given]


def _series(row) -> SeriesInfo:
    series_id, namespace, metric_name, dimensions, unit, last_seen = row
    return SeriesInfo(series_id, namespace, metric_name, tuple(tuple(d) for d in json.loads(dimensions)), unit, last_seen)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
