"""One supervised child process of the mesh: started, announced by its ready line, stopped.

`Child` runs ``python -m mve <service>`` in its own process group, reads the JSON ready line from
its stdout and forwards the rest of its output to a log. It never restarts itself; `mve.mesh.Mesh`
decides that.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("mve.mesh")


class MeshError(RuntimeError):
    """The mesh could not start, or a child kept crashing."""


def _die_with_parent() -> None:
    # Runs in the child before exec: ask Linux to SIGTERM it when the supervising thread dies.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """One supervised ``python -m mve <service>`` process and the port it listens on."""

    def __init__(self, name: str, make_args, port: int, log_stream, env: dict):
        self.name = name
        self._make_args = make_args
        self.port = port
        self.address = ""
        self.ready_event: dict = {}  # the child's last ready line
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.started_at = 0.0
        self.ready = False
        # Process groups of earlier runs: a restarted control plane adopts the model servers left
        # in them, so they are only killed when the whole mesh stops.
        self.old_groups: list[int] = []
        self._log = log_stream
        self._env = env

    def start(self, timeout: float) -> str:
        """Start the process and wait up to `timeout` s for its ready line; return its address."""
        self.ready = False
        command = [sys.executable, "-m", "mve", *self._make_args(self.port)]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=self._env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.started_at = time.monotonic()
        ready: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.process.stdout, ready), daemon=True).start()
        try:
            event = ready.get(timeout=timeout)
            output_ended = event is None
        except queue.Empty:
            event, output_ended = None, False
        if not event:
            try:
                # Its output ended: give the exiting process a moment to report its code.
                code = self.process.wait(2.0 if output_ended else 0.1)
            except subprocess.TimeoutExpired:
                code = None
            _terminate(self.process, grace_s=2.0, groups=(self.process.pid,))
            state = f"exited with code {code}" if code is not None else f"not ready after {timeout:g} s"
            raise MeshError(f"{self.name} {state}; see its log output")
        self.address = event["address"]
        self.ready_event = event
        self.port = int(self.address.rsplit(":", 1)[1])
        self.ready = True
        log.info("event=child_ready child=%s address=%s pid=%d", self.name, self.address, self.process.pid)
        return self.address

    def _pump(self, stream, ready: queue.Queue) -> None:
        announced = False
        for line in iter(stream.readline, ""):
            if not announced and line.startswith("{") and '"ready"' in line:
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {}
                if event.get("event") == "ready":
                    announced = True
                    ready.put(event)
                    continue
            # Only the mesh's own ready line belongs on our stdout; the children's output goes to the log.
            try:
                self._log_write(f"[{self.name}] {line}")
            except (ValueError, OSError):
                pass
        ready.put(None)

    def _log_write(self, text: str) -> None:
        target = self._log if self._log not in (None, subprocess.DEVNULL) else sys.stderr
        if hasattr(target, "write"):
            target.write(text)
            target.flush()

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.process is not None and self.process.poll() is None

    def reap(self) -> None:
        """Collect an exited process, leaving what it started running (to be adopted)."""
        if self.process is not None:
            self.process.wait()
            self.old_groups.append(self.process.pid)

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM, wait `grace_s`, SIGKILL; then SIGKILL whatever is left in its process groups."""
        if self.process is None:
            return None
        return _terminate(self.process, grace_s, groups=(*self.old_groups, self.process.pid))


def _terminate(process: subprocess.Popen, grace_s: float, groups) -> int | None:
    """SIGTERM `process`, SIGKILL it after `grace_s`, then SIGKILL what is left in `groups`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("event=child_kill pid=%d grace_s=%g", process.pid, grace_s)
            process.kill()
            process.wait(5)
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return process.returncode
