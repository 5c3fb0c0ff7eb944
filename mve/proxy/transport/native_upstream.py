"""Calls to model servers on the native gRPC client (`mve._h2client`, docs/transport.md).

`NativeUpstream` is the asyncio face of `H2Client`: ``unary()`` hands the call's bytes to the
client's own epoll loop and awaits a future. Both ways go in bulk: the calls made in one turn of
this event loop wake the client's loop once, at the end of the turn, and its answers come back
with one ``take()`` per wake-up of this event loop (``loop.add_reader`` on the client's eventfd),
however many calls finished. An error comes back as the `grpc.aio.AioRpcError` a grpc.aio channel would
raise (code, details, trailing metadata with ``grpc-status-details-bin`` as bytes), so callers map
errors as they do for grpc.aio. Cancelling the awaiting task resets the call's stream. Plaintext
only (h2c): model servers under TLS stay on grpc.aio channels.
"""

from __future__ import annotations

import asyncio

import grpc

MODEL_INFER = b"/inference.GRPCInferenceService/ModelInfer"

_CODES = {code.value[0]: code for code in grpc.StatusCode}

try:
    from mve._h2client import H2Client
except ImportError:  # built without libnghttp2's headers
    H2Client = None


def available() -> bool:
    """Whether the native client was built (libnghttp2-dev was there at build time)."""
    return H2Client is not None


class NativeUpstream:
    """Unary calls on `H2Client`, awaited from one asyncio event loop.

    `threaded` (default): the client's loop runs on a thread of its own; calls are handed over
    through a queue and an eventfd each way. ``threaded=False``: the client's sockets are driven
    from this event loop's thread (`H2Client.poll` on the client's epoll fd, and once at the end
    of each turn in which calls were made): no second thread and no wake-ups between threads,
    which on a small machine cost more than the calls themselves (docs/transport.md).

    `max_message_bytes` bounds a reply (RESOURCE_EXHAUSTED beyond it), as the grpc.aio channels'
    ``grpc.max_receive_message_length`` does.
    """

    def __init__(self, *, threaded: bool = True, max_message_bytes: int = 64 * 1024 * 1024):
        if H2Client is None:
            raise RuntimeError("mve._h2client is not built: libnghttp2-dev is missing (sudo apt-get install "
                               "libnghttp2-dev, then rebuild)")
        self.client = H2Client(max_message_bytes=max_message_bytes)
        self.threaded = threaded
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._wake_scheduled = False

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the client and take its answers on `loop` (default: the running one)."""
        self._loop = loop or asyncio.get_running_loop()
        if self.threaded:
            self.client.start()
            self._loop.add_reader(self.client.notify_fd, self._drain)
        else:
            self._loop.add_reader(self.client.fileno(), self._turn)

    def _drain(self) -> None:
        self._resolve(self.client.take())

    def _turn(self) -> None:
        self._resolve(self.client.poll())

    def _send(self) -> None:
        self._wake_scheduled = False
        self._resolve(self.client.poll(events=False))

    def _resolve(self, finished: list) -> None:
        pending = self._pending
        for call_id, status, message, reply, trailers in finished:
            future = pending.pop(call_id, None)
            if future is None or future.done():
                continue
            if status == 0:
                future.set_result(reply)
            else:
                future.set_exception(grpc.aio.AioRpcError(
                    _CODES.get(status, grpc.StatusCode.UNKNOWN), initial_metadata=grpc.aio.Metadata(),
                    trailing_metadata=grpc.aio.Metadata(*trailers), details=message,
                ))

    async def unary(self, address: str, body: bytes, timeout: float, metadata=None,
                    path: bytes = MODEL_INFER) -> bytes:
        """Call `path` (default ModelInfer) on `address` with the serialised request `body`; the
        reply's bytes, or `grpc.aio.AioRpcError`. `metadata`: (name, value) pairs or None."""
        call_id = self.client.call(address, path, body, timeout, tuple(metadata) if metadata else (), wake=False)
        if not self._wake_scheduled:
            # the calls of this turn of the event loop wake the client's loop once, at its end
            self._wake_scheduled = True
            self._loop.call_soon(self._wake if self.threaded else self._send)
        future = self._loop.create_future()
        self._pending[call_id] = future
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(call_id, None) is not None:
                self.client.cancel(call_id)
            raise

    def _wake(self) -> None:
        self._wake_scheduled = False
        self.client.wake()

    def close_address(self, address: str) -> None:
        """Retire the connection to `address` once its calls finish (the table removed it)."""
        self.client.close_address(address)

    def close(self) -> None:
        """Stop the client: calls still waiting fail with CANCELLED, and its thread is joined."""
        if self._loop is not None:
            self._loop.remove_reader(self.client.notify_fd if self.threaded else self.client.fileno())
        self.client.stop()
        if self._loop is not None:
            self._resolve(self.client.take())
        for future in self._pending.values():
            if not future.done():
                future.set_exception(grpc.aio.AioRpcError(
                    grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                    details="the client was stopped",
                ))
        self._pending.clear()

    @property
    def stats(self) -> dict[str, int]:
        """The client's counters (`H2Client.stats`)."""
        return self.client.stats
