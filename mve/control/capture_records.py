"""One line of a capture file -> the invocation it records: id, time, and the model's outputs.

Lines are SageMaker's capture records, as the proxies write them (`mve.proxy.capture`)::

    {"captureData": {"endpointInput": {...}, "endpointOutput": {"observedContentType": "application/json",
     "mode": "OUTPUT", "data": "...", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "...", "inferenceId": "...", "inferenceTime": "2026-11-30T01:02:03.456Z"},
     "eventVersion": "0"}

The output body is read by its observedContentType, whatever its encoding (CSV, JSON or BASE64):

- ``application/json``: InvokeEndpoint's ``{"predictions": {"<output>": [...], ...}}``, every output
  by name;
- ``application/x-npy`` and ``text/csv``: the model's first output only, its name unknown ("");
- ``application/x-protobuf; messageType=inference.ModelInferResponse``: a serialised Open Inference
  Protocol response, every output by name with its datatype.

Which output is the predicted label and which the positive class's score follows
GetExperimentReportRequest: `predicted_labels` and `positive_scores`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from mve._proto import grpc_predict_v2_pb2 as v2
from mve.tensors import contents_to_numpy, raw_to_numpy

#: The name under which the single output of an npy or csv answer is kept.
UNNAMED = ""
DEFAULT_LABEL_OUTPUT = "label"
DEFAULT_SCORE_OUTPUT = "probabilities"
DEFAULT_POSITIVE_LABEL = "1"
_INTEGER_CSV = re.compile(rb"^[\s,+\-0-9]*$")


class MalformedRecord(ValueError):
    """A capture line that is not a readable capture record (it is counted and skipped)."""


@dataclass(frozen=True)
class CapturedInvocation:
    """What one capture record says: the invocation's id and time, and its outputs.

    `outputs` maps each output's name to its array (one row per row of the request), in the
    model's order; None when the record holds no output or an output body mve cannot read.
    """

    inference_id: str
    time: float
    outputs: dict[str, np.ndarray] | None
    output_problem: str = ""

    @property
    def rows(self) -> int:
        """Rows of the invocation (the first dimension of its first output; 0 without outputs)."""
        if not self.outputs:
            return 0
        first = next(iter(self.outputs.values()))
        return int(first.shape[0]) if first.ndim else 1


def parse_line(line: bytes) -> CapturedInvocation:
    """The invocation a capture line records; MalformedRecord when the line is not a capture record."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedRecord(f"not JSON: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("eventMetadata"), dict):
        raise MalformedRecord("no eventMetadata object")
    metadata = record["eventMetadata"]
    inference_id = metadata.get("inferenceId", "")
    if not isinstance(inference_id, str):
        raise MalformedRecord("eventMetadata.inferenceId is not a string")
    when = parse_inference_time(metadata.get("inferenceTime"))
    capture = record.get("captureData")
    if not isinstance(capture, dict):
        raise MalformedRecord("no captureData object")
    output = capture.get("endpointOutput")
    if output is None:
        return CapturedInvocation(inference_id, when, None, "the record holds no output (capture mode Input)")
    if not isinstance(output, dict):
        raise MalformedRecord("captureData.endpointOutput is not an object")
    try:
        outputs = decode_output(output)
    except (ValueError, TypeError, KeyError, binascii.Error) as error:
        return CapturedInvocation(inference_id, when, None, f"output not readable: {error}")
    return CapturedInvocation(inference_id, when, outputs)


def parse_inference_time(text) -> float:
    """Seconds since the epoch of an inferenceTime such as ``2026-11-30T01:02:03.456Z`` (UTC)."""
    if not isinstance(text, str):
        raise MalformedRecord("eventMetadata.inferenceTime is missing")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedRecord(f"eventMetadata.inferenceTime {text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _body(part: dict) -> bytes:
    data = part.get("data", "")
    if not isinstance(data, str):
        raise ValueError("data is not a string")
    if part.get("encoding", "BASE64") == "BASE64":
        return base64.b64decode(data, validate=True)
    return data.encode("utf-8")


def decode_output(part: dict) -> dict[str, np.ndarray]:
    """The outputs in an endpointOutput part (ValueError when its body is not what its type says)."""
    content_type = str(part.get("observedContentType", ""))
    media_type = content_type.split(";", 1)[0].strip().lower()
    body = _body(part)
    if media_type == "application/json":
        return _json_outputs(body)
    if media_type == "application/x-npy":
        array = np.load(io.BytesIO(body), allow_pickle=False)
        if not isinstance(array, np.ndarray):
            raise ValueError("an .npz archive, not one array")
        return {UNNAMED: array}
    if media_type == "text/csv":
        return {UNNAMED: _csv_output(body)}
    if media_type == "application/x-protobuf" and "inference.modelinferresponse" in content_type.lower():
        return _model_infer_outputs(body)
    raise ValueError(f"observedContentType {content_type!r} is not one mve answers with")


def _json_outputs(body: bytes) -> dict[str, np.ndarray]:
    document = json.loads(body)
    predictions = document.get("predictions") if isinstance(document, dict) else None
    if not isinstance(predictions, dict):
        raise ValueError('the JSON answer has no {"predictions": {...}} object')
    outputs = {}
    for name, values in predictions.items():
        array = np.asarray(values)
        if array.dtype == object:
            raise ValueError(f"output {name!r} is ragged")
        outputs[name] = array
    return outputs


def _csv_output(body: bytes) -> np.ndarray:
    if not body.strip():
        raise ValueError("empty CSV answer")
    dtype = np.int64 if _INTEGER_CSV.match(body) else np.float64
    return np.loadtxt(io.BytesIO(body), delimiter=",", dtype=dtype, ndmin=2)


def _model_infer_outputs(body: bytes) -> dict[str, np.ndarray]:
    response = v2.ModelInferResponse()
    response.ParseFromString(body)
    outputs = {}
    for i, tensor in enumerate(response.outputs):
        if i < len(response.raw_output_contents):
            array = raw_to_numpy(response.raw_output_contents[i], tensor.datatype, list(tensor.shape), tensor.name)
        else:
            array = contents_to_numpy(tensor.contents, tensor.datatype, list(tensor.shape), tensor.name)
        if array.dtype == object:
            array = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.reshape(-1)],
                             dtype=str).reshape(array.shape)
        outputs[tensor.name] = array
    return outputs


