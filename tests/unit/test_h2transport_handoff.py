"""mve._h2transport handing requests to Python (unary paths, forwarded streams) against a real grpc client.

A Python answerer thread plays the proxy's part: it waits on ``events_fd``, takes every event in
one call and answers with reply/fail/send/finish. Skipped only where the extension was not built.
"""

from __future__ import annotations

import os
import select
import threading
import time

import grpc
import pytest

h2 = pytest.importorskip(
    "mve._h2transport", reason="mve._h2transport not built: libnghttp2-dev is missing (sudo apt-get install libnghttp2-dev)"
)

ECHO = "/test.Echo/Reverse"
FAIL = "/test.Echo/Fail"
SILENT = "/test.Echo/Silent"
STREAM = "/test.Echo/Stream"


class Answerer:
    """An H2Server on one thread and, on another, Python answering what it hands over."""

    def __init__(self, **server_options):
        self.server = h2.H2Server("127.0.0.1", 0, forward_others=True, **server_options)
        self.echo = self.server.add_unary(ECHO)
        self.fail = self.server.add_unary(FAIL)
        self.silent = self.server.add_unary(SILENT)
        self.events: list[tuple] = []
        self.wakeups = 0
        self.done = threading.Event()
        self.serving = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.answering = threading.Thread(target=self._answer, daemon=True)
        self.serving.start()
        self.answering.start()
        self.target = f"127.0.0.1:{self.server.port}"

    def _answer(self):
        fd = self.server.events_fd
        while not self.done.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            self.wakeups += 1
            for event in self.server.take():
                self.events.append(event)
                kind, token, method, message, timeout, metadata = event
                if kind == h2.EVENT_REQUEST and method == self.echo:
                    self.server.reply(token, message[::-1] + repr(dict(metadata)).encode())
                elif kind == h2.EVENT_REQUEST and method == self.fail:
                    self.server.fail(token, 9, "not now: état 100%", b"\x08\x09details")
                elif kind == h2.EVENT_OPEN and method == STREAM:
                    self.server.send(token, b"opened")
                elif kind == h2.EVENT_OPEN:
                    self.server.fail(token, 12, f"no method {method}")
                elif kind == h2.EVENT_MESSAGE:
                    self.server.send(token, message.upper())
                elif kind == h2.EVENT_HALF_CLOSE:
                    self.server.finish(token, 0)

    def kinds(self, kind):
        return [e for e in self.events if e[0] == kind]

    def stop(self):
        self.done.set()
        self.answering.join(5)
        self.server.stop()
        self.serving.join(5)
        assert not self.serving.is_alive()


@pytest.fixture
def answerer():
    served = Answerer()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def channel(answerer):
    with grpc.insecure_channel(answerer.target) as chan:
        yield chan


def test_a_unary_request_reaches_python_with_its_metadata_and_deadline(answerer, channel):
    echo = channel.unary_unary(ECHO)
    answer = echo(b"abc", timeout=5, metadata=(("authorization", "Bearer x"), ("trace-bin", b"\x00\x01")))
    assert answer.startswith(b"cba")
    assert b"'authorization': 'Bearer x'" in answer and b"'trace-bin': b'\\x00\\x01'" in answer
    (request,) = answerer.kinds(h2.EVENT_REQUEST)
    # The caller's deadline, as seconds left: grpc-core rounds the grpc-timeout it sends up (seen: 5.01 s for 5).
    assert 0 < request[4] <= 5.05
    assert all(not name.startswith(("grpc-", ":")) and name not in ("te", "user-agent", "content-type")
               for name, _ in request[5])


def test_an_error_keeps_its_status_message_and_details(channel):
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(FAIL)(b"x", timeout=5)
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "not now: état 100%"
    assert dict(error.trailing_metadata())["grpc-status-details-bin"] == b"\x08\x09details"


def test_many_concurrent_calls_are_handed_over_in_bulk(answerer, channel):
    echo = channel.unary_unary(ECHO)
    futures = [echo.future(str(i).encode(), timeout=10) for i in range(500)]
    answers = [f.result() for f in futures]
    assert [a.split(b"{")[0] for a in answers] == [str(i).encode()[::-1] for i in range(500)]
    assert len(answerer.kinds(h2.EVENT_REQUEST)) == 500
    assert answerer.wakeups < 500                   # more than one request per wake-up


def test_a_large_request_and_answer_flow(answerer):
    body = os.urandom(5 * 1024 * 1024)
    with grpc.insecure_channel(answerer.target, options=[("grpc.max_receive_message_length", 8 << 20)]) as channel:
        answer = channel.unary_unary(ECHO)(body, timeout=30)
    assert answer[: len(body)] == body[::-1]


