"""The capture index: the control plane tails the proxies' capture files into ``experiments.db``.

Every `interval` the index reads what was appended to the capture files of each endpoint whose
DataCaptureConfig enables capture (``<destination>/<endpoint>/<variant>/YYYY/MM/DD/HH/*.jsonl``;
the variant is the path component) and keeps one row per record:

    captured(endpoint, variant, inference_id, time, rows, labels, scores, outputs)

`labels` and `scores` are the default choices of GetExperimentReport (the output "label", else the
first integer output; "probabilities" column 1, else a single-column float output) as JSON lists,
so that a default report and the bandit read no model output at all; `outputs` keeps every output
of the record compactly (`capture_records.pack_outputs`, at most `MAX_OUTPUTS_BYTES`), so that a
report that names other outputs or another positive label still works.

Reading is exactly once: each file's offset (with its inode) is written in the same transaction
as the rows read from it, so a restarted control plane goes on where it stopped. Files only grow
by whole lines; a last line without its newline is left for the next pass. A line that is not a
capture record is counted (per endpoint and variant) and skipped, never fatal.

The files are read on the index's own thread, never on the event loop. A pass lists the current
and previous hour's directories; every `FULL_SCAN_S` it walks every directory (late files, files
of other hours), forgets files that are gone, and deletes rows and feedback past the retention.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlparse

from mve.control.capture_records import (
    CapturedInvocation,
    MalformedRecord,
    pack_outputs,
    parse_line,
    positive_scores,
    predicted_labels,
)
from mve.control.experiments_db import ExperimentsDb

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
FULL_SCAN_S = 60.0
MAX_READ_BYTES = 16 << 20  # per file per read; a longer line is read whole
MAX_OUTPUTS_BYTES = 64 << 10  # larger outputs keep their default label and score only
CAPTURE_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class CaptureTarget:
    """An endpoint that captures, and the directory its proxies write to (``<destination>/<endpoint>``)."""

    endpoint: str
    directory: Path


def capture_directory(destination_uri: str, endpoint: str) -> Path:
    """``<destination>/<endpoint>`` of a DestinationS3Uri that is a local path or a file:// URI."""
    text = destination_uri.strip()
    if "://" in text:
        text = unquote(urlparse(text).path)
    return Path(os.path.abspath(text)) / endpoint


@dataclass
class ScanResult:
    """What one pass did."""

    files_read: int = 0
    records: int = 0
    malformed: int = 0
    by_variant: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass
class _FileState:
    offset: int
    inode: int


