"""Type stub for mve._h2client, the optional native gRPC client (see mve/_h2client.pyx)."""

MAX_MESSAGE_BYTES: int

Metadata = tuple[tuple[str, str | bytes], ...]
Completion = tuple[int, int, str, bytes | None, Metadata]

class H2Client:
    """A unary gRPC client on libnghttp2 client sessions and one epoll loop with the GIL released.

    ``start()`` runs the loop on a thread of its own; ``call()`` hands a call in, ``take()`` hands
    every finished call out when ``notify_fd`` is readable. ``stop()`` finishes calls in flight
    with CANCELLED and joins.
    """

    def __init__(self, *, max_message_bytes: int = ...) -> None: ...
    def start(self) -> None:
        """Run the loop on a new thread (named ``h2-client``). Once."""
    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop and join it; calls in flight or queued finish with CANCELLED."""
    def call(
        self, address: str, path: bytes, message: bytes | bytearray | memoryview, timeout_s: float,
        metadata: tuple[tuple[str | bytes, str | bytes], ...] = (), *, wake: bool = True,
    ) -> int:
        """Send a unary call to ``address`` ("host:port"); return its id (never reused)."""
    def wake(self) -> None:
        """Wake the loop for calls handed in with ``wake=False``."""
    def cancel(self, call_id: int) -> bool:
        """Cancel a call not yet taken (RST_STREAM CANCEL); it is never delivered by ``take()``."""
    def close_address(self, address: str) -> None:
        """Retire the connection to ``address`` once its calls finish."""
    def poll(self, events: bool = True) -> list[Completion]:
        """Inline mode: one turn of the loop on this thread, without waiting; what finished."""
    def fileno(self) -> int:
        """The loop's epoll fd: readable when a turn of ``poll()`` has work (inline mode)."""
    def take(self) -> list[Completion]:
        """Every finished call: ``(call_id, grpc_status, message, reply or None, trailing_metadata)``."""
    @property
    def notify_fd(self) -> int:
        """An eventfd that is readable while finished calls wait for ``take()``."""
    @property
    def stats(self) -> dict[str, int]:
        """calls, completed, errors, connections (opened), open_connections, wakeups, notifies, refused."""
