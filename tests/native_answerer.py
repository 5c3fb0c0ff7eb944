"""A native H2Server whose requests Python answers, as a target for tests/integration/test_fuzz_native_framing.py.

ModelInfer is an ``add_unary`` path: each complete request is handed to Python, which replies with
noop_server.py's canned ModelInferResponse. Every other path is a forwarded stream
(``forward_others``): ``/fuzz.Echo/Stream`` sends each message back and finishes OK when the client
half-closes; any other path fails UNIMPLEMENTED. Python answers on its own thread, as the proxy will.

    python tests/native_answerer.py    # prints {"event": "ready", ...}; SIGTERM stops it
"""

from __future__ import annotations

import select
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from noop_server import METHOD_SERVICE, canned_response  # noqa: E402

from mve import _h2transport as h2  # noqa: E402
from mve.ready import announce_ready  # noqa: E402

ECHO_STREAM = "/fuzz.Echo/Stream"


def answer_forever(server: h2.H2Server, infer: int, done: threading.Event) -> None:
    """Take every event the loop hands over and answer it, until `done`."""
    reply = canned_response()
    while not done.is_set():
        ready, _, _ = select.select([server.events_fd], [], [], 0.1)
        if not ready:
            continue
        for kind, token, method, message, _timeout, _metadata in server.take():
            if kind == h2.EVENT_REQUEST and method == infer:
                server.reply(token, reply)
            elif kind == h2.EVENT_REQUEST:
                server.fail(token, 12, f"no unary method {method}")
            elif kind == h2.EVENT_OPEN and method != ECHO_STREAM:
                server.fail(token, 12, f"no method {method!r}")
            elif kind == h2.EVENT_MESSAGE:
                server.send(token, message)
            elif kind == h2.EVENT_HALF_CLOSE:
                server.finish(token, 0)


def main() -> None:
    server = h2.H2Server("127.0.0.1", 0, forward_others=True)
    infer = server.add_unary(f"/{METHOD_SERVICE}/ModelInfer")
    done = threading.Event()
    answering = threading.Thread(target=answer_forever, args=(server, infer, done), name="answerer", daemon=True)
    answering.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    announce_ready("native-answerer", f"127.0.0.1:{server.port}")
    try:
        server.serve_forever()
    finally:
        done.set()
        answering.join(5)


if __name__ == "__main__":
    main()
