"""Shadow variants: copies of sampled requests sent after the caller's answer, measured, never returned.

The data plane draws each shadow against its sampling fraction once the caller's answer is ready
and hands a sampled request to the `ShadowSender`. The sender starts the shadow's call as an
asyncio task nobody awaits, so the caller's coroutine returns at once; at most `max_in_flight`
shadow calls run per proxy, and a request past that is dropped and counted
(``mve_shadow_dropped_total``), never queued. A shadow's call goes to one of its instances with
the proxy's model timeout, and its result is counted in the `StatsBook` under the shadow's own
VariantName (Invocations, errors, ModelLatency, OverheadLatency), exactly as a production
variant's. A slow, failing or dead shadow costs the caller nothing: its failures are counted and
logged (at most one line per kind every 10 s), never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import MveError
from mve.proxy.ratelimit import RateLimitedLog
from mve.proxy.routing.router import VariantState
from mve.proxy.stats import StatsBook
from mve.proxy.transport import wire

log = logging.getLogger(__name__)

# Request parameters that steer the endpoint's pick; a shadow's model never sees them batched.
ROUTING_PARAMS = ("target_variant", "routing_key")


class ShadowSender:
    """Runs shadow calls as tasks the caller never awaits: bounded, measured, never failing anyone.

    `send(variant, request, timeout)` is the data plane's upstream call (`infer_on_variant`):
    it takes serialised bytes or a ``ModelInferRequest`` and returns an ``InferResult``.
    """

    def __init__(self, send, stats: StatsBook, *, max_in_flight: int = 256, timeout_s: float = 60.0, tracer=None):
        self._send = send
        # Tracing on: each copy of a sampled call is a CLIENT span in its trace (`spans.shadow_call`).
        self._tracer = tracer
        self._spans = None
        if tracer is not None:
            from mve.proxy import spans

            self._spans = spans
        self._stats = stats
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self._tasks: set[asyncio.Task] = set()
        self._dropped: dict[tuple[str, str], int] = {}
        self._log = RateLimitedLog(log)

    @property
    def in_flight(self) -> int:
        """Shadow calls running now."""
        return len(self._tasks)

    def dropped(self) -> dict[tuple[str, str], int]:
        """(endpoint, shadow variant) -> requests not sent because `max_in_flight` were running."""
        return self._dropped.copy()

    def submit(self, shadow: VariantState, call: Callable[..., Awaitable[None]], *args) -> bool:
        """Start ``call(*args)`` as a task for `shadow`; False (dropped, counted) when the sender is full.

        The coroutine is made only when there is room, so a dropped request costs no allocation
        beyond its count.
        """
        if len(self._tasks) >= self.max_in_flight:
            key = (shadow.endpoint_name, shadow.name)
            self._dropped[key] = self._dropped.get(key, 0) + 1
            self._log.warning(
                "shadow_dropped", "endpoint=%s variant=%s reason=max_in_flight in_flight=%d",
                shadow.endpoint_name, shadow.name, len(self._tasks),
            )
            return False
        task = asyncio.get_running_loop().create_task(call(*args))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug: calls catch their own failures
            error = task.exception()
            self._log.warning("shadow_task_failed", "error=%s message=%r", type(error).__name__, str(error)[:200])

    async def call(self, shadow: VariantState, request, inference_id: str):
        """Send `request` (bytes or a message in raw contents, for any model) to the shadow; count it.

        Returns the ``InferResult``, or None when the shadow failed (counted as its error).
        """
        if self._spans is None:
            return await self._measured(shadow, request, inference_id)
        with self._spans.shadow_call(self._tracer, shadow) as span:
            result = await self._measured(shadow, request, inference_id)
            if span is not None:
                if result is None:
                    self._spans.failed(span, "the shadow's call failed (counted in its errors)")
                else:
                    self._spans.answered(result)
            return result

    async def _measured(self, shadow: VariantState, request, inference_id: str):
        started = time.perf_counter()
        try:
            result = await self._run(shadow, request, inference_id)
        except MveError as error:
            self._stats.record_error(shadow.endpoint_name, shadow.name, error, len(shadow.instances))
            self._log.warning(
                "shadow_failed", "endpoint=%s variant=%s reason=%s message=%r",
                shadow.endpoint_name, shadow.name, error.reason, error.message[:200],
            )
            return None
        except Exception as error:  # noqa: BLE001 - a shadow must never take anything down
            self._stats.record_error(shadow.endpoint_name, shadow.name, error, len(shadow.instances))
            self._log.warning(
                "shadow_failed", "endpoint=%s variant=%s reason=%s message=%r",
                shadow.endpoint_name, shadow.name, type(error).__name__, str(error)[:200],
            )
            return None
        total_us = (time.perf_counter() - started) * 1e6
        self._stats.record_success(
            shadow.endpoint_name, shadow.name, result.model_latency_us, max(total_us - result.model_latency_us, 0.0),
            len(shadow.instances),
        )
        return result

    async def _run(self, shadow: VariantState, request, inference_id: str):
        """The request re-targeted to the shadow's model, sent straight or through its batcher."""
        if shadow.batcher is None:
            data = request if isinstance(request, bytes) else request.SerializeToString()
            # Appended fields win over earlier ones: the shadow's model, and the invocation's id.
            tail = wire.request_tail(shadow.model_name) + wire.id_field(inference_id)
            return await self._send(shadow, data + tail, self.timeout_s)
        message = pb.ModelInferRequest()
        if isinstance(request, bytes):
            message.ParseFromString(request)
        else:
            message.CopyFrom(request)
        message.model_name = shadow.model_name
        message.model_version = ""
        message.id = inference_id
        for name in ROUTING_PARAMS:
            if name in message.parameters:
                del message.parameters[name]
        return await shadow.batcher.submit(message, self.timeout_s)

    async def close(self, timeout: float) -> None:
        """Let running shadow calls finish for up to `timeout` seconds, then cancel the rest."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if pending:
            log.info("event=shadow_calls_cancelled count=%d", len(pending))


__all__ = ["ShadowSender"]
