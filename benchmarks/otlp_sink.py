"""A throwaway OTLP/gRPC trace receiver for benchmarks: accepts ``TraceService/Export``, counts, drops.

The tracing rows of bench_e2e.py point traced proxies at it (``OTEL_EXPORTER_OTLP_ENDPOINT``), so
their spans are really serialised and sent over gRPC, as they would be to a collector. It counts
the spans it received per ``service.name`` and prints them as one JSON line when stopped.

    python benchmarks/otlp_sink.py    # prints {"event": "ready", "address": ...}; SIGTERM: {"spans": {...}}
"""

from __future__ import annotations

import asyncio
import json
import signal

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from mve.ready import announce_ready


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts spans per service.name."""

    def __init__(self):
        self.spans: dict[str, int] = {}

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            count = sum(len(scope.spans) for scope in resource_spans.scope_spans)
            self.spans[service] = self.spans.get(service, 0) + count
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve() -> None:
    sink = Sink()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    announce_ready("otlp-sink", f"127.0.0.1:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    print(json.dumps({"spans": sink.spans}), flush=True)


if __name__ == "__main__":
    asyncio.run(serve())
