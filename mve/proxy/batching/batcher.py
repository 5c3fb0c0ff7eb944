"""Dynamic batching of one variant's requests in the proxy.

A `VariantBatcher` queues the ``ModelInferRequest``s sent to one variant, keyed by a
compatibility key (input names, datatypes and trailing shapes, requested outputs, parameters), so
requests that could not share a model call never do. A queue becomes a batch when it holds
``max_batch_size`` rows (first dimension) or when its oldest request has waited ``max_delay_us``;
a request bigger than ``max_batch_size`` goes alone, never split. The batch is ONE ModelInfer on
ONE instance through the same `send` as unbatched traffic (least outstanding requests, retry on
UNAVAILABLE), and each caller gets back exactly its own rows of every output.

At most ``max_batches_in_flight_per_instance`` x instances batches are in flight; while at that
limit the queues keep growing (so batches grow with load) up to ``max_queue_rows`` queued rows,
past which requests are refused with ModelNotReady. A batch that is not full goes only while
fewer batches than instances are in flight (an instance has nothing to do); the slots past one
per instance take full batches only. A model server runs one batch at a time, so a batch sent to
wait behind another is best sent whole (rows that arrive meanwhile join it instead of waiting for
the next), and then it keeps that instance busy from one batch to the next.

Each caller waits with its own deadline. One that is cancelled or times out while queued leaves
the queue; one that leaves after dispatch only has its result dropped. A batch's upstream timeout
is the latest deadline among its members; members already past their deadline at dispatch are
failed and not sent. A failing batch fails exactly its own members.

Time is the event loop's (``loop.time``, ``loop.call_at``): two timers per batcher, none per caller
and no busy loops, so a test drives a batcher exactly with a virtual-time loop. One flushes the
oldest queue when its delay is over; the other is the deadline sweep, due at the earliest deadline
of the callers still waiting (queued or in a batch), which expires every caller past its own and
re-arms itself for the next. Copying rows into a batch and slicing outputs back is
`mve.proxy.batching.assembly` (`_fastroute.assemble_batch` / `split_batch`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

import grpc

from mve.errors import InternalFailure, ModelError, ModelNotReady, MveError, ServiceUnavailable, http_status_of_grpc_code
from mve.proxy.batching.assembly import assemble, batch_parts, split, split_bytes
from mve.proxy.batching.policy import BatchingPolicy
from mve.proxy.batching.queue import KeyQueue, Member
from mve.proxy.transport.upstream import InferResult

log = logging.getLogger(__name__)

Send = Callable[[object, object, float], Awaitable[object]]


class _Expired(Exception):
    """A caller's own deadline passed (set on its future by the batcher's deadline sweep)."""


_NO_QUEUE_TIME = (0.0,)
# The event loop may run a timer up to its clock's resolution early: a caller whose deadline is
# that close has reached it.
_EXPIRY_SLACK_S = time.get_clock_info("monotonic").resolution + 1e-6


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(_Expired())


class VariantBatcher:
    """Queues one variant's requests and sends them in batches (see the module docstring).

    `send(variant, request, timeout)` is the unbatched path (``infer_on_variant``); `bind` points
    the batcher at the variant's state in the current routing table; `stats` (a `StatsBook`)
    receives BatchSize and QueueTime per batch; with `tracer` (tracing on) each caller's span gets
    its batch size and queue time, and a batch carries its members' trace context upstream
    (`mve.proxy.spans`).
    """

    def __init__(self, policy: BatchingPolicy, send: Send, *, stats=None, tracer=None):
        if not policy.enabled:
            raise ValueError("a VariantBatcher needs max_batch_size > 1")
        self.policy = policy
        self._send = send
        self._stats = stats
        self._max_rows = policy.max_batch_size
        self._delay_s = policy.max_delay_us / 1e6
        self.variant = None
        self._queues: dict[tuple, KeyQueue] = {}
        self._queued_rows = 0
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # The callers waiting on a future (queued or in a batch), and the deadline sweep's timer.
        self._waiting: set[Member] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._tracer = tracer
        self._spans = None
        if tracer is not None:
            from mve.proxy import spans

            self._spans = spans

    # ------------------------------------------------------------ state

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet answered."""
        return self._in_flight

    @property
    def queued_rows(self) -> int:
        """Rows waiting in the queues."""
        return self._queued_rows

    @property
    def queued_requests(self) -> int:
        """Requests waiting in the queues."""
        return sum(len(q.members) for q in self._queues.values())

    @property
    def tasks(self) -> frozenset:
        """The batch tasks still running (for tests and shutdown)."""
        return frozenset(self._tasks)

    def bind(self, variant) -> None:
        """Send future batches to `variant` (the same variant in a newer routing table)."""
        self.variant = variant
        if self._queues:
            self._pump()

    def retire(self) -> None:
        """The variant left the table or its batching changed: send everything queued now."""
        self._draining = True
        if self._queues:
            self._pump()

    # ------------------------------------------------------------ callers

    async def submit(self, request, timeout: float, tail: bytes | None = None, wire: bytes | None = None,
                     parts: tuple | None = None):
        """Run `request` (raw contents, for the variant's model) in a batch; its own rows come back.

        Returns what `send` returns, with a response holding only this request's rows: a
        ``ModelInferResponse``, or with `tail` (`wire.response_tail`) that response serialised with
        `tail` appended (`assembly.split_bytes`). `wire`, the request already serialised for the
        variant's model (bytes, or a tuple of byte pieces joined only when needed), is what goes
        upstream if the request ends up alone in its batch (then the answer's bytes are not
        decoded either). `parts`, when the caller read them already (a `ScannedRequest`'s, from
        `_fastroute.scan_batch_parts`), stand for `batch_parts(request)`.
        """
        if parts is None:
            parts = batch_parts(request)
        if parts is None:
            return _with_tail(await self._send(self.variant, request, timeout), tail)
        key, datas, rows = parts
        loop = self._loop = asyncio.get_running_loop()
        if self._queued_rows and self._queued_rows + rows > self.policy.queue_limit:
            raise ModelNotReady(
                f"Variant {self._name()} is over capacity: its batch queue is full ({self._queued_rows} rows "
                f"queued, limit {self.policy.queue_limit}); retry later"
            )
        if not self._queues and not self._delay_s and not self._draining and self._in_flight < self._idle_limit():
            return await self._send_alone(request, rows, timeout, tail, wire)
        now = loop.time()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = KeyQueue(key)
        future = loop.create_future()
        forward = wire if tail is not None else None
        member = Member(request, datas, rows, now + timeout, now, future, queue, tail, forward)
        if self._spans is not None:
            member.span = self._spans.capture()  # its span, or its unsampled trace context
        queue.members[id(member)] = member
        queue.rows += rows
        self._queued_rows += rows
        self._waiting.add(member)
        if member.deadline < self._sweep_at:
            self._arm_sweep(member.deadline)
        self._pump()
        try:
            return await future
        except _Expired:
            if member.queue is not None:
                raise ServiceUnavailable(
                    f"Request to variant {self._name()} timed out after {timeout:.3f} s waiting for a batch"
                ) from None
            raise ModelError.answered(
                http_status_of_grpc_code(grpc.StatusCode.DEADLINE_EXCEEDED), "Deadline Exceeded",
                model=self._model(), variant=self._name(),
                note=f"its batch did not finish within the request's deadline ({timeout:.3f} s)",
            ) from None
        finally:
            self._waiting.discard(member)
            if member.queue is not None:
                self._leave(member)

    async def _send_alone(self, request, rows: int, timeout: float, tail: bytes | None, wire: bytes | None):
        """A batch of one, sent from the caller's own coroutine.

        With MaxDelayMicroseconds 0, nothing queued and an instance free, the request would be a
        batch of one anyway: sending it here (no task, no future, no extra turn of the event loop)
        keeps batching free at low load. Requests that arrive meanwhile queue as usual.
        """
        self._in_flight += 1
        try:
            if self._stats is not None and self.variant is not None:
                self._stats.record_batch(self.variant.endpoint_name, self.variant.name, rows, 1, _NO_QUEUE_TIME)
            if self._spans is not None:
                self._spans.batched_alone(rows)
            forward = _joined(wire) if tail is not None and wire is not None else request
            result = await self._send(self.variant, forward, timeout)
        finally:
            self._in_flight -= 1
            if self._queues:
                self._pump()
        return _with_tail(result, tail)

    def _leave(self, member: Member) -> None:
        """A caller stopped waiting: take its request out of the queue if it is still there."""
        if not member.future.done():
            member.future.cancel()
        queue = member.queue
        if queue is None or queue.members.pop(id(member), None) is None:
            return
        member.queue = None
        queue.rows -= member.rows
        self._queued_rows -= member.rows
        if not queue.members:
            del self._queues[queue.key]
        if self._queues:
            self._pump()  # the oldest request may have changed: re-arm the timer
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------ batches

    def _idle_limit(self) -> int:
        """Batches in flight below which an instance is idle: one per instance."""
        return max(1, len(self.variant.instances) if self.variant is not None else 0)

    def _limit(self) -> int:
        return self._idle_limit() * self.policy.max_batches_in_flight_per_instance

    def _pump(self) -> None:
        """Dispatch every ready batch the in-flight limit allows; arm the timer for the next one."""
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        limit = self._limit()
        while self._in_flight < limit and self._queues:
            queue = self._ready_queue(now, partial=self._in_flight < self._idle_limit())
            if queue is None:
                break
            members = queue.take(self._max_rows)
            if not queue.members:
                del self._queues[queue.key]
            for member in members:
                member.queue = None
                self._queued_rows -= member.rows
            self._dispatch(members, now)
        self._arm_timer()

    def _ready_queue(self, now: float, partial: bool) -> KeyQueue | None:
        """The ready queue whose oldest request waited longest (full, delay over, or draining); with
        `partial` False only a full one (or any, draining)."""
        best = None
        for queue in self._queues.values():
            oldest = queue.oldest()
            ready = self._draining or queue.rows >= self._max_rows or (
                partial and now >= oldest.enqueued_at + self._delay_s)
            if ready and (best is None or oldest.enqueued_at < best.oldest().enqueued_at):
                best = queue
        return best

    def _arm_timer(self) -> None:
        if not self._queues or self._in_flight >= self._idle_limit() or not self._delay_s:
            # Nothing to wait for, or only a full batch (a submit pumps) or a finishing batch may send
            # the next: adaptive batching (delay 0) and every instance busy need no timer.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        due = min(q.oldest().enqueued_at for q in self._queues.values()) + self._delay_s
        if self._timer is not None and self._timer_at == due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _arm_sweep(self, at: float) -> None:
        """Run the deadline sweep at `at` (instead of later)."""
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep_at = at
        self._sweep = self._loop.call_at(at, self._on_sweep)

    def _on_sweep(self) -> None:
        """Expire every waiting caller past its deadline; wait for the earliest of the others.

        A caller's own coroutine then leaves its queue or drops its batch's result, as when it is
        cancelled. The sweep runs at most once per earliest deadline, not once per caller: callers
        answered in time leave `_waiting` without touching it.
        """
        self._sweep = None
        due = self._loop.time() + _EXPIRY_SLACK_S
        earliest = math.inf
        for member in self._waiting:
            deadline = member.deadline
            if deadline <= due:
                _expire(member.future)
            elif deadline < earliest:
                earliest = deadline
        self._sweep_at = earliest
        if earliest != math.inf:
            self._sweep = self._loop.call_at(earliest, self._on_sweep)

    def _dispatch(self, members: list[Member], now: float) -> None:
        live = []
        for member in members:
            if member.future.done():
                continue
            if member.deadline <= now:
                member.future.set_exception(
                    ServiceUnavailable(
                        f"Request to variant {self._name()} reached its deadline before its batch was sent"
                    )
                )
                continue
            live.append(member)
        if not live:
            return
        self._in_flight += 1
        task = self._loop.create_task(self._run(live, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, members: list[Member], dispatched_at: float) -> None:
        try:
            await self._run_batch(members, dispatched_at)
        except asyncio.CancelledError:  # the proxy is shutting down: no more batches
            for member in members:
                _fail(member, ServiceUnavailable(f"The proxy stopped before the batch of variant {self._name()} ran"))
            self._in_flight -= 1
            raise
        self._in_flight -= 1
        self._pump()

    async def _run_batch(self, members: list[Member], dispatched_at: float) -> None:
        """Send one batch and settle each member's future with its rows or the batch's error."""
        try:
            self._record(members, dispatched_at)
            if len(members) == 1:
                request, offsets = _joined(members[0].wire) or members[0].request, None
            else:
                request, offsets = assemble([m.request for m in members], [m.parts for m in members],
                                            rows=[m.rows for m in members])
            timeout = max(m.deadline for m in members) - self._loop.time()
            if self._spans is None:
                result = await self._send(self.variant, request, max(timeout, 0.001))
            else:
                result = await self._spans.send_batch(
                    self._tracer, self._send, self.variant, request, max(timeout, 0.001), members, dispatched_at
                )
            if offsets is None:
                _resolve(members[0], _with_tail(result, members[0].tail))
                return
            self._settle(members, result, offsets)
        except MveError as error:
            for member in members:
                _fail(member, _copy(error))
        except Exception as error:  # noqa: BLE001 - a bug must fail the batch's callers, not hang them
            log.exception("event=batch_failed endpoint=%s variant=%s", *self._names())
            for member in members:
                _fail(member, InternalFailure(f"batch of variant {self._name()} failed: {error}"))

    def _settle(self, members: list[Member], result, offsets) -> None:
        """Each member's own rows: as bytes for members with a tail, as a message for the others."""
        instance, latency = result.instance, result.model_latency_us
        raw = [i for i, m in enumerate(members) if m.tail is not None]
        if raw:
            tail = members[raw[0]].tail
            requests = [m.request for m in members]
            if len(raw) == len(members) and all(m.tail == tail for m in members):
                answers = split_bytes(result.response, offsets, requests, tail, self._model(), self._name())
            else:
                answers = [
                    own.SerializeToString() + m.tail if m.tail is not None else own
                    for m, own in zip(members, split(result.response, offsets, requests, self._model(), self._name()))
                ]
        else:
            answers = split(result.response, offsets, [m.request for m in members], self._model(), self._name())
        for member, answer in zip(members, answers):
            if not member.future.done():
                member.future.set_result(InferResult(answer, instance, latency))

    def _record(self, members: list[Member], dispatched_at: float) -> None:
        if self._stats is None or self.variant is None:
            return
        queue_us = [(dispatched_at - m.enqueued_at) * 1e6 for m in members]
        rows = sum(m.rows for m in members)
        self._stats.record_batch(self.variant.endpoint_name, self.variant.name, rows, len(members), queue_us)

    def _names(self) -> tuple[str, str]:
        if self.variant is None:
            return "", ""
        return self.variant.endpoint_name, self.variant.name

    def _name(self) -> str:
        endpoint, variant = self._names()
        return f"{variant} of endpoint {endpoint}"

    def _model(self) -> str:
        return self.variant.model_name if self.variant is not None else ""


def _joined(wire: bytes | tuple | None) -> bytes | None:
    """A request's serialised bytes, from its pieces when it came as pieces."""
    return b"".join(wire) if type(wire) is tuple else wire


def _with_tail(result, tail: bytes | None):
    """`result` with its response serialised and `tail` appended; as it is without a tail."""
    if tail is None:
        return result
    response = result.response
    if not isinstance(response, bytes):
        response = response.SerializeToString()
    return InferResult(response + tail, result.instance, result.model_latency_us)


def _resolve(member: Member, result) -> None:
    if not member.future.done():
        member.future.set_result(result)


def _fail(member: Member, error: BaseException) -> None:
    if not member.future.done():
        member.future.set_exception(error)


def _copy(error: MveError) -> MveError:
    """A fresh exception per caller, so tracebacks of different callers do not pile up on one."""
    try:
        return type(error)(error.message, reason=error.reason, metadata=error.metadata)
    except TypeError:
        return error
