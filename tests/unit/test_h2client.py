"""mve._h2client (the native gRPC client) and its asyncio face against real grpc servers.

Skipped only where the extension was not built because libnghttp2's headers are missing (the
Makefile installs libnghttp2-dev when it runs as root, so CI runs these).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

h2c = pytest.importorskip(
    "mve._h2client", reason="mve._h2client not built: libnghttp2-dev is missing (sudo apt-get install libnghttp2-dev)"
)

from mve._proto import control_pb2  # noqa: E402
from mve._proto import grpc_predict_v2_pb2 as pb  # noqa: E402
from mve.errors import ModelNotReady, ValidationError  # noqa: E402
from mve.proxy.routing.router import Router  # noqa: E402
from mve.proxy.transport.native_upstream import NativeUpstream  # noqa: E402
from mve.proxy.transport.upstream import UpstreamPool, infer_on_variant  # noqa: E402

OK, CANCELLED, DEADLINE_EXCEEDED, FAILED_PRECONDITION = 0, 1, 4, 9
RESOURCE_EXHAUSTED, UNAVAILABLE = 8, 14
MB = 1024 * 1024


def error_details() -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="ModelError", domain="mve", metadata={"model": "mlp"}))
    return status_pb2.Status(code=FAILED_PRECONDITION, message="not now: état 100%", details=[info])


class Model:
    """A model-server-like grpc server with generic handlers on 127.0.0.1:0, in this process."""

    def __init__(self):
        self.cancelled = threading.Event()
        self.seen_metadata: dict[str, str | bytes] = {}
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "Meta": grpc.unary_unary_rpc_method_handler(self._meta),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
            "Slow": grpc.unary_unary_rpc_method_handler(self._slow),
            "Huge": grpc.unary_unary_rpc_method_handler(lambda request, context: b"\x01" * (7 * MB)),
        }
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16),
            options=[("grpc.max_receive_message_length", 64 * MB), ("grpc.max_send_message_length", 64 * MB)],
        )
        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("test.Model", handlers),
            grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(self._model_infer)}),
        ))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def _model_infer(self, request, context):
        """Answers with its own address as the response id; model "bad" is the caller's error."""
        parsed = pb.ModelInferRequest.FromString(request)
        if parsed.model_name == "bad":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input 'x' has the wrong shape")
        return pb.ModelInferResponse(model_name=parsed.model_name, id=self.address).SerializeToString()

    def _meta(self, request, context):
        self.seen_metadata = dict(context.invocation_metadata())
        return repr(sorted(self.seen_metadata.items())).encode()

    def _fail(self, request, context):
        context.abort_with_status(rpc_status.to_status(error_details()))

    def _slow(self, request, context):
        context.add_callback(self.cancelled.set)
        ends = time.monotonic() + 5
        while context.is_active() and time.monotonic() < ends:
            time.sleep(0.01)
        return b"late"

    def stop(self):
        self.server.stop(None)


@pytest.fixture
def model():
    served = Model()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def client():
    native = h2c.H2Client()
    native.start()
    try:
        yield native
    finally:
        native.stop(timeout=10)


def wait_for(native, count: int, timeout: float = 10.0) -> dict[int, tuple]:
    """Take answers until `count` arrived (or `timeout`): {call_id: (status, message, reply, trailers)}."""
    got: dict[int, tuple] = {}
    ends = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < ends:
        select.select([native.notify_fd], [], [], max(0.0, min(0.5, ends - time.monotonic())))
        for call_id, *rest in native.take():
            got[call_id] = tuple(rest)
    return got


def test_an_echo_comes_back_byte_for_byte_with_the_metadata_sent(client, model):
    message = b"\x0a\x03mlp" + bytes(range(256))
    echo = client.call(model.address, b"/test.Model/Echo", message, 5.0)
    meta = client.call(model.address, b"/test.Model/Meta", b"", 5.0,
                       (("traceparent", "00-abc-def-01"), (b"X-Key", b"v"), ("trace-bin", b"\x00\xff")))
    got = wait_for(client, 2)
    assert got[echo] == (OK, "", message, ())
    assert got[meta][0] == OK
    assert model.seen_metadata["traceparent"] == "00-abc-def-01"
    assert model.seen_metadata["x-key"] == "v"
    assert model.seen_metadata["trace-bin"] == b"\x00\xff"
    assert client.stats["connections"] == 1


