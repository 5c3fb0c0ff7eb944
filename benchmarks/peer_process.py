"""What the benchmark's load-balancer peers (nginx, Envoy) share: a child process that must listen
on a loopback port before the first cell, and that is always stopped."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Callable


class PeerProcess:
    """A peer run as a child process with its files in a temp dir; `start` is the peer's own."""

    name = "peer"
    process: subprocess.Popen | None
    address: str
    _dir: tempfile.TemporaryDirectory

    def start(self, timeout: float = 10.0) -> str:
        raise NotImplementedError

    def _wait_listening(self, port: int, timeout: float, exited: Callable[[], str]) -> str:
        """Wait until 127.0.0.1:`port` accepts a connection; RuntimeError with `exited()` if the
        process ends first, or after `timeout` seconds (the process is stopped then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(exited())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                self.address = f"127.0.0.1:{port}"
                return self.address
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on 127.0.0.1:{port} within {timeout} s")

    def stop(self) -> None:
        """Stop the process (SIGTERM; SIGKILL after 5 s) and remove the temp dir."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._dir.cleanup()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
