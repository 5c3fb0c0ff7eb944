"""The data capture writer: a bounded queue of capture records and the one thread that writes them.

`CaptureWriter.submit` runs on the event loop and only appends a `CaptureRecord` (references) to
a queue bounded in records and in bytes; past either bound a record is dropped and counted, never
waited for. One thread turns records into lines (`mve.proxy.capture.record_line`) and appends
them to ``<destination>/<endpoint>/<variant>/YYYY/MM/DD/HH/<MM>-<SS>-<mmm>-<incarnation>.jsonl``:
the hour of the records it holds (UTC), named after its first record's time and the proxy's
incarnation. A file holds one hour at most and at most ``file_max_bytes`` (a single larger record
gets a file of its own). Lines are written whole, with one write per file per flush, at least
every ``flush_interval_s`` and when the writer closes; a file that failed a write is never written
again, so a reader that skips a last line without its newline never reads a broken line.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

from mve.proxy.capture import CaptureRecord, record_line, utc_parts
from mve.proxy.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

IDLE_CLOSE_S = 60.0  # a file not written for this long is closed (a later record starts a new one)
PENDING_WRITE_BYTES = 1 << 20  # lines waiting for one file past this are written before the next flush


class _CaptureFile:
    """The open file of one (destination, endpoint, variant), with the lines waiting to go into it."""

    __slots__ = ("key", "path", "file", "hour", "size", "pending", "pending_bytes", "pending_records", "last_write")

    def __init__(self, key, path: str, file, hour: tuple, now: float):
        self.key = key
        self.path = path
        self.file = file
        self.hour = hour
        self.size = 0  # bytes written and waiting
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.pending_records = 0
        self.last_write = now


def _open_for_append(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return open(path, "ab", buffering=0)


class CaptureWriter:
    """A bounded queue of capture records and the one thread that writes them to files.

    `submit` runs on the event loop: it never blocks and never raises; a record over the queue's
    bounds is dropped and counted in `dropped()`. The thread starts with the first record.
    `close` writes what is queued and flushes; call it once, off the event loop.
    """

    def __init__(
        self,
        *,
        max_records: int = 10_000,
        max_bytes: int = 64 << 20,
        file_max_bytes: int = 64 << 20,
        flush_interval_s: float = 1.0,
        incarnation: str | None = None,
        open_file: Callable[[str], object] = _open_for_append,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.file_max_bytes = file_max_bytes
        self.flush_interval_s = flush_interval_s
        self.incarnation = incarnation or uuid.uuid4().hex[:16]
        self._open_file = open_file
        self._clock = clock
        self._poll_s = min(flush_interval_s, 0.05)
        self._queue: collections.deque[CaptureRecord] = collections.deque()
        # Each count is written by one thread only (queued_*: the loop; taken_*: the writer), so
        # the two threads share no read-modify-write; queued - taken is what waits.
        self._queued_records = self._queued_bytes = 0
        self._taken_records = self._taken_bytes = 0
        self._queue_dropped: dict[tuple[str, str], int] = {}  # the loop's: queue full
        self._write_dropped: dict[tuple[str, str], int] = {}  # the writer's: disk errors, bad records
        self._written: dict[tuple[str, str], int] = {}  # the writer's
        self._files: dict[tuple, _CaptureFile] = {}
        # Per file key: the hour and the names this writer used in it, never appended to again once closed.
        self._names: dict[tuple, tuple[tuple, set[str]]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._loop_log = RateLimitedLog(log)
        self._writer_log = RateLimitedLog(log)

    # ------------------------------------------------------------------ the event loop's side

    def submit(self, record: CaptureRecord) -> bool:
        """Queue `record` for writing; False (dropped, counted) when the queue is full or closed."""
        waiting = self._queued_records - self._taken_records
        if (
            waiting >= self.max_records
            or (waiting and self._queued_bytes - self._taken_bytes + record.size > self.max_bytes)
            or self._closed
        ):
            key = (record.endpoint, record.variant)
            self._queue_dropped[key] = self._queue_dropped.get(key, 0) + 1
            self._loop_log.warning(
                "capture_dropped", "endpoint=%s variant=%s reason=%s queued_records=%d",
                record.endpoint, record.variant, "closed" if self._closed else "queue_full", waiting,
            )
            return False
        self._queued_records += 1
        self._queued_bytes += record.size
        self._queue.append(record)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mve-capture-writer", daemon=True)
            self._thread.start()
        return True

    @property
    def queued(self) -> int:
        """Records waiting for the writer."""
        return self._queued_records - self._taken_records

    def written(self) -> dict[tuple[str, str], int]:
        """(endpoint, variant) -> records written to files since the start."""
        return self._written.copy()

    def dropped(self) -> dict[tuple[str, str], int]:
        """(endpoint, variant) -> records dropped since the start (queue full, closed, or a failed write)."""
        out = self._queue_dropped.copy()
        for key, count in self._write_dropped.copy().items():
            out[key] = out.get(key, 0) + count
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking records, write and flush every queued one, close the files (blocks: not on the loop)."""
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("event=capture_close_timeout queued=%d", self.queued)

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        last_flush = self._clock()
        stopping = False
        while not stopping:
            stopping = self._stop.wait(self._poll_s)
            try:
                self._write_queued()
                now = self._clock()
                if stopping:
                    self._write_queued()  # anything a last submit slipped in
                    for state in list(self._files.values()):
                        self._close(state)
                elif now - last_flush >= self.flush_interval_s:
                    self._flush_all(now)
                    last_flush = now
            except Exception:  # noqa: BLE001 - the writer must survive anything; records are counted
                log.exception("event=capture_writer_failed")

    def _write_queued(self) -> None:
        queue = self._queue
        while queue:
            record = queue.popleft()
            self._taken_records += 1
            self._taken_bytes += record.size
            self._add(record)

    def _add(self, record: CaptureRecord) -> None:
        key = (record.endpoint, record.variant)
        try:
            line = record_line(record)
        except Exception as error:  # noqa: BLE001 - e.g. a shadow's answer that cannot be encoded
            self._drop(key, 1, "capture_record_failed", error)
            return
        state = self._file_for(record, len(line))
        if state is None:
            self._drop(key, 1, "capture_write_failed", "could not open a capture file")
            return
        state.pending.append(line)
        state.pending_bytes += len(line)
        state.pending_records += 1
        state.size += len(line)
        if state.pending_bytes >= PENDING_WRITE_BYTES:
            self._write_pending(state)

    def _file_for(self, record: CaptureRecord, line_bytes: int) -> _CaptureFile | None:
        """The file this record's line goes to: the current one, or a new one past an hour or the size."""
        key = (record.policy.destination, record.endpoint, record.variant)
        utc, ms = utc_parts(record.time)
        hour = utc[:4]
        state = self._files.get(key)
        if state is not None and (state.hour != hour or (state.size and state.size + line_bytes > self.file_max_bytes)):
            self._close(state)
            state = None
        if state is None:
            state = self._open(key, record, hour)
        return state

    def _open(self, key, record: CaptureRecord, hour: tuple) -> _CaptureFile | None:
        used_hour, used = self._names.get(key, (None, set()))
        if used_hour != hour:
            used = set()
            self._names[key] = (hour, used)
        when = record.time
        while True:
            utc, ms = utc_parts(when)
            name = f"{utc.tm_min:02d}-{utc.tm_sec:02d}-{ms:03d}-{self.incarnation}.jsonl"
            if name not in used:
                break
            when += 0.001  # a file of that name was closed (full, or failed): take the next millisecond's
        used.add(name)
        path = os.path.join(
            key[0], record.endpoint, record.variant, f"{hour[0]:04d}", f"{hour[1]:02d}", f"{hour[2]:02d}",
            f"{hour[3]:02d}", name,
        )
        try:
            file = self._open_file(path)
        except OSError as error:
            self._writer_log.warning(
                "capture_write_failed", "endpoint=%s variant=%s path=%s error=%r",
                record.endpoint, record.variant, path, str(error),
            )
            return None
        state = self._files[key] = _CaptureFile(key, path, file, hour, self._clock())
        return state

    def _write_pending(self, state: _CaptureFile) -> bool:
        """Write the file's waiting lines in one write; on failure they are dropped and the file retired."""
        if not state.pending:
            return True
        data = b"".join(state.pending)
        records = state.pending_records
        state.pending.clear()
        state.pending_bytes = state.pending_records = 0
        key = state.key[1:]
        try:
            view = memoryview(data)
            while view:
                written = state.file.write(view)
                if not written:
                    raise OSError("the capture file took no bytes")
                view = view[written:]
        except (OSError, ValueError) as error:
            self._drop(key, records, "capture_write_failed", error, path=state.path)
            self._discard(state)
            return False
        self._written[key] = self._written.get(key, 0) + records
        state.last_write = self._clock()
        return True

    def _flush_all(self, now: float) -> None:
        """Write every file's waiting lines; close the files nothing was written to for IDLE_CLOSE_S."""
        for state in list(self._files.values()):
            if self._write_pending(state) and now - state.last_write > IDLE_CLOSE_S:
                self._discard(state)

    def _close(self, state: _CaptureFile) -> None:
        if self._write_pending(state):
            self._discard(state)

    def _discard(self, state: _CaptureFile) -> None:
        """Forget the file (it is never appended to again) and close it."""
        if self._files.get(state.key) is state:
            del self._files[state.key]
        try:
            state.file.close()
        except OSError as error:
            self._writer_log.warning("capture_close_failed", "path=%s error=%r", state.path, str(error))

    def _drop(self, key: tuple[str, str], records: int, kind: str, error, path: str = "") -> None:
        self._write_dropped[key] = self._write_dropped.get(key, 0) + records
        self._writer_log.warning(
            kind, "endpoint=%s variant=%s records=%d path=%s error=%r", key[0], key[1], records, path or "-", str(error)
        )


__all__ = ["CaptureWriter"]