def test_past_its_deadline_the_loop_answers_and_python_hears_a_cancel(answerer, channel):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(SILENT)(b"x", timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    deadline = time.monotonic() + 3
    while not answerer.kinds(h2.EVENT_CANCEL) and time.monotonic() < deadline:
        time.sleep(0.01)
    (cancel,) = answerer.kinds(h2.EVENT_CANCEL)
    assert cancel[1] == answerer.kinds(h2.EVENT_REQUEST)[0][1]
    # a late answer for the cancelled stream is dropped, and the server goes on
    answerer.server.reply(cancel[1], b"too late")
    assert channel.unary_unary(ECHO)(b"ok", timeout=5).startswith(b"ko")


def test_a_client_cancel_reaches_python(answerer, channel):
    future = channel.unary_unary(SILENT).future(b"x", timeout=30)
    deadline = time.monotonic() + 5
    while not answerer.kinds(h2.EVENT_REQUEST) and time.monotonic() < deadline:
        time.sleep(0.01)
    future.cancel()
    while not answerer.kinds(h2.EVENT_CANCEL) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert answerer.kinds(h2.EVENT_CANCEL)[0][1] == answerer.kinds(h2.EVENT_REQUEST)[0][1]


def test_other_paths_are_handed_over_as_streams(answerer, channel):
    stream = channel.stream_stream(STREAM)
    answers = list(stream(iter([b"a", b"bc", b""]), timeout=5))
    assert answers == [b"opened", b"A", b"BC", b""]
    kinds = [e[0] for e in answerer.events]
    assert kinds == [h2.EVENT_OPEN, h2.EVENT_MESSAGE, h2.EVENT_MESSAGE, h2.EVENT_MESSAGE, h2.EVENT_HALF_CLOSE]
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/test.Nowhere/Else")(b"x", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_without_forwarding_an_unknown_path_is_unimplemented():
    server = h2.H2Server("127.0.0.1", 0)
    server.add_unary(ECHO)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary("/test.Nowhere/Else")(b"x", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()
        thread.join(5)


def test_a_compressed_message_is_refused(channel):
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(ECHO)(b"abc" * 100, timeout=5, compression=grpc.Compression.Gzip)
    assert caught.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED)


def test_shutdown_lets_calls_in_flight_finish_and_takes_no_new_connection(answerer):
    with grpc.insecure_channel(answerer.target) as channel:
        future = channel.unary_unary(SILENT).future(b"x", timeout=10)
        deadline = time.monotonic() + 5
        while not answerer.kinds(h2.EVENT_REQUEST) and time.monotonic() < deadline:
            time.sleep(0.01)
        token = answerer.kinds(h2.EVENT_REQUEST)[0][1]
        answerer.server.shutdown()
        time.sleep(0.2)
        answerer.server.reply(token, b"finished in the drain")
        assert future.result(timeout=5) == b"finished in the drain"
    with grpc.insecure_channel(answerer.target) as fresh:
        with pytest.raises(grpc.RpcError) as caught:
            fresh.unary_unary(ECHO)(b"x", timeout=2)
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_bad_answers_are_refused():
    server = h2.H2Server("127.0.0.1", 0)
    with pytest.raises(ValueError):
        server.fail(1, 0)
    with pytest.raises(ValueError):
        server.finish(1, 17)
    with pytest.raises(ValueError):
        server.add_unary("no-slash")
    server.reply(12345, b"no such stream")     # an unknown token is dropped by the loop, not an error


def test_answered_calls_leave_no_deadline_behind(answerer, channel):
    echo = channel.unary_unary(ECHO)
    futures = [echo.future(b"x", timeout=3600) for _ in range(200)]
    assert all(f.result().startswith(b"x") for f in futures)
    stats = answerer.server.stats
    assert stats["deadlines_watched"] == 0 and stats["buffered_bytes"] == 0


def test_a_late_answer_for_a_gone_connection_never_reaches_a_later_one(answerer):
    def silent_call(channel):
        before = len(answerer.kinds(h2.EVENT_REQUEST))
        future = channel.unary_unary(SILENT).future(b"x", timeout=30)
        deadline = time.monotonic() + 5
        while len(answerer.kinds(h2.EVENT_REQUEST)) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        return future, answerer.kinds(h2.EVENT_REQUEST)[-1][1]

    first = grpc.insecure_channel(answerer.target)
    _, old_token = silent_call(first)
    first.close()
    deadline = time.monotonic() + 5
    while not answerer.kinds(h2.EVENT_CANCEL) and time.monotonic() < deadline:
        time.sleep(0.01)
    with grpc.insecure_channel(answerer.target) as second:
        future, new_token = silent_call(second)
        assert new_token != old_token                   # same slot and stream id, another connection
        answerer.server.reply(old_token, b"stale")
        time.sleep(0.2)
        assert not future.done()
        answerer.server.reply(new_token, b"fresh")
        assert future.result(timeout=5) == b"fresh"


def test_the_bytes_held_for_python_are_bounded():
    server = h2.H2Server("127.0.0.1", 0, max_buffered_bytes=1 << 20)
    server.add_unary(SILENT)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(SILENT)(os.urandom(2 << 20), timeout=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert caught.value.details() == "the server holds too many request bytes; retry later"
            held = channel.unary_unary(SILENT).future(os.urandom(600 << 10), timeout=30)
            deadline = time.monotonic() + 5
            while server.stats["handed_off"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.stats["buffered_bytes"] == 0      # handed to Python: no longer the loop's
            held.cancel()
    finally:
        server.stop()
        thread.join(5)


def test_announced_lengths_reserve_nothing_only_the_bytes_received_count():
    """A client that announces big messages and sends little of them cannot lock other callers out:
    the bound counts bytes as they arrive, and they stop counting when its streams go."""
    from h2frames import Peer, data, grpc_message, grpc_request_block, headers

    answerer = Answerer(max_buffered_bytes=4 << 20)
    try:
        with Peer("127.0.0.1", answerer.server.port) as hostile:
            hostile.handshake()
            streams = range(1, 33, 2)                       # 16 streams, each announcing 6 MB
            hostile.send(b"".join(headers(i, grpc_request_block(ECHO)) + data(i, grpc_message(b"", length=6 << 20))
                                  for i in streams))
            chunk = b"x" * (64 << 10)
            assert hostile.send_within_windows([data(1, chunk) for _ in range(16)])     # 1 MB of stream 1's
            deadline = time.monotonic() + 5
            while answerer.server.stats["buffered_bytes"] < 1 << 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert answerer.server.stats["buffered_bytes"] == 1 << 20
            with grpc.insecure_channel(answerer.target) as channel:
                message = os.urandom(2 << 20)
                assert channel.unary_unary(ECHO)(message, timeout=10).startswith(message[::-1])
                # Past the bound by bytes that really arrived: refused, and the others still served.
                assert hostile.send_within_windows([data(3, chunk) for _ in range(40)])
                with pytest.raises(grpc.RpcError) as caught:
                    channel.unary_unary(ECHO)(os.urandom(2 << 20), timeout=10)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert channel.unary_unary(ECHO)(b"small", timeout=10).startswith(b"llams")
        deadline = time.monotonic() + 5                     # the hostile connection is gone
        while answerer.server.stats["buffered_bytes"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert answerer.server.stats["buffered_bytes"] == 0
    finally:
        answerer.stop()


def test_the_proxy_door_reads_the_event_kinds_the_extension_gives():
    from mve.proxy.transport import native

    assert (native.EVENT_REQUEST, native.EVENT_OPEN, native.EVENT_MESSAGE, native.EVENT_HALF_CLOSE,
            native.EVENT_CANCEL) == (h2.EVENT_REQUEST, h2.EVENT_OPEN, h2.EVENT_MESSAGE, h2.EVENT_HALF_CLOSE,
                                     h2.EVENT_CANCEL)


def test_a_connection_that_never_sends_its_preface_is_closed_after_the_handshake_timeout():
    import socket

    server = h2.H2Server("127.0.0.1", 0, handshake_timeout_s=0.3)
    server.add_unary(ECHO)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            channel.unary_unary(ECHO).future(b"x", timeout=0.2)      # a live client: its connection stays
            started = time.monotonic()
            while silent.recv(4096):                                     # the server's SETTINGS, then EOF:
                pass                                                     # closed by the server
            assert 0.2 < time.monotonic() - started < 3
            time.sleep(0.5)                                              # past the timeout twice over
            stats = server.stats
            assert stats["handshake_timeouts"] == 1 and stats["open_connections"] == 1
        silent.close()
    finally:
        server.stop()
        thread.join(5)
    with pytest.raises(ValueError):
        h2.H2Server("127.0.0.1", 0, handshake_timeout_s=-1)
