"""Data capture: which invocations, and the record each becomes in SageMaker's capture format.

`CapturePolicy` is one endpoint's ``DataCaptureConfig`` from the routing table. The data plane
samples each invocation once (`CapturePolicy.fraction`) and hands a sampled one to the
`mve.proxy.capture_writer.CaptureWriter` as a `CaptureRecord` holding references only: the
request and response bytes as they are, no copy, no JSON or base64 work on the event loop. The
writer's thread turns each into one line (`record_line`)::

    {"captureData": {"endpointInput": {"observedContentType": "text/csv", "mode": "INPUT",
                                       "data": "1,2,3", "encoding": "CSV"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "{...}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid4>", "inferenceId": "<id>", "inferenceTime": "2026-11-30T01:02:03.456Z"},
     "eventVersion": "0"}

(no spaces), endpointInput only with capture mode Input, endpointOutput only with Output (both
by default). A body whose media type (parameters dropped, any case) is in CsvContentTypes is
written as its text with encoding CSV, in JsonContentTypes as JSON, any other as BASE64 (all of
them when CaptureContentTypeHeader is empty, as in SageMaker). ModelInfer calls are captured as
their serialised messages, `MODEL_INFER_REQUEST_TYPE` and `MODEL_INFER_RESPONSE_TYPE`.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from mve.errors import ValidationError

# observedContentType of a ModelInfer (Open Inference Protocol) capture: its serialised messages.
MODEL_INFER_REQUEST_TYPE = "application/x-protobuf; messageType=inference.ModelInferRequest"
MODEL_INFER_RESPONSE_TYPE = "application/x-protobuf; messageType=inference.ModelInferResponse"

CAPTURE_MODES = ("Input", "Output", "InputAndOutput")
RECORD_OVERHEAD_BYTES = 256  # what a record costs in the writer's queue besides its bodies


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def destination_path(uri: str) -> str:
    """The local directory of a DestinationS3Uri: a path, or the path of a ``file://`` URI."""
    text = uri.strip()
    if not text:
        raise ValidationError("DataCaptureConfig.DestinationS3Uri is empty")
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValidationError(
                f"DataCaptureConfig.DestinationS3Uri '{text}' must be a local directory or a file:// URI"
            )
        text = unquote(parsed.path)
    return os.path.abspath(text)


@dataclass(frozen=True)
class CapturePolicy:
    """One endpoint's data capture: where, how often, which sides, and which bodies are text."""

    destination: str
    fraction: float  # InitialSamplingPercentage / 100
    capture_input: bool
    capture_output: bool
    csv_content_types: frozenset[str]
    json_content_types: frozenset[str]

    @classmethod
    def from_config(cls, config) -> "CapturePolicy | None":
        """The policy of a ``mve.v1.DataCaptureConfig``; None when capture is off.

        ValidationError for a destination that is not local, a percentage outside 0-100 or an
        unknown capture mode.
        """
        if not config.enable_capture:
            return None
        percentage = config.initial_sampling_percentage
        if not 0 <= percentage <= 100:
            raise ValidationError(f"DataCaptureConfig.InitialSamplingPercentage must be 0-100, got {percentage}")
        modes = set(config.capture_modes) or {"InputAndOutput"}
        unknown = modes - set(CAPTURE_MODES)
        if unknown:
            raise ValidationError(f"DataCaptureConfig.CaptureMode {sorted(unknown)[0]!r} is not one of {', '.join(CAPTURE_MODES)}")
        return cls(
            destination=destination_path(config.destination_s3_uri),
            fraction=percentage / 100.0,
            capture_input=bool(modes & {"Input", "InputAndOutput"}),
            capture_output=bool(modes & {"Output", "InputAndOutput"}),
            csv_content_types=frozenset(_media_type(t) for t in config.csv_content_types),
            json_content_types=frozenset(_media_type(t) for t in config.json_content_types),
        )

    def encoding(self, content_type: str) -> str:
        """CSV or JSON when the body's media type is listed for it (CaptureContentTypeHeader), else BASE64."""
        media_type = _media_type(content_type)
        if media_type in self.csv_content_types:
            return "CSV"
        if media_type in self.json_content_types:
            return "JSON"
        return "BASE64"


class CaptureRecord:
    """One sampled invocation on one variant, as the event loop hands it over: references only.

    `output` is the response body, or a function the writer thread calls to make it (a shadow's
    answer encoded for the caller's Accept is made there, off the event loop).
    """

    __slots__ = ("policy", "endpoint", "variant", "inference_id", "time", "input", "input_type", "output",
                 "output_type", "size")

    def __init__(
        self, policy: CapturePolicy, endpoint: str, variant: str, inference_id: str, when: float,
        input: bytes, input_type: str, output: bytes | Callable[[], bytes] | None, output_type: str,
        output_size: int | None = None,
    ):
        self.policy = policy
        self.endpoint = endpoint
        self.variant = variant
        self.inference_id = inference_id
        self.time = when  # seconds since the epoch (UTC) when the answer was ready
        self.input = input
        self.input_type = input_type
        self.output = output
        self.output_type = output_type
        if output_size is None:
            output_size = len(output) if isinstance(output, (bytes, bytearray, memoryview)) else 0
        self.size = RECORD_OVERHEAD_BYTES + len(input) + output_size


def utc_parts(when: float) -> tuple[time.struct_time, int]:
    """(UTC time of the whole second, milliseconds) of `when`, truncated to the millisecond."""
    millis = int(when * 1000)
    seconds, ms = divmod(millis, 1000)
    return time.gmtime(seconds), ms


def inference_time(when: float) -> str:
    """`when` as SageMaker writes eventMetadata.inferenceTime: ``2026-11-30T01:02:03.456Z``."""
    utc, ms = utc_parts(when)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', utc)}.{ms:03d}Z"


def _part(policy: CapturePolicy, content_type: str, mode: str, body: bytes) -> dict:
    encoding = policy.encoding(content_type)
    if encoding != "BASE64":
        try:
            data = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            encoding = "BASE64"
    if encoding == "BASE64":
        data = base64.b64encode(body).decode("ascii")
    return {"observedContentType": content_type, "mode": mode, "data": data, "encoding": encoding}


def record_line(record: CaptureRecord, event_id: str | None = None) -> bytes:
    """The record as one line of SageMaker's capture format, with its newline."""
    policy = record.policy
    capture = {}
    if policy.capture_input:
        capture["endpointInput"] = _part(policy, record.input_type, "INPUT", record.input)
    if policy.capture_output:
        output = record.output
        if callable(output):
            output = output()
        capture["endpointOutput"] = _part(policy, record.output_type, "OUTPUT", output if output is not None else b"")
    line = {
        "captureData": capture,
        "eventMetadata": {
            "eventId": event_id or str(uuid.uuid4()),
            "inferenceId": record.inference_id,
            "inferenceTime": inference_time(record.time),
        },
        "eventVersion": "0",
    }
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


__all__ = [
    "CAPTURE_MODES", "CapturePolicy", "CaptureRecord", "MODEL_INFER_REQUEST_TYPE", "MODEL_INFER_RESPONSE_TYPE",
    "destination_path", "inference_time", "record_line", "utc_parts",
]
