"""The proxy's gRPC door on the native HTTP/2 transport (`mve._h2transport`, docs/transport.md).

`NativeDoor` serves the proxy's address from the extension's epoll loop, run inline on this
event loop's thread (the loop's epoll fd is watched with ``add_reader``; each readiness runs one
turn, ``poll()``): the two hot methods, ``inference.GRPCInferenceService/ModelInfer`` and
``mve.v1.EndpointRuntime/InvokeEndpoint``, come whole and in bulk (every request a turn read, in
one list) and go to the same `DataPlane` calls the grpc.aio servicers make; the answers given in
one turn of this event loop are written in one native turn at its end. No second thread and no
wake-ups between threads, which on a small machine cost more than the calls themselves (the
native client's figures in docs/transport.md); every other method (health, reflection, model
metadata, the other Open Inference Protocol methods) is passed on, message by message, to the
proxy's grpc.aio server on a loopback port of its own, so that clients see one address and every
method behaves as it does on grpc.aio.

What the grpc.aio door does on a call, this door does too: the caller's deadline bounds the call
(the native loop answers DEADLINE_EXCEEDED at the deadline and the call's task is cancelled), a
client's cancel cancels the task, errors are SageMaker Runtime's with their ErrorInfo, invocation
tokens are checked before the request is decoded, and the SERVER span joins the caller's trace.
It serves plaintext HTTP/2 only: a door with TLS runs on grpc.aio (`ProxySettings.transport`).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf.message import DecodeError

from mve._proto import runtime_pb2
from mve.authn import Gatekeeper
from mve.errors import RUNTIME, InternalFailure, MveError, ValidationError, to_status
from mve.proxy.dataplane import DataPlane
from mve.proxy.transport.grpc_servicers import (
    INFERENCE_SERVICE,
    RUNTIME_SERVICE,
    invoke_request,
    invoke_response,
    server_span,
)

log = logging.getLogger(__name__)

MODEL_INFER = f"/{INFERENCE_SERVICE}/ModelInfer"
INVOKE_ENDPOINT = f"/{RUNTIME_SERVICE}/InvokeEndpoint"
DETAILS_KEY = "grpc-status-details-bin"
# As the grpc.aio door's grpc.max_receive_message_length: a request over the 6 MB body limit still
# arrives whole, so that the data plane refuses it with a message naming the limit.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
_END = object()  # the caller's side of a forwarded stream is done
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
DEADLINE_SLACK_S = 0.005
# The kinds of mve._h2transport's events (its EVENT_* constants, checked in tests/unit/test_h2transport_handoff.py).
EVENT_REQUEST, EVENT_OPEN, EVENT_MESSAGE, EVENT_HALF_CLOSE, EVENT_CANCEL = 1, 2, 3, 4, 5


class CallContext:
    """What the data plane and the tracing read of a call's grpc context, for a native call."""

    __slots__ = ("_metadata", "_peer")

    def __init__(self, metadata: tuple, peer: str = "native"):
        self._metadata = metadata
        self._peer = peer

    def invocation_metadata(self) -> tuple:
        """The caller's metadata, as grpc gives it."""
        return self._metadata

    def peer(self) -> str:
        """Where the call came from (the native loop does not say: its transport's name)."""
        return self._peer

    def auth_context(self) -> dict:
        """No TLS on this door: no peer identity."""
        return {}


def status_of(error: BaseException) -> tuple[int, str, bytes]:
    """(gRPC code, message, details bytes) for `error`, named as SageMaker Runtime names it.

    Anything that is not an `MveError` is logged and answered as InternalFailure without its internals.
    """
    if not isinstance(error, MveError):
        log.error("unhandled error in the native door", exc_info=error)
        error = InternalFailure(f"internal failure: {type(error).__name__}")
    status = to_status(error, RUNTIME)
    details = next((value for key, value in status.trailing_metadata if key == DETAILS_KEY), b"")
    return status.code.value[0], status.details, details


