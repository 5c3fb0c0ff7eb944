"""The WatchRoutes subscriber: keeps the proxy's routing table in step with the control plane.

Each table the stream sends is applied whole by `Router.apply`; the upstream channels then follow
the table's addresses. When the stream breaks or the control plane is away, the proxy keeps
serving on the last table and resubscribes with exponential backoff (0.1 s doubling to 2 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from mve._proto import control_pb2
from mve.proxy.routing.router import Router
from mve.proxy.transport.upstream import UpstreamPool

log = logging.getLogger(__name__)

_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class RouteWatcher:
    """Subscribes to ``EndpointControl.WatchRoutes`` and applies every table it receives."""

    def __init__(
        self,
        stub,
        router: Router,
        pool: UpstreamPool,
        proxy_id: str,
        *,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 2.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self._stub = stub
        self._router = router
        self._pool = pool
        self._proxy_id = proxy_id
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._sleep = sleep
        self.tables_received = 0

    def apply(self, table) -> bool:
        """Apply one table to the router and open/close upstream channels to match it (TLS ones
        when the table says ``upstream_tls``)."""
        self.tables_received += 1
        applied = self._router.apply(table)
        if applied:
            self._pool.sync(self._router.state.addresses(), upstream_tls=table.upstream_tls)
        return applied

    async def run(self) -> None:
        """Subscribe, apply tables, and resubscribe with backoff whenever the stream ends."""
        backoff = self._backoff_min_s
        was_refused = False
        while True:
            try:
                call = self._stub.WatchRoutes(control_pb2.WatchRoutesRequest(proxy_id=self._proxy_id))
                async for table in call:
                    backoff = self._backoff_min_s
                    try:
                        self.apply(table)
                    except Exception:  # noqa: BLE001 - a bad table must not end the subscription
                        log.exception("event=routes_apply_failed version=%d", table.version)
                log.info("event=watch_routes_ended")
            except grpc.aio.AioRpcError as error:
                refused = error.code() in _REFUSED
                # A refusal is an operator's mistake: said loudly once, then quietly while it lasts.
                log.log(
                    logging.ERROR if refused and not was_refused else logging.INFO,
                    "event=watch_routes_failed code=%s message=%r retry_in_s=%.2f%s",
                    error.code().name, error.details(), backoff,
                    " hint='the control plane refused this proxy: check --control-plane-token-file or --tls-cert'"
                    if refused else "",
                )
                was_refused = refused
            await self._sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max_s)