# ---------------------------------------------------------------- label and score rules


def _is_integral(array: np.ndarray) -> bool:
    return array.dtype.kind in "biu"


def _per_row(array: np.ndarray) -> np.ndarray | None:
    """A 1-D view with one value per row, or None when rows hold several values."""
    if array.ndim == 0:
        return array.reshape(1)
    if array.ndim == 1:
        return array
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    return None


def label_text(value) -> str:
    """A predicted label as text, as feedback sends ground truth: 1, 0, "benign" (booleans as 1 and 0)."""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


def choose_label_output(outputs: dict[str, np.ndarray], label_output: str = "") -> str | None:
    """The output holding the predicted label: `label_output` when named, else one named "label",
    else the first integer output (the single output of an npy or csv answer when it is integral)."""
    if label_output:
        return label_output if label_output in outputs else None
    if DEFAULT_LABEL_OUTPUT in outputs:
        return DEFAULT_LABEL_OUTPUT
    return next((name for name, array in outputs.items() if _is_integral(array)), None)


def predicted_labels(outputs: dict[str, np.ndarray] | None, label_output: str = "") -> list[str] | None:
    """The predicted label of each row as text; None when no output holds one label per row."""
    if not outputs:
        return None
    name = choose_label_output(outputs, label_output)
    if name is None:
        return None
    rows = _per_row(outputs[name])
    if rows is None:
        return None
    return [label_text(v) for v in rows.tolist()]


def _score_column(array: np.ndarray, positive_label: str) -> np.ndarray | None:
    if array.dtype.kind != "f":
        return None
    single = _per_row(array)
    if single is not None:
        return single
    if array.ndim != 2:
        return None
    # A column per class: the positive label names its column when it is a class index.
    if positive_label.isdigit() and int(positive_label) < array.shape[1]:
        return array[:, int(positive_label)]
    return array[:, 1] if array.shape[1] == 2 else None


def positive_scores(
    outputs: dict[str, np.ndarray] | None, score_output: str = "", positive_label: str = DEFAULT_POSITIVE_LABEL
) -> list[float] | None:
    """The positive class's score of each row; None without a score output.

    `score_output` when named, else the output "probabilities", else the first single-column float
    output. A score output with a column per class gives the positive label's column (column 1 for
    the default label "1").
    """
    if not outputs:
        return None
    if score_output:
        name = score_output if score_output in outputs else None
    elif DEFAULT_SCORE_OUTPUT in outputs:
        name = DEFAULT_SCORE_OUTPUT
    else:
        name = next(
            (n for n, a in outputs.items() if a.dtype.kind == "f" and _per_row(a) is not None), None
        )
    if name is None:
        return None
    column = _score_column(outputs[name], positive_label or DEFAULT_POSITIVE_LABEL)
    return None if column is None else [float(v) for v in column.tolist()]


# ---------------------------------------------------------------- compact storage of outputs


def pack_outputs(outputs: dict[str, np.ndarray]) -> str:
    """Every output as compact JSON: numbers as base64 of their little-endian bytes, text as lists."""
    packed = {}
    for name, array in outputs.items():
        if array.dtype.kind in "biuf":
            little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            packed[name] = [little.dtype.str, list(array.shape), base64.b64encode(little.tobytes()).decode("ascii")]
        else:
            packed[name] = ["text", list(array.shape), [str(v) for v in array.reshape(-1).tolist()]]
    return json.dumps(packed, separators=(",", ":"))


def unpack_outputs(text: str) -> dict[str, np.ndarray]:
    """The outputs `pack_outputs` stored."""
    outputs = {}
    for name, (dtype, shape, data) in json.loads(text).items():
        if dtype == "text":
            outputs[name] = np.array(data, dtype=str).reshape(shape)
        else:
            outputs[name] = np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape)
    return outputs
