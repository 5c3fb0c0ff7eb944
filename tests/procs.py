"""Start real mve processes for integration tests, and always stop them.

Every mve server started with ``--port 0`` prints one JSON line on stdout when it is ready:
``{"event": "ready", "service": "<name>", "address": "127.0.0.1:PORT", "pid": N}``.
`start_service` waits for that line and returns a `Service`; `Service.stop` sends SIGTERM,
waits, then SIGKILLs.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Service:
    """A running mve process and what it printed."""

    process: subprocess.Popen
    address: str
    ready: dict
    output: list[str] = field(default_factory=list)
    _terminated: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM, once, without waiting (`stop` then waits): a teardown signals every service first,
        so that they shut down side by side instead of one after the other."""
        if self.process.poll() is None and not self._terminated:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (unless `terminate` sent it), wait up to `timeout`, then SIGKILL; returns the exit code.

        Whatever the process left behind in its process group (model servers it started)
        is killed too, so that no test leaves a process running.
        """
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.kill_group()
        return self.process.returncode

    def kill_group(self) -> None:
        """SIGKILL everything left in the process group this service was started in."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL this process only, at once (a crash, as far as everyone else can tell)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _pump(stream, lines: list[str], ready: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.append(line)
        text = line.strip()
        if text.startswith("{") and '"ready"' in text:
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if event.get("event") == "ready":
                ready.put(event)
    ready.put(None)


# Tests run many proxies and control planes side by side: their Prometheus exporters and the proxies'
# HTTP doors take free ports unless a test says otherwise (the defaults, 9464, 9465 and 8081, would collide).
# Proxies stop without a drain period unless a test asks for one (it would add a second to every stop).
TEST_ENV = {
    "MVE_PROXY_METRICS_PORT": "0", "MVE_CONTROL_PLANE_METRICS_PORT": "0", "MVE_PROXY_HTTP_PORT": "0", "MVE_PROXY_DRAIN_S": "0",
    "MVE_CONTROL_PLANE_HTTP_PORT": "0",  # the control plane's HTTP face (default 7071)
}


def start_service(args: list[str], timeout: float = 60.0, env: dict | None = None) -> Service:
    """Run ``python -m mve *args`` and wait for its ready line (raises with its output if none)."""
    full_env = {**TEST_ENV, **os.environ}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    process = subprocess.Popen(
        [sys.executable, "-m", "mve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    lines: list[str] = []
    ready: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines, ready), daemon=True).start()
    deadline = time.monotonic() + timeout
    event = None
    while time.monotonic() < deadline:
        try:
            event = ready.get(timeout=0.1)
            break
        except queue.Empty:
            if process.poll() is not None and ready.empty():
                time.sleep(0.2)
                break
    if not event:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        raise RuntimeError(f"mve {' '.join(args)} did not become ready; output:\n{''.join(lines)}")
    return Service(process=process, address=event["address"], ready=event, output=lines)


def run_mve(args: list[str], timeout: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m mve *args`` to completion and capture its output."""
    full_env = {**TEST_ENV, **os.environ}
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "mve", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
