"""``mve proxy --workers N``: N proxy processes on one port, and a small parent that keeps them.

The multi-core path of the proxy. Each worker is an ordinary ``mve proxy`` with the parent's flags
and its own proxy id (``<proxy id>-w<i>``: its stats identity and WatchRoutes subscription) and
Prometheus port; all bind the same gRPC port and HTTP door with SO_REUSEPORT, and the kernel hands
each new connection to one of them. It balances connections, not requests: every request of one
HTTP/2 connection goes to the worker that accepted it.

The parent's one job: start the workers (worker 0 first when a port is 0, so that the others take
the port it bound), print one ready line once all serve, restart a worker that exits on its own
(after 0.5 s, 1 s, 2 s, ... at most 10 s; after `MAX_RESTARTS` in a row, a worker that stays up a
minute earning its count back, it stops them all and exits 1, as ``mve up`` does with its
children), and on SIGTERM or SIGINT pass SIGTERM to every worker, which drains as a proxy does,
and exit 0 once all have exited cleanly. Workers are in the parent's process group and are told by
Linux to stop (SIGTERM) if the parent dies.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from mve.proxy.settings import HTTP_OFF, ProxySettings
from mve.ready import announce_ready
from mve.supervise import _die_with_parent  # the mesh's children die with it the same way

log = logging.getLogger(__name__)

RESTART_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
MAX_RESTARTS = 5  # restarts of one worker in a row before the parent gives up
STABLE_S = 60.0  # a worker up this long starts its count of restarts again
READY_TIMEOUT_S = 60.0
POLL_S = 0.1


class WorkersFailed(RuntimeError):
    """A worker could not start, or kept exiting."""


@dataclass
class Worker:
    """One worker: what makes it distinct, and its current process."""

    index: int
    proxy_id: str
    metrics_port: int  # the flag it is started with; after its first start, the port it bound
    process: subprocess.Popen | None = None
    ready: dict = field(default_factory=dict)  # its current process's ready line, {} until then
    restarts: int = 0  # in a row
    started_at: float = 0.0
    restart_at: float | None = None  # set while it waits to be started again
    ready_queue: queue.Queue | None = None  # its current process's ready line, or None when its output ends

    def describe(self) -> dict:
        """The worker as the parent's ready line lists it."""
        return {
            "worker": self.index, "pid": self.process.pid if self.process else None, "proxy_id": self.proxy_id,
            "metrics_address": self.ready.get("metrics_address", ""),
        }


