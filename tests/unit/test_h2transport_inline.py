"""mve._h2transport's inline mode: the loop's turns run by ``poll()`` on the caller's thread, as the
proxy's door runs them on its event loop, against a real grpc client and raw HTTP/2 frames.

Skipped only where the extension was not built.
"""

from __future__ import annotations

import select
import socket
import threading
import time

import grpc
import pytest
from h2frames import Peer, data, grpc_message, grpc_request_block, headers

h2 = pytest.importorskip(
    "mve._h2transport", reason="mve._h2transport not built: libnghttp2-dev is missing (sudo apt-get install libnghttp2-dev)"
)

ECHO = "/test.Echo/Reverse"
SILENT = "/test.Echo/Silent"


class InlineAnswerer:
    """An inline H2Server whose turns and answers run on one thread, as an event loop runs them:
    a turn when ``fileno()`` is readable, the answers of a turn written by ``poll(events=False)``."""

    def __init__(self, **server_options):
        self.server = h2.H2Server("127.0.0.1", 0, inline=True, **server_options)
        self.echo = self.server.add_unary(ECHO)
        self.silent = self.server.add_unary(SILENT)
        self.events: list[tuple] = []
        self.turns = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.target = f"127.0.0.1:{self.server.port}"

    def _run(self):
        fd = self.server.fileno()
        while not self.done.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            self.turns += 1
            answered = False
            for event in self.server.poll():
                self.events.append(event)
                kind, token, method, message, _, _ = event
                if kind == h2.EVENT_REQUEST and method == self.echo:
                    self.server.reply(token, message[::-1])
                    answered = True
            if answered:
                self.events.extend(self.server.poll(events=False))
        self.server.stop()

    def kinds(self, kind):
        return [e for e in self.events if e[0] == kind]

    def stop(self):
        self.done.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def answerer():
    served = InlineAnswerer(handshake_timeout_s=0.3)
    try:
        yield served
    finally:
        served.stop()


def test_an_inline_server_answers_concurrent_calls_on_the_polling_thread(answerer):
    with grpc.insecure_channel(answerer.target) as channel:
        echo = channel.unary_unary(ECHO)
        calls = [echo.future(f"call {i}".encode(), timeout=10) for i in range(50)]
        assert [call.result() for call in calls] == [f"call {i}".encode()[::-1] for i in range(50)]
    assert answerer.server.stats["handed_off"] == 50
    with pytest.raises(RuntimeError, match="poll"):
        answerer.server.serve_forever()


def test_an_inline_server_keeps_deadlines_with_its_timer_while_no_socket_speaks(answerer):
    """Nothing arrives after the request, so only the loop's timerfd can wake the polling thread in
    time: the call is answered DEADLINE_EXCEEDED at its deadline and Python hears a cancel."""
    with Peer("127.0.0.1", answerer.server.port) as peer:
        peer.handshake()
        block = grpc_request_block(SILENT, extra=[("grpc-timeout", "200m")])
        started = time.monotonic()
        peer.send(headers(1, block) + data(1, grpc_message(b"wait"), end_stream=True))
        outcome = peer.read(until_streams=(1,), idle=2.0, limit=5.0)
        assert outcome.streams[1].grpc_status == 4                  # DEADLINE_EXCEEDED
        assert 0.15 < time.monotonic() - started < 2.0
    deadline = time.monotonic() + 2
    while not answerer.kinds(h2.EVENT_CANCEL) and time.monotonic() < deadline:
        time.sleep(0.01)
    (request,) = answerer.kinds(h2.EVENT_REQUEST)
    (cancel,) = answerer.kinds(h2.EVENT_CANCEL)
    assert cancel[1] == request[1]
    assert answerer.server.stats["deadline_exceeded"] == 1


def test_an_inline_server_closes_a_connection_that_never_sends_its_preface(answerer):
    silent = socket.create_connection(("127.0.0.1", answerer.server.port), timeout=5)
    started = time.monotonic()
    while silent.recv(4096):                                       # the server's SETTINGS, then EOF
        pass
    assert 0.2 < time.monotonic() - started < 3
    assert answerer.server.stats["handshake_timeouts"] == 1
    silent.close()


def test_stopping_an_inline_server_closes_its_connections_at_once():
    served = InlineAnswerer()
    with grpc.insecure_channel(served.target) as channel:
        assert channel.unary_unary(ECHO)(b"ab", timeout=5) == b"ba"
        held = channel.unary_unary(SILENT).future(b"x", timeout=10)
        deadline = time.monotonic() + 5
        while not served.kinds(h2.EVENT_REQUEST)[1:] and time.monotonic() < deadline:
            time.sleep(0.01)
        served.stop()
        with pytest.raises(grpc.RpcError) as caught:
            held.result(timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert served.server.stats["open_connections"] == 0
    held_token = served.kinds(h2.EVENT_REQUEST)[1][1]
    assert served.server.poll() == [(h2.EVENT_CANCEL, held_token, None, None, None, ())]   # the call left open
    assert served.server.poll() == []                              # stopped: nothing more comes out
