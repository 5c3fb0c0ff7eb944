"""Type stub for mve._h2transport, the optional native HTTP/2 transport (see mve/_h2transport.pyx)."""

MAX_MESSAGE_BYTES: int
NGHTTP2_VERSION: str

class H2Server:
    """A unary gRPC server on libnghttp2 and one epoll loop that runs with the GIL released.

    Binds ``host:port`` at once (port 0: a free one, see ``port``). Add canned answers, then call
    ``serve_forever()`` in one thread; ``stop()`` from any thread or a signal handler ends it.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, max_message_bytes: int = ..., backlog: int = 1024
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
    def serve_forever(self) -> None:
        """Serve on this thread, GIL released, until ``stop()``; then GOAWAY and close. Serves once."""
    def stop(self) -> None:
        """End ``serve_forever`` (any thread, or a signal handler)."""
    @property
    def stats(self) -> dict[str, int]:
        """connections, open_connections, requests, errors, resets."""
