"""Type stub for mve._h2transport, the optional native HTTP/2 transport (see mve/_h2transport.pyx)."""

MAX_MESSAGE_BYTES: int
MAX_BUFFERED_BYTES: int
HANDSHAKE_TIMEOUT_S: int
NGHTTP2_VERSION: str
EVENT_REQUEST: int
EVENT_OPEN: int
EVENT_MESSAGE: int
EVENT_HALF_CLOSE: int
EVENT_CANCEL: int

Metadata = tuple[tuple[str, str | bytes], ...]
Event = tuple[int, int, int | str | None, bytes | None, float | None, Metadata]

class H2Server:
    """A gRPC server on libnghttp2 and one epoll loop that runs with the GIL released.

    Binds ``host:port`` at once (port 0: a free one, see ``port``). Add canned answers and unary
    paths, then call ``serve_forever()`` in one thread; ``stop()`` from any thread or a signal
    handler ends it. Requests for Python come out of ``take()`` when ``events_fd`` is readable.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, max_message_bytes: int = ..., backlog: int = 1024,
        forward_others: bool = False, reuse_port: bool = False, max_buffered_bytes: int = ...,
        handshake_timeout_s: float = ...,
        inline: bool = False,
    ) -> None: ...
    @property
    def port(self) -> int:
        """The bound TCP port."""
    def add_canned(
        self,
        path: str | bytes,
        reply: bytes | bytearray | memoryview | None = None,
        *,
        status: int = 0,
        message: str = "",
        details: bytes = b"",
    ) -> None:
        """Answer ``path`` from C with ``reply`` (status 0) or with a gRPC error; before serve_forever."""
    def add_unary(self, path: str | bytes) -> int:
        """Hand complete unary requests on ``path`` to Python; returns its method index."""
    @property
    def events_fd(self) -> int:
        """An eventfd readable while events wait in ``take()``."""
    def take(self) -> list[Event]:
        """Every waiting event: (kind, token, method index or path, message, timeout_s, metadata)."""
    def reply(self, token: int, message: bytes | bytearray | memoryview) -> None:
        """Answer a unary request with ``message`` and status 0."""
    def fail(self, token: int, status: int, message: str = "", details: bytes = b"") -> None:
        """End a stream with a gRPC error."""
    def send(self, token: int, message: bytes | bytearray | memoryview) -> None:
        """Send one message on a stream."""
    def finish(self, token: int, status: int = 0, message: str = "", details: bytes = b"") -> None:
        """End a stream with ``status`` after its messages."""
    def shutdown(self) -> None:
        """Begin the drain: stop accepting, GOAWAY; open streams finish."""
    def serve_forever(self) -> None:
        """Serve on this thread, GIL released, until ``stop()``; then GOAWAY and close. Serves once."""
    def stop(self) -> None:
        """End ``serve_forever`` (any thread, or a signal handler); inline, end it now."""
    def poll(self, events: bool = True) -> list[Event]:
        """Inline mode: one turn of the loop on this thread; what it handed to Python."""
    def fileno(self) -> int:
        """The loop's epoll fd (inline mode)."""
    @property
    def stats(self) -> dict[str, int]:
        """connections, open_connections, requests, errors, resets, handed_off, deadline_exceeded,
        deadlines_watched, handshake_timeouts, buffered_bytes."""
