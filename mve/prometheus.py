"""Prometheus text over HTTP for the proxy and the control plane (see docs/observability.md).

Each service registers one custom collector on its own ``CollectorRegistry`` (never the global
one) and serves it with ``prometheus_client.start_http_server``: a daemon thread, so a scrape never
blocks the event loop. The collectors read state the event loop owns (dicts it mutates, a SQLite
connection that belongs to its thread), so a scrape hands its read to the loop with `loop_reader`
and waits for the answer: every read sees a consistent state, taken between two callbacks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import start_http_server
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a scrape waits for the event loop to take its snapshot before it fails (HTTP 500).
READ_TIMEOUT_S = 5.0

WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def loop_reader(loop: asyncio.AbstractEventLoop, timeout_s: float = READ_TIMEOUT_S) -> Callable[[Callable[[], T]], T]:
    """A function that runs ``fn()`` on `loop`'s thread and returns its result (or raises its error).

    Called on the loop's own thread it runs ``fn`` at once; from another thread it schedules ``fn``
    with ``call_soon_threadsafe`` and waits at most `timeout_s` (TimeoutError after that).
    """

    def read(fn: Callable[[], T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return fn()
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as error:  # noqa: BLE001 - handed to the waiting scrape
                future.set_exception(error)

        loop.call_soon_threadsafe(run)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"the event loop did not answer a metrics read within {timeout_s:g} s") from None

    return read


def direct_read(fn: Callable[[], T]) -> T:
    """The reader for state with no owning loop (tests): just call ``fn``."""
    return fn()


def dialable_host(host: str) -> str:
    """A wildcard bind announced as loopback, an address a client on this machine can dial."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


class MetricsServer:
    """One collector on its own registry, served as Prometheus text on ``http://HOST:PORT/metrics``."""

    def __init__(self, collector: Collector, service: str):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.service = service
        self.address = ""
        self._httpd: Any = None
        self._thread: Any = None

    def start(self, host: str, port: int) -> str:
        """Bind and serve on a daemon thread; returns the dialable ``host:port`` (OSError if it cannot bind)."""
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise OSError(f"cannot bind the metrics port {host}:{port}: {error.strerror or error}") from None
        bound = self._httpd.server_address[1]
        self.address = f"{dialable_host(host)}:{bound}"
        log.info("event=metrics_serving service=%s address=%s path=/metrics", self.service, self.address)
        return self.address

    def stop(self) -> None:
        """Stop serving and close the socket (a scrape in progress may still finish); safe twice."""
        if self._httpd is None:
            return
        httpd, self._httpd = self._httpd, None
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        log.info("event=metrics_stopped service=%s address=%s", self.service, self.address)
