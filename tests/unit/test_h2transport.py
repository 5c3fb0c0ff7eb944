"""mve._h2transport (the native HTTP/2 transport, phase 1) against a real grpc client.

Skipped only where the extension was not built because libnghttp2's headers are missing (the
Makefile installs libnghttp2-dev when it runs as root, so CI runs these).
"""

from __future__ import annotations

import ast
import inspect
import threading
import time
from pathlib import Path

import grpc
import pytest

h2 = pytest.importorskip(
    "mve._h2transport", reason="mve._h2transport not built: libnghttp2-dev is missing (sudo apt-get install libnghttp2-dev)"
)

PATH = "/test.Echo/Canned"
REPLY = b"\x0a\x03mlp" + bytes(range(256))
LIMIT = 6 * 1024 * 1024


class Running:
    """An H2Server serving on its own thread."""

    def __init__(self):
        self.server = h2.H2Server("127.0.0.1", 0)
        self.server.add_canned(PATH, REPLY)
        self.server.add_canned("/test.Echo/Fails", status=9, message="not now: état 100%", details=b"\x08\x09details")
        self.thread = threading.Thread(target=self.server.serve_forever, name="h2-serve", daemon=True)
        self.thread.start()
        self.target = f"127.0.0.1:{self.server.port}"

    def stop(self, timeout: float = 5.0) -> float:
        started = time.monotonic()
        self.server.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "serve_forever did not return after stop()"
        return time.monotonic() - started


@pytest.fixture
def running():
    served = Running()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def channel(running):
    with grpc.insecure_channel(running.target) as chan:
        yield chan


def unary(channel, path=PATH):
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


def test_the_canned_reply_comes_back_byte_for_byte(channel, running):
    assert unary(channel)(b"anything", timeout=10) == REPLY
    assert running.server.stats["requests"] == 1


def test_an_unknown_method_is_unimplemented(channel):
    with pytest.raises(grpc.RpcError) as caught:
        unary(channel, "/test.Echo/Nope")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/test.Echo/Nope" in caught.value.details()


def test_a_canned_error_carries_status_message_and_details(channel):
    with pytest.raises(grpc.RpcError) as caught:
        unary(channel, "/test.Echo/Fails")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "not now: état 100%"  # percent-encoded on the wire
    assert dict(caught.value.trailing_metadata())["grpc-status-details-bin"] == b"\x08\x09details"


def test_a_5_mb_request_flows(channel):
    assert unary(channel)(b"\x01" * (5 * 1024 * 1024), timeout=20) == REPLY


def test_a_message_over_the_limit_is_resource_exhausted_and_the_server_goes_on(channel):
    with pytest.raises(grpc.RpcError) as caught:
        unary(channel)(b"\x01" * (LIMIT + 1), timeout=20)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert unary(channel)(b"x", timeout=10) == REPLY


def test_a_message_at_the_limit_is_accepted(channel):
    assert unary(channel)(b"\x02" * LIMIT, timeout=20) == REPLY


def test_many_concurrent_calls_share_one_channel(channel, running):
    call = unary(channel)
    futures = [call.future(i.to_bytes(4, "big"), timeout=20) for i in range(300)]
    assert all(future.result() == REPLY for future in futures)
    assert running.server.stats["connections"] == 1


def test_two_messages_on_a_unary_method_are_internal(channel):
    call = channel.stream_unary(PATH, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        call(iter([b"a", b"b"]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL


def held_open(channel, release: threading.Event):
    """A call whose request stays open (one message sent, no END_STREAM) until `release` is set."""

    def requests():
        yield b"first"
        release.wait(10)

    call = channel.stream_unary(PATH, request_serializer=None, response_deserializer=None)
    return call.future(requests(), timeout=20)


def test_a_client_that_cancels_leaves_the_server_serving(channel, running):
    release = threading.Event()
    future = held_open(channel, release)
    time.sleep(0.2)
    assert future.cancel()
    release.set()
    deadline = time.monotonic() + 5
    while running.server.stats["resets"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.server.stats["resets"] >= 1  # the client's RST_STREAM reached the server
    assert unary(channel)(b"x", timeout=10) == REPLY


def test_stop_ends_serve_forever_promptly_and_clients_see_unavailable():
    served = Running()
    release = threading.Event()
    with grpc.insecure_channel(served.target) as chan:
        assert unary(chan)(b"x", timeout=10) == REPLY
        pending = held_open(chan, release)
        time.sleep(0.2)
        assert served.stop() < 2.0
        release.set()
        assert pending.exception(10).code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as caught:
            unary(chan)(b"x", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert served.server.stats["open_connections"] == 0


def test_stop_before_serve_forever_returns_at_once_and_it_serves_once():
    server = h2.H2Server("127.0.0.1", 0)
    server.stop()
    server.serve_forever()
    with pytest.raises(RuntimeError):
        server.serve_forever()
    with pytest.raises(RuntimeError):
        server.add_canned(PATH, b"late")


@pytest.mark.parametrize("args, kwargs", [
    (("no-slash", b"x"), {}),
    ((PATH,), {}),
    ((PATH, b"x"), {"status": 3}),
    ((PATH,), {"status": 17}),
])
def test_add_canned_refuses_what_it_cannot_serve(args, kwargs):
    server = h2.H2Server("127.0.0.1", 0)
    with pytest.raises(ValueError):
        server.add_canned(*args, **kwargs)


# -- the .pyi stub states the extension's API ------------------------------------------------------

STUB = Path(h2.__file__).with_name("_h2transport.pyi")


def test_the_stub_and_the_extension_have_the_same_api():
    stub: dict[str, set[str] | None] = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.ClassDef):
            stub[node.name] = {item.name for item in node.body
                               if isinstance(item, ast.FunctionDef) and item.name != "__init__"}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stub[node.target.id] = None
    module: dict[str, set[str] | None] = {}
    for name, value in vars(h2).items():
        if name.startswith("__") or inspect.ismodule(value):
            continue
        if inspect.isclass(value):
            module[name] = {member for member in vars(value) if not member.startswith("_")}
        elif isinstance(value, (int, str)):
            module[name] = None
    assert stub == module
    assert h2.H2Server.__doc__ and all(getattr(h2.H2Server, m).__doc__ for m in module["H2Server"])