def test_an_error_carries_its_code_message_and_details(client, model):
    call_id = client.call(model.address, b"/test.Model/Fail", b"x", 5.0)
    status, message, reply, trailers = wait_for(client, 1)[call_id]
    assert (status, message, reply) == (FAILED_PRECONDITION, "not now: état 100%", None)
    details = status_pb2.Status.FromString(dict(trailers)["grpc-status-details-bin"])
    assert details == error_details()
    info = error_details_pb2.ErrorInfo()
    assert details.details[0].Unpack(info) and info.reason == "ModelError"
    assert client.stats["errors"] == 1


def test_an_unknown_method_is_unimplemented(client, model):
    call_id = client.call(model.address, b"/test.Model/Nope", b"x", 5.0)
    assert wait_for(client, 1)[call_id][0] == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_a_call_past_its_deadline_is_deadline_exceeded_and_its_stream_reset(client, model):
    started = time.monotonic()
    call_id = client.call(model.address, b"/test.Model/Slow", b"x", 0.2)
    status, message, reply, _ = wait_for(client, 1)[call_id]
    waited = time.monotonic() - started
    assert (status, message, reply) == (DEADLINE_EXCEEDED, "Deadline Exceeded", None)
    assert 0.15 < waited < 2.0
    assert model.cancelled.wait(3), "the server never saw the call end"


def test_5_mb_flows_both_ways(client, model):
    message = os.urandom(5 * MB)
    call_id = client.call(model.address, b"/test.Model/Echo", message, 20.0)
    status, _, reply, _ = wait_for(client, 1, 30)[call_id]
    assert status == OK and reply == message


def test_a_reply_over_the_limit_is_resource_exhausted_and_the_connection_goes_on(model):
    native = h2c.H2Client(max_message_bytes=6 * MB)
    native.start()
    try:
        huge = native.call(model.address, b"/test.Model/Huge", b"", 20.0)
        status, message, reply, _ = wait_for(native, 1, 30)[huge]
        assert (status, reply) == (RESOURCE_EXHAUSTED, None)
        assert str(7 * MB) in message and str(6 * MB) in message
        after = native.call(model.address, b"/test.Model/Echo", b"still here", 5.0)
        assert wait_for(native, 1)[after] == (OK, "", b"still here", ())
        assert native.stats["connections"] == 1
    finally:
        native.stop(timeout=10)


def test_connection_refused_is_unavailable_and_the_next_call_tries_again(client):
    with __import__("socket").socket() as unused:   # a port with nothing listening on it
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    first = client.call(address, b"/test.Model/Echo", b"x", 5.0)
    status, message, _, _ = wait_for(client, 1)[first]
    assert status == UNAVAILABLE and "Connection refused" in message and address in message
    second = client.call(address, b"/test.Model/Echo", b"x", 5.0)
    assert wait_for(client, 1)[second][0] == UNAVAILABLE
    assert client.stats["connections"] == 2


SLOW_SERVER = """
import sys, time
from concurrent import futures
import grpc

def slow(request, context):
    time.sleep(30)
    return request

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "test.Model", {"Slow": grpc.unary_unary_rpc_method_handler(slow),
                   "Echo": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination(60)
"""