class WorkerPool:
    """Starts, watches, restarts and stops the workers of one ``mve proxy --workers N``."""

    def __init__(self, settings: ProxySettings, flags: list[str], *, parent_pid: int, clock=time.monotonic):
        self.settings = settings
        self._flags = flags
        self._clock = clock
        self.workers = [
            Worker(i, settings.worker_proxy_id(i, parent_pid), settings.worker_metrics_port(i))
            for i in range(settings.workers)
        ]
        self.port = settings.port
        self.http_port = settings.http_port
        self._stopping = False
        self._ready_timeout = READY_TIMEOUT_S

    # -- start -----------------------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT_S) -> dict:
        """Start every worker and wait until all are ready; returns the fields of the ready line."""
        s = self.settings
        for port, what in ((s.port, "--port"), (s.http_port if s.http_enabled else 0, "--http-port")):
            if port:
                _check_free(s.host, port, what)
        self._ready_timeout = timeout
        deadline = self._clock() + timeout
        first = self.workers[0]
        if s.port == 0 or s.http_port == 0:
            # Worker 0 picks the free ports; the others are started on the ports it bound.
            self._spawn(first)
            self._wait_ready(first, deadline)
            self.port = _port_of(first.ready["address"])
            self.http_port = _port_of(first.ready["http_address"]) if s.http_enabled else HTTP_OFF
            later = self.workers[1:]
        else:
            later = self.workers
        for worker in later:
            self._spawn(worker)
        for worker in later:
            self._wait_ready(worker, deadline)
        log.info(
            "event=workers_started workers=%d address=%s pids=%s", len(self.workers), first.ready["address"],
            ",".join(str(w.process.pid) for w in self.workers),
        )
        return {
            "address": first.ready["address"],
            "http_address": first.ready.get("http_address", ""),
            "metrics_address": first.ready.get("metrics_address", ""),
            "transport": first.ready.get("transport", ""),
            "workers": [worker.describe() for worker in self.workers],
        }

    def _command(self, worker: Worker) -> list[str]:
        return [
            sys.executable, "-m", "mve", "proxy", *self._flags, "--workers=1", f"--worker-index={worker.index}",
            f"--proxy-id={worker.proxy_id}", f"--port={self.port}", f"--http-port={self.http_port}",
            f"--metrics-port={worker.metrics_port}",
        ]

    def _spawn(self, worker: Worker) -> None:
        # Always from the main thread: PR_SET_PDEATHSIG fires when the thread that started the child ends.
        worker.ready = {}
        worker.process = subprocess.Popen(
            self._command(worker), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        worker.started_at = self._clock()
        worker.ready_queue = queue.Queue()
        threading.Thread(
            target=self._pump, args=(worker, worker.process, worker.ready_queue), daemon=True,
            name=f"worker-{worker.index}-stdout",
        ).start()

    def _pump(self, worker: Worker, process: subprocess.Popen, ready: queue.Queue) -> None:
        """Read a worker's stdout: its ready line is the parent's to read; anything else goes to stderr,
        as only the parent's own ready line belongs on the parent's stdout."""
        announced = False
        for line in iter(process.stdout.readline, ""):
            if not announced and line.startswith("{") and '"ready"' in line:
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {}
                if event.get("event") == "ready":
                    announced = True
                    if worker.process is process:
                        worker.ready = event
                        if worker.metrics_port == 0 and event.get("metrics_address"):
                            worker.metrics_port = _port_of(event["metrics_address"])  # the same one after a restart
                    log.info(
                        "event=worker_ready worker=%d pid=%d proxy_id=%s metrics_address=%s restarts=%d",
                        worker.index, process.pid, worker.proxy_id, event.get("metrics_address", ""), worker.restarts,
                    )
                    ready.put(event)
                    continue
            sys.stderr.write(line)
            sys.stderr.flush()
        ready.put(None)

    def _wait_ready(self, worker: Worker, deadline: float) -> None:
        while True:
            try:
                event = worker.ready_queue.get(timeout=min(POLL_S, max(0.0, deadline - self._clock())))
                break
            except queue.Empty:
                if self._stopping:
                    raise WorkersFailed("stopped while the workers were starting") from None
                if self._clock() >= deadline:
                    raise WorkersFailed(
                        f"worker {worker.index} (pid {worker.process.pid}) not ready after {self._ready_timeout:g} s"
                    ) from None
        if event is None:
            code = _exit_code(worker.process, wait_s=2.0)
            raise WorkersFailed(f"worker {worker.index} exited with code {code} before it was ready; see its output")

    # -- watch -----------------------------------------------------------------------------------

    def request_stop(self, *_) -> None:
        """Ask `start` and `watch` to return (the SIGTERM and SIGINT handler); safe in a signal handler."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._stopping

    def watch(self) -> None:
        """Restart workers that exit until `request_stop`; WorkersFailed when one exits too often."""
        while not self._stopping:
            now = self._clock()
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is not None and not self._stopping:
                    self._exited(worker, now)
                if worker.restart_at is not None and now >= worker.restart_at and not self._stopping:
                    worker.restart_at = None
                    log.info("event=worker_restarting worker=%d proxy_id=%s restarts=%d",
                             worker.index, worker.proxy_id, worker.restarts)
                    self._spawn(worker)
            time.sleep(POLL_S)

    def _exited(self, worker: Worker, now: float) -> None:
        code, pid = worker.process.returncode, worker.process.pid
        worker.process = None
        if now - worker.started_at >= STABLE_S:
            worker.restarts = 0
        if worker.restarts >= MAX_RESTARTS:
            log.error("event=worker_gave_up worker=%d pid=%d code=%s restarts=%d", worker.index, pid, code,
                      worker.restarts)
            raise WorkersFailed(f"worker {worker.index} exited {worker.restarts + 1} times in a row (last code {code})")
        delay = RESTART_DELAYS_S[min(worker.restarts, len(RESTART_DELAYS_S) - 1)]
        worker.restarts += 1
        worker.restart_at = now + delay
        log.warning("event=worker_exited worker=%d pid=%d code=%s restart_in_s=%g restarts=%d",
                    worker.index, pid, code, delay, worker.restarts)

    # -- stop ------------------------------------------------------------------------------------

    def stop(self, grace_s: float) -> bool:
        """SIGTERM every worker (each drains as a proxy does), SIGKILL one still running after
        `grace_s`; True when every worker exited with code 0."""
        self._stopping = True
        running = [w.process for w in self.workers if w.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = self._clock() + grace_s
        clean = True
        for process in running:
            code = _exit_code(process, wait_s=max(0.0, deadline - self._clock()))
            if code is None:
                log.warning("event=worker_kill pid=%d grace_s=%g", process.pid, grace_s)
                process.kill()
                code = process.wait(5)
            clean = clean and code == 0
        return clean


def run_workers(settings: ProxySettings, flags: list[str]) -> int:
    """``mve proxy --workers N``: run the workers until SIGTERM or SIGINT; the exit code."""
    pool = WorkerPool(settings, flags, parent_pid=os.getpid())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, pool.request_stop)
    # A worker drains (--drain-seconds), lets calls finish (grace) and then shadow calls (grace
    # again), and sends its last stats (2 s at most): past all that and a margin, it is killed.
    grace_s = settings.drain_s + 2 * settings.grace_s + 10.0
    try:
        ready = pool.start()
    except (WorkersFailed, OSError) as error:
        asked = pool.stopping  # SIGTERM or SIGINT while starting: a stop, not a failure
        clean = pool.stop(grace_s)
        if asked:
            return 0 if clean else 1
        print(f"mve proxy: error: {error}", file=sys.stderr)
        return 1
    announce_ready("proxy", ready.pop("address"), **ready)
    try:
        pool.watch()
    except WorkersFailed as error:
        pool.stop(grace_s)
        print(f"mve proxy: error: {error}", file=sys.stderr)
        return 1
    log.info("event=workers_stopping workers=%d", settings.workers)
    clean = pool.stop(grace_s)
    log.info("event=workers_stopped clean=%s", clean)
    return 0 if clean else 1


def _check_free(host: str, port: int, what: str) -> None:
    """OSError unless `port` can be bound on `host` without SO_REUSEPORT: the workers share their
    ports with SO_REUSEPORT, which would let them join another group already on it."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise OSError(f"cannot bind {what} {host}:{port}: {error}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no owner
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    continue  # e.g. no IPv6 here: the worker's own bind says what it must
                raise OSError(f"cannot bind {what} {host}:{port}: {error.strerror or error}") from None


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _exit_code(process: subprocess.Popen, wait_s: float) -> int | None:
    try:
        return process.wait(wait_s)
    except subprocess.TimeoutExpired:
        return None