class NativeDoor:
    """The proxy's gRPC address on the native transport, in front of `dataplane`.

    `forward_to` is the ``host:port`` of the proxy's grpc.aio server that answers every other
    method; `gatekeeper` checks invocation tokens (None: no check, as on grpc.aio).
    """

    def __init__(
        self, dataplane: DataPlane, forward_to: str, *, host: str, port: int, gatekeeper: Gatekeeper | None = None,
        reuse_port: bool = False, channel_options=(),
    ):
        from mve._h2transport import H2Server

        self._dataplane = dataplane
        self._gatekeeper = gatekeeper
        self._server = H2Server(
            host, port, max_message_bytes=MAX_MESSAGE_BYTES, forward_others=True, reuse_port=reuse_port, inline=True
        )
        self._model_infer = self._server.add_unary(MODEL_INFER)
        self._invoke = self._server.add_unary(INVOKE_ENDPOINT)
        self._forward_to = forward_to
        self._channel_options = list(channel_options)
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[int, asyncio.Task] = {}
        self._streams: dict[int, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self.port = self._server.port

    @property
    def stats(self) -> dict[str, int]:
        """The native loop's counters (connections, requests, errors, resets, handed_off, deadline_exceeded)."""
        return self._server.stats

    def start(self) -> None:
        """Serve: a turn of the native loop whenever its epoll fd is readable on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._channel = grpc.aio.insecure_channel(self._forward_to, options=self._channel_options)
        self._loop.add_reader(self._server.fileno(), self._turn)

    def _turn(self) -> None:
        self._dispatch(self._server.poll())

    def _answered(self) -> None:
        """An answer was given: the native loop writes it, with the others of this turn of the event
        loop, in one turn at its end."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._dispatch(self._server.poll(events=False))

    def _dispatch(self, events: list) -> None:
        if not events:
            return
        loop = self._loop
        now = loop.time()
        for kind, token, method, message, timeout, metadata in events:
            if kind == EVENT_REQUEST:
                if self._gatekeeper is not None:
                    path = MODEL_INFER if method == self._model_infer else INVOKE_ENDPOINT
                    error = self._gatekeeper.check(path, metadata, CallContext(metadata))
                    if error is not None:
                        self._server.fail(token, *status_of(error))
                        self._answered()
                        continue
                if method == self._model_infer:
                    call = self._model_infer_call(token, message, timeout, metadata, now)
                else:
                    call = self._invoke_call(token, message, timeout, metadata, now)
                self._calls[token] = loop.create_task(call)
            elif kind == EVENT_CANCEL:
                task = self._calls.pop(token, None)
                if task is not None:
                    task.cancel()
                self._streams.pop(token, None)
            elif kind == EVENT_MESSAGE:
                queue = self._streams.get(token)
                if queue is not None:
                    queue.put_nowait(message)
            elif kind == EVENT_HALF_CLOSE:
                queue = self._streams.get(token)
                if queue is not None:
                    queue.put_nowait(_END)
            elif kind == EVENT_OPEN:
                queue = self._streams[token] = asyncio.Queue()
                self._calls[token] = loop.create_task(self._forward(token, method, queue, timeout, metadata))

    async def _model_infer_call(
        self, token: int, message: bytes, timeout: float | None, metadata: tuple, taken: float
    ) -> None:
        # Each call takes itself out of `_calls` when it ends: cheaper than a done callback per task.
        dataplane = self._dataplane
        try:
            if dataplane.tracer is not None:
                with server_span(dataplane, INFERENCE_SERVICE, "ModelInfer", CallContext(metadata)):
                    answer = await dataplane.model_infer_bytes(message, timeout)
            else:
                answer = await dataplane.model_infer_bytes(message, timeout)
        except asyncio.CancelledError:
            self._calls.pop(token, None)
            raise
        except Exception as error:  # noqa: BLE001 - the last line of defence: answer, don't crash
            self._calls.pop(token, None)
            self._fail(token, error, timeout, taken)
            return
        self._calls.pop(token, None)
        self._server.reply(token, answer)
        self._answered()

    async def _invoke_call(
        self, token: int, message: bytes, timeout: float | None, metadata: tuple, taken: float
    ) -> None:
        try:
            await self._invoke_endpoint(token, message, timeout, metadata, taken)
        finally:
            self._calls.pop(token, None)

    async def _invoke_endpoint(
        self, token: int, message: bytes, timeout: float | None, metadata: tuple, taken: float
    ) -> None:
        dataplane = self._dataplane
        try:
            try:
                request = runtime_pb2.InvokeEndpointRequest.FromString(message)
            except DecodeError:
                raise ValidationError(
                    f"the request ({len(message)} bytes) is not a valid mve.v1.InvokeEndpointRequest"
                ) from None
            invoke = dataplane.invoke_endpoint(invoke_request(request), timeout)
            if dataplane.tracer is not None:
                with server_span(dataplane, RUNTIME_SERVICE, "InvokeEndpoint", CallContext(metadata)):
                    result = await invoke
            else:
                result = await invoke
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001
            self._fail(token, error, timeout, taken)
            return
        self._server.reply(token, invoke_response(result).SerializeToString())
        self._answered()

    def _fail(self, token: int, error: Exception, timeout: float | None, taken: float) -> None:
        """Answer `error`; DEADLINE_EXCEEDED when the caller's deadline has come. The upstream call
        ends at the caller's deadline too, and on its own clock it may end a moment before the
        loop's: the caller then sees its deadline, as on grpc.aio, not the model's 504."""
        if timeout is not None and self._loop.time() >= taken + timeout - DEADLINE_SLACK_S:
            self._server.fail(token, DEADLINE_EXCEEDED, "Deadline Exceeded")
        else:
            self._server.fail(token, *status_of(error))
        self._answered()

    async def _forward(self, token: int, path: str, queue: asyncio.Queue, timeout: float | None, metadata) -> None:
        """Pass one call on to the grpc.aio server as a stream of bytes (on the wire every gRPC
        method is one), its answers and final status back."""
        server = self._server

        async def requests():
            while True:
                message = await queue.get()
                if message is _END:
                    return
                yield message

        call = self._channel.stream_stream(path, request_serializer=None, response_deserializer=None)(
            requests(), timeout=timeout, metadata=metadata or None
        )
        try:
            async for answer in call:
                server.send(token, answer)
                self._answered()
            code = await call.code()
            details = await call.details()
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as error:
            code, details, trailing = error.code(), error.details(), error.trailing_metadata()
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            self._streams.pop(token, None)
            self._calls.pop(token, None)
        binary = b""
        for key, value in trailing or ():
            if key == DETAILS_KEY:
                binary = value
        server.finish(token, code.value[0], details or "", binary)
        self._answered()

    async def stop(self, grace: float | None) -> None:
        """Stop taking calls (GOAWAY, no new connections), let those in flight finish for `grace`
        seconds, cancel the rest, let the answers written drain out (each connection closes once
        its streams are done), then close the loop and the forwarding channel."""
        loop = asyncio.get_running_loop()
        until = loop.time() + (grace if grace is not None else 3600.0)
        self._server.shutdown()
        self._answered()
        in_flight = len(self._calls)
        if self._calls:
            await asyncio.wait(list(self._calls.values()), timeout=grace)
        cancelled = len(self._calls)
        for task in list(self._calls.values()):
            task.cancel()
        if self._calls:
            await asyncio.wait(list(self._calls.values()), timeout=1.0)
        # The answers are in the loop's hands; a large one takes several writes to a slow reader.
        while self._server.stats["open_connections"] and loop.time() < until:
            await asyncio.sleep(0.01)
        if self._loop is not None:
            self._loop.remove_reader(self._server.fileno())
        self._server.stop()
        self._server.take()     # the cancels of calls still open: their tasks were cancelled above
        log.info("event=native_door_stopped calls_in_flight=%d cancelled_after_grace=%d", in_flight, cancelled)
        if self._channel is not None:
            await self._channel.close()
