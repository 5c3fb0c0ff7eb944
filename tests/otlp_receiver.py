"""A real OTLP/gRPC trace receiver for tests: ``TraceService/Export`` on 127.0.0.1, spans kept in memory."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class ReceivedSpan:
    """One exported span, flattened: its service's name and the fields tests look at."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict
    links: list[tuple[str, str]]  # (trace id, span id)


def _value(any_value):
    field = any_value.WhichOneof("value")
    if field == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, field) if field else None


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Start with `start` (returns the ``http://127.0.0.1:PORT`` endpoint), read `spans`, `stop`."""

    def __init__(self):
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def start(self) -> str:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait(5)

    def Export(self, request, context):
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        )
                    )
        with self._lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def find(self, timeout: float = 10.0, count: int = 1, **match) -> list[ReceivedSpan]:
        """Wait until at least `count` spans have every field (or attribute ``attr_x``) in `match`."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [s for s in self.spans if _matches(s, match)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def _matches(span: ReceivedSpan, match: dict) -> bool:
    for key, want in match.items():
        if key.startswith("attr_"):
            got = span.attributes.get(key[5:].replace("__", "."))
        else:
            got = getattr(span, key)
        if got != want:
            return False
    return True