def test_a_server_killed_mid_call_fails_its_calls_unavailable(client):
    process = subprocess.Popen([sys.executable, "-c", SLOW_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        address = f"127.0.0.1:{int(process.stdout.readline())}"
        warm = client.call(address, b"/test.Model/Echo", b"up", 5.0)
        assert wait_for(client, 1)[warm][0] == OK
        slow = [client.call(address, b"/test.Model/Slow", b"x", 20.0) for _ in range(3)]
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        got = wait_for(client, 3)
        assert sorted(got) == sorted(slow)
        for status, message, reply, _ in got.values():
            assert status == UNAVAILABLE and reply is None and address in message
    finally:
        process.kill()
        process.wait(10)


def test_500_concurrent_calls_on_one_address_are_all_answered_correctly(client, model):
    sent = {client.call(model.address, b"/test.Model/Echo", b"call %d " % i * (i % 7 + 1), 20.0): i
            for i in range(500)}
    got = wait_for(client, 500, 60)
    assert len(got) == 500
    for call_id, i in sent.items():
        assert got[call_id] == (OK, "", b"call %d " % i * (i % 7 + 1), ())
    assert client.stats["connections"] == 1
    assert client.stats["completed"] == 500


def test_a_burst_of_calls_wakes_the_loop_once_and_notify_fd_is_written_once_until_taken(client, model):
    first = client.call(model.address, b"/test.Model/Echo", b"warm", 5.0)
    assert wait_for(client, 1)[first][0] == OK
    before = client.stats
    sent = [client.call(model.address, b"/test.Model/Echo", b"%d" % i, 20.0, wake=False) for i in range(500)]
    assert client.stats["wakeups"] == before["wakeups"]        # nothing woke it yet
    client.wake()
    client.wake()                                               # once is enough until it takes the queue
    ends = time.monotonic() + 60
    while client.stats["completed"] < before["completed"] + 500 and time.monotonic() < ends:
        time.sleep(0.02)                                        # answers pile up, nobody takes them
    after = client.stats
    assert after["wakeups"] - before["wakeups"] == 1
    assert after["notifies"] - before["notifies"] == 1          # written on empty -> non-empty only
    got = {call_id: rest for call_id, *rest in client.take()}  # all of them in one take()
    assert sorted(got) == sorted(sent) and all(answer[0] == OK for answer in got.values())


def test_calls_beyond_the_servers_max_concurrent_streams_wait_for_a_free_stream(client):
    in_flight = []
    lock = threading.Lock()

    def nap(request, context):
        with lock:
            in_flight.append(len(in_flight))
        time.sleep(0.1)
        with lock:
            in_flight.pop()
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.max_concurrent_streams", 4)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Model", {"Nap": grpc.unary_unary_rpc_method_handler(nap)}),))
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        warm = client.call(address, b"/test.Model/Nap", b"warm", 5.0)     # the server's SETTINGS arrive
        assert wait_for(client, 1)[warm][0] == OK
        started = time.monotonic()
        sent = [client.call(address, b"/test.Model/Nap", b"%d" % i, 10.0) for i in range(16)]
        got = wait_for(client, 16, 20)
        assert [got[call_id][:3] for call_id in sent] == [(OK, "", b"%d" % i) for i in range(16)]
        assert time.monotonic() - started >= 0.35        # 16 calls, 4 at a time, 0.1 s each
        assert client.stats["connections"] == 1
    finally:
        server.stop(None)


def test_calls_to_many_addresses_each_get_their_own_connection(client):
    models = [Model() for _ in range(3)]
    try:
        sent = {client.call(m.address, b"/test.Model/Meta", b"", 5.0, (("who", m.address),)): m for m in models * 4}
        got = wait_for(client, len(sent))
        assert len(got) == 12 and all(answer[0] == OK for answer in got.values())
        for call_id, m in sent.items():
            assert m.address.encode() in got[call_id][2]
        assert client.stats["connections"] == 3
    finally:
        for m in models:
            m.stop()


def test_a_cancelled_call_is_never_delivered_and_its_stream_is_reset(client, model):
    call_id = client.call(model.address, b"/test.Model/Slow", b"x", 10.0)
    time.sleep(0.2)
    assert client.cancel(call_id) is True
    assert model.cancelled.wait(3), "the server never saw the cancel"
    assert wait_for(client, 1, 0.5) == {}
    assert client.cancel(call_id) is False
    after = client.call(model.address, b"/test.Model/Echo", b"next", 5.0)
    assert wait_for(client, 1)[after][0] == OK


def test_cancel_before_the_loop_ran_it_and_after_it_finished(model):
    native = h2c.H2Client()
    queued = native.call(model.address, b"/test.Model/Echo", b"a", 5.0)
    assert native.cancel(queued) is True            # still in the submission queue
    native.start()
    try:
        done = native.call(model.address, b"/test.Model/Echo", b"b", 5.0)
        select.select([native.notify_fd], [], [], 5)
        time.sleep(0.1)
        assert native.cancel(done) is True          # finished, not taken
        assert native.take() == []
        check = native.call(model.address, b"/test.Model/Echo", b"c", 5.0)
        assert wait_for(native, 1) == {check: (OK, "", b"c", ())}
    finally:
        native.stop(timeout=10)


