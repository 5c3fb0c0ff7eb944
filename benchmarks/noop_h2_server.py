"""The twin of noop_server.py on the native HTTP/2 transport (mve/_h2transport.pyx, docs/transport.md).

It answers every ModelInfer with the same canned, serialised response as noop_server.py, entirely
in C: libnghttp2 on one epoll loop, the GIL released, no Python per request. bench_h2_gate.py sets
the two side by side (issue 18's gate).

    python benchmarks/noop_h2_server.py [--port PORT]   # prints {"event": "ready", ...}
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from noop_server import METHOD_SERVICE, canned_response  # noqa: E402

from mve.ready import announce_ready  # noqa: E402


def serve(port: int) -> None:
    try:
        from mve._h2transport import H2Server
    except ImportError:
        raise SystemExit("mve._h2transport is not built: sudo apt-get install libnghttp2-dev, then make build")
    server = H2Server("127.0.0.1", port)
    server.add_canned(f"/{METHOD_SERVICE}/ModelInfer", canned_response())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    announce_ready("noop-h2-server", f"127.0.0.1:{server.port}")
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    serve(parser.parse_args().port)