class CaptureIndex:
    """Tails capture files into the `captured` table; `scan` is one pass (on the index thread)."""

    def __init__(self, db: ExperimentsDb, *, retention_s: float | None = None, clock: Callable[[], float] = time.time):
        self.db = db
        self.retention_s = retention_s
        self._clock = clock
        self._files: dict[str, _FileState] | None = None  # loaded on the index thread's first pass
        self._last_full_scan = -float("inf")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mve-capture-index")

    # ------------------------------------------------------------ one pass

    def scan(self, targets: Iterable[CaptureTarget], *, full: bool | None = None) -> ScanResult:
        """Read what was appended to the targets' capture files since the last pass."""
        now = self._clock()
        if self._files is None:
            rows = self.db.connection().execute("SELECT path, offset, inode FROM capture_files").fetchall()
            self._files = {path: _FileState(offset, inode) for path, offset, inode in rows}
        if full is None:
            full = now - self._last_full_scan >= FULL_SCAN_S
        result = ScanResult()
        seen: set[str] = set()
        for target in targets:
            for variant, path in self._capture_files(target.directory, now, full):
                seen.add(str(path))
                self._read_file(target.endpoint, variant, path, result)
        if full:
            self._last_full_scan = now
            self._forget_missing(seen, targets)
            self.expire(now)
        return result

    def _capture_files(self, directory: Path, now: float, full: bool) -> Iterable[tuple[str, Path]]:
        try:
            variants = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
        except OSError:
            return  # nothing captured yet (or the directory is not reachable from here)
        for variant in variants:
            base = directory / variant
            if full:
                for root, _dirs, names in os.walk(base):
                    for name in sorted(names):
                        if name.endswith(CAPTURE_SUFFIX):
                            yield variant, Path(root) / name
                continue
            for hour_start in (now - 3600, now):
                hour = time.gmtime(hour_start)
                folder = base / f"{hour.tm_year:04d}" / f"{hour.tm_mon:02d}" / f"{hour.tm_mday:02d}" / f"{hour.tm_hour:02d}"
                try:
                    names = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(CAPTURE_SUFFIX))
                except OSError:
                    continue
                for name in names:
                    yield variant, folder / name

    def _read_file(self, endpoint: str, variant: str, path: Path, result: ScanResult) -> None:
        """Index the whole lines appended to `path`, `MAX_READ_BYTES` at a time (one transaction each)."""
        key = str(path)
        try:
            stat = path.stat()
        except OSError:
            return
        state = self._files.get(key)
        if state is None or state.inode != stat.st_ino or stat.st_size < state.offset:
            state = _FileState(0, stat.st_ino)  # new, replaced or truncated: from the start
        read = False
        while state.offset < stat.st_size:
            if not self._read_chunk(endpoint, variant, path, state, stat.st_size, result):
                break  # an incomplete last line (or a read error): next pass
            state, read = self._files[key], True
        result.files_read += read

    def _read_chunk(self, endpoint: str, variant: str, path: Path, state: _FileState, size: int, result: ScanResult) -> int:
        try:
            with open(path, "rb") as file:
                file.seek(state.offset)
                data = file.read(min(size - state.offset, MAX_READ_BYTES))
                if b"\n" not in data and size - state.offset > MAX_READ_BYTES:
                    data += file.read(size - state.offset - len(data))  # one very long line
        except OSError as error:
            log.warning("event=capture_read_failed endpoint=%s variant=%s path=%s error=%r", endpoint, variant, path, str(error))
            return 0
        end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
        if end == 0:
            return 0
        rows, malformed, problem = [], 0, ""
        for line in data[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                rows.append(_row(endpoint, variant, parse_line(line)))
            except MalformedRecord as error:
                malformed += 1
                problem = str(error)
        new_state = _FileState(state.offset + end, state.inode)
        with self.db.transaction() as db:
            db.executemany(
                "INSERT INTO captured (endpoint, variant, inference_id, time, rows, labels, scores, outputs) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute(
                "INSERT INTO capture_files (path, endpoint, variant, offset, inode, seen) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET offset=excluded.offset, inode=excluded.inode, seen=excluded.seen",
                (str(path), endpoint, variant, new_state.offset, new_state.inode, self._clock()),
            )
            if malformed:
                db.execute(
                    "INSERT INTO capture_errors (endpoint, variant, malformed, last_error) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (endpoint, variant) DO UPDATE SET malformed=malformed+excluded.malformed, "
                    "last_error=excluded.last_error",
                    (endpoint, variant, malformed, problem),
                )
        self._files[str(path)] = new_state
        if malformed:
            log.warning(
                "event=capture_lines_malformed endpoint=%s variant=%s path=%s lines=%d error=%r",
                endpoint, variant, path, malformed, problem,
            )
        result.records += len(rows)
        result.malformed += malformed
        result.by_variant[endpoint, variant] = result.by_variant.get((endpoint, variant), 0) + len(rows)
        return end

    # ------------------------------------------------------------ upkeep

    def _forget_missing(self, seen: set[str], targets: Iterable[CaptureTarget]) -> None:
        """Offsets of files under a target's directory that no longer exist are dropped."""
        prefixes = tuple(str(t.directory) + os.sep for t in targets)
        gone = [path for path in self._files if path not in seen and path.startswith(prefixes) and not os.path.exists(path)]
        if gone:
            with self.db.transaction() as db:
                db.executemany("DELETE FROM capture_files WHERE path=?", [(p,) for p in gone])
            for path in gone:
                del self._files[path]

    def expire(self, now: float | None = None) -> tuple[int, int]:
        """Delete captured rows and feedback older than the retention; (rows, feedback) deleted."""
        if self.retention_s is None:
            return 0, 0
        horizon = (self._clock() if now is None else now) - self.retention_s
        with self.db.transaction() as db:
            rows = db.execute("DELETE FROM captured WHERE time<?", (horizon,)).rowcount
            feedback = db.execute("DELETE FROM feedback WHERE received<?", (horizon,)).rowcount
        return rows, feedback

    # ------------------------------------------------------------ the loop

    async def run_forever(self, interval_s: float, targets: Callable[[], list[CaptureTarget]]) -> None:
        """Every `interval_s`, read new capture lines on the index thread until cancelled.

        `targets` is called on the event loop (it reads the control plane's store); the files are
        read on the index's own thread.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            try:
                await loop.run_in_executor(self._executor, self.scan, targets())
            except Exception:  # noqa: BLE001 - indexing goes on next time; the error is logged
                log.exception("event=capture_index_failed")

    async def catch_up(self, targets: list[CaptureTarget]) -> ScanResult:
        """One pass now, on the index thread (a report can ask for the newest records)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.scan, targets)

    def close(self) -> None:
        """Stop the index thread (after the pass in progress, if any)."""
        self._executor.shutdown(wait=True)


def _row(endpoint: str, variant: str, invocation: CapturedInvocation) -> tuple:
    outputs = invocation.outputs
    labels = predicted_labels(outputs)
    scores = positive_scores(outputs)
    packed = pack_outputs(outputs) if outputs else None
    if packed is not None and len(packed) > MAX_OUTPUTS_BYTES:
        packed = None
    return (
        endpoint,
        variant,
        invocation.inference_id,
        invocation.time,
        invocation.rows,
        json.dumps(labels) if labels is not None else None,
        json.dumps(scores) if scores is not None else None,
        packed,
    )


def malformed_counts(db: ExperimentsDb, endpoint: str) -> dict[str, tuple[int, str]]:
    """variant -> (lines skipped as malformed, the last error) for one endpoint."""
    rows = db.connection().execute(
        "SELECT variant, malformed, last_error FROM capture_errors WHERE endpoint=?", (endpoint,)
    ).fetchall()
    return {variant: (count, error) for variant, count, error in rows}