def test_stop_with_calls_in_flight_finishes_them_cancelled_and_joins(model):
    native = h2c.H2Client()
    native.start()
    slow = [native.call(model.address, b"/test.Model/Slow", b"x", 20.0) for _ in range(3)]
    time.sleep(0.2)
    started = time.monotonic()
    native.stop(timeout=10)
    assert time.monotonic() - started < 3
    assert not any(t.name == "h2-client" and t.is_alive() for t in threading.enumerate())
    got = {call_id: rest for call_id, *rest in native.take()}
    assert sorted(got) == sorted(slow)
    assert all(status == CANCELLED and reply is None for status, _, reply, _ in got.values())
    with pytest.raises(RuntimeError):
        native.call(model.address, b"/test.Model/Echo", b"x", 1.0)
    assert model.cancelled.wait(3)


def test_close_address_retires_the_connection_and_a_later_call_opens_another(client, model):
    first = client.call(model.address, b"/test.Model/Echo", b"1", 5.0)
    assert wait_for(client, 1)[first][0] == OK
    client.close_address(model.address)
    ends = time.monotonic() + 5
    while client.stats["open_connections"] and time.monotonic() < ends:
        time.sleep(0.02)
    assert client.stats["open_connections"] == 0
    second = client.call(model.address, b"/test.Model/Echo", b"2", 5.0)
    assert wait_for(client, 1)[second] == (OK, "", b"2", ())
    assert client.stats["connections"] == 2


def test_a_server_going_away_lets_calls_in_flight_finish(client, model):
    slow = client.call(model.address, b"/test.Model/Slow", b"x", 20.0)
    time.sleep(0.2)
    stopping = model.server.stop(grace=0.5)          # GOAWAY, then cancels what is left at the grace
    got = wait_for(client, 1)
    stopping.wait(5)
    status = got[slow][0]
    assert status in (CANCELLED, UNAVAILABLE)
    after = client.call(model.address, b"/test.Model/Echo", b"x", 5.0)
    assert wait_for(client, 1)[after][0] == UNAVAILABLE


# --- answers no grpc server gives: raw HTTP/2 frames from a socket -------------------------------


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def header_block(*pairs: tuple[bytes, bytes]) -> bytes:
    """HPACK literals without indexing (no Huffman): what any HTTP/2 peer must read."""
    return b"".join(b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v for n, v in pairs)


HEADERS, DATA, SETTINGS = 1, 0, 4
END_STREAM, END_HEADERS = 0x1, 0x4
GRPC_200 = ((b":status", b"200"), (b"content-type", b"application/grpc"))


class RawPeer:
    """Answers the first request of each connection (stream 1) with canned frames."""

    def __init__(self, answer: bytes):
        import socket

        self.answer = answer
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conns = []
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            conns.append(conn)
            conn.settimeout(5)
            got = b""
            while len(got) < 24 + 9 or HEADERS not in got[24:]:     # the preface, SETTINGS, the request
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
            conn.sendall(frame(SETTINGS, 0, 0) + self.answer)
        for conn in conns:
            conn.close()
        self.listener.close()

    def stop(self):
        self.stopped.set()
        self.thread.join(5)


@pytest.mark.parametrize(("answer", "status", "text"), [
    (frame(HEADERS, END_STREAM | END_HEADERS, 1, header_block((b":status", b"404"))), 12, "status: 404"),
    (frame(HEADERS, END_STREAM | END_HEADERS, 1, header_block((b":status", b"503"))), 14, "status: 503"),
    (frame(HEADERS, END_STREAM | END_HEADERS, 1, header_block((b":status", b"500"))), 2, "status: 500"),
    (frame(HEADERS, END_STREAM | END_HEADERS, 1, header_block((b":status", b"400"))), 13, "status: 400"),
    (frame(HEADERS, END_STREAM | END_HEADERS, 1, header_block(*GRPC_200)), 2, "no grpc-status"),
    (frame(HEADERS, END_HEADERS, 1, header_block(*GRPC_200))
     + frame(DATA, 0, 1, b"\x01\x00\x00\x00\x02hi"), 13, "compressed message not supported"),
    (frame(HEADERS, END_HEADERS, 1, header_block(*GRPC_200))
     + frame(HEADERS, END_STREAM | END_HEADERS, 1, header_block((b"grpc-status", b"0"))), 13, "0 complete reply"),
    (frame(HEADERS, END_HEADERS, 1, header_block(*GRPC_200))
     + frame(DATA, 0, 1, b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x01b"), 13, "more than one reply message"),
    (frame(HEADERS, END_STREAM | END_HEADERS, 1, header_block(
        *GRPC_200, (b"grpc-status", b"5"), (b"grpc-message", b"no %C3%A9 model"), (b"x-why", b"gone"))),
     5, "no é model"),
])
def test_answers_a_grpc_server_would_not_give_map_as_grpc_core_maps_them(client, answer, status, text):
    peer = RawPeer(answer)
    try:
        call_id = client.call(peer.address, b"/test.Model/Echo", b"x", 5.0)
        got_status, message, reply, trailers = wait_for(client, 1)[call_id]
        assert (got_status, reply) == (status, None)
        assert text in message
        if status == 5:
            assert trailers == (("x-why", "gone"),)
    finally:
        peer.stop()


def test_after_goaway_calls_above_its_last_stream_are_unavailable_and_new_calls_use_a_new_connection(client):
    answer_stream_1 = (
        frame(7, 0, 0, (1).to_bytes(4, "big") + (0).to_bytes(4, "big"))      # GOAWAY, last stream 1
        + frame(HEADERS, END_HEADERS, 1, header_block(*GRPC_200))
        + frame(DATA, 0, 1, b"\x00\x00\x00\x00\x02hi")
        + frame(HEADERS, END_STREAM | END_HEADERS, 1, header_block((b"grpc-status", b"0")))
    )
    peer = RawPeer(answer_stream_1)
    try:
        first = client.call(peer.address, b"/test.Model/Echo", b"1", 5.0, wake=False)     # stream 1
        second = client.call(peer.address, b"/test.Model/Echo", b"2", 5.0, wake=False)    # stream 3
        client.wake()
        got = wait_for(client, 2)
        assert got[first] == (OK, "", b"hi", ())
        assert got[second][0] == UNAVAILABLE and "GOAWAY" in got[second][1]
        third = client.call(peer.address, b"/test.Model/Echo", b"3", 5.0)
        assert wait_for(client, 1)[third] == (OK, "", b"hi", ())
        assert client.stats["connections"] == 2
    finally:
        peer.stop()


# --- the asyncio face -------------------------------------------------------------------------


@pytest.mark.parametrize("threaded", [True, False], ids=["threaded", "inline"])
def test_native_upstream_answers_and_raises_aio_rpc_errors(model, threaded):
    async def main():
        upstream = NativeUpstream(threaded=threaded)
        upstream.start()
        try:
            assert await upstream.unary(model.address, b"ping", 5.0, path=b"/test.Model/Echo") == b"ping"
            replies = await asyncio.gather(*(upstream.unary(model.address, b"%d" % i, 5.0, path=b"/test.Model/Echo")
                                             for i in range(100)))
            assert replies == [b"%d" % i for i in range(100)]
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await upstream.unary(model.address, b"x", 5.0, path=b"/test.Model/Fail")
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert failed.value.details() == "not now: état 100%"
            trailing = dict(failed.value.trailing_metadata())
            assert status_pb2.Status.FromString(trailing["grpc-status-details-bin"]) == error_details()
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await upstream.unary(model.address, b"x", 0.1, path=b"/test.Model/Slow")
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert late.value.details() == "Deadline Exceeded"
        finally:
            upstream.close()

    asyncio.run(main())


@pytest.mark.parametrize("threaded", [True, False], ids=["threaded", "inline"])
def test_cancelling_the_awaiting_task_cancels_the_call(model, threaded):
    async def main():
        upstream = NativeUpstream(threaded=threaded)
        upstream.start()
        try:
            task = asyncio.create_task(upstream.unary(model.address, b"x", 10.0, path=b"/test.Model/Slow"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(model.cancelled.wait, 3)
            assert upstream._pending == {}
        finally:
            upstream.close()

    asyncio.run(main())


def routed(addresses: list[str]):
    """A router with endpoint "ep", one variant "a" on `addresses`."""
    router = Router(seed=1)
    router.apply(control_pb2.RoutingTable(version=1, control_plane_id="cp", endpoints=[control_pb2.EndpointRoute(
        endpoint_name="ep", variants=[control_pb2.VariantRoute(
            variant_name="a", weight=1, model_name="mlp",
            instances=[control_pb2.InstanceRoute(instance_id=a, address=a) for a in addresses])])]))
    return router


def refused_address() -> str:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{unused.getsockname()[1]}"


@pytest.mark.parametrize("threaded", [True, False], ids=["threaded", "inline"])
def test_the_upstream_pool_sends_model_infer_through_the_native_client(model, threaded):
    dead = refused_address()
    router = routed([model.address, dead])

    async def main():
        upstream = NativeUpstream(threaded=threaded)
        upstream.start()
        pool = UpstreamPool(close_grace_s=0, native=upstream)
        pool.sync({model.address, dead})
        try:
            for _ in range(6):      # the dead instance is tried first now and then: retried on the other
                result = await infer_on_variant(pool, router.pick("ep"), pb.ModelInferRequest(model_name="mlp"), 5.0)
                assert result.response.id == model.address and result.instance.address == model.address
            body = pb.ModelInferRequest(model_name="m").SerializeToString()
            raw = await infer_on_variant(pool, router.pick("ep"), body, 5.0)
            assert pb.ModelInferResponse.FromString(raw.response).id == model.address
            with pytest.raises(ValidationError, match="wrong shape"):
                await infer_on_variant(pool, router.pick("ep"), pb.ModelInferRequest(model_name="bad"), 5.0)
            assert pool._channels and upstream.stats["calls"] >= 8
            pool.sync(set())            # both leave the table: the native connection is retired too
            ends = time.monotonic() + 5
            while upstream.stats["open_connections"] and time.monotonic() < ends:
                await asyncio.sleep(0.02)
            assert upstream.stats["open_connections"] == 0
        finally:
            await pool.close(grace=0)
            upstream.close()

    asyncio.run(main())


def test_the_upstream_pool_says_model_not_ready_when_no_instance_answers():
    router = routed([refused_address()])

    async def main():
        upstream = NativeUpstream()
        upstream.start()
        pool = UpstreamPool(close_grace_s=0, native=upstream)
        try:
            with pytest.raises(ModelNotReady, match="no reachable instance"):
                await infer_on_variant(pool, router.pick("ep"), pb.ModelInferRequest(model_name="mlp"), 5.0)
        finally:
            await pool.close(grace=0)
            upstream.close()

    asyncio.run(main())


def test_inline_mode_keeps_deadlines_and_stop_finishes_calls_in_flight(model):
    async def main():
        upstream = NativeUpstream(threaded=False)
        upstream.start()
        slow = asyncio.ensure_future(upstream.unary(model.address, b"x", 10.0, path=b"/test.Model/Slow"))
        try:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as late:      # the timerfd wakes this loop by 0.3 s
                await upstream.unary(model.address, b"x", 0.3, path=b"/test.Model/Slow")
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert 0.25 < time.monotonic() - started < 2.0
            assert not any(t.name == "h2-client" for t in threading.enumerate())
        finally:
            upstream.close()
        with pytest.raises(grpc.aio.AioRpcError) as stopped:
            await slow
        assert stopped.value.code() == grpc.StatusCode.CANCELLED
        with pytest.raises(RuntimeError):
            upstream.client.call(model.address, b"/test.Model/Echo", b"x", 1.0)

    asyncio.run(main())


STUB = Path(__file__).resolve().parents[2] / "mve" / "_h2client.pyi"


def test_the_stub_and_the_extension_have_the_same_api():
    stubbed = set()
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.ClassDef):
            stubbed |= {f"{node.name}.{item.name}" for item in node.body
                        if isinstance(item, ast.FunctionDef) and item.name != "__init__"}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stubbed.add(node.target.id)
    built = set()
    for name, value in vars(h2c).items():
        if name.startswith("_") or inspect.ismodule(value) or callable(value) and not inspect.isclass(value):
            continue
        if inspect.isclass(value):
            built |= {f"{name}.{member}" for member in vars(value) if not member.startswith("_")}
        elif isinstance(value, int):
            built.add(name)
    assert built == stubbed
