"""InvokeEndpoint body codecs: request bodies -> one numpy array, model outputs -> a response body.

Content types (parameters such as ``; charset=utf-8`` are ignored, names are case-insensitive):

``application/x-npy``
    Request: one ``.npy`` array (``np.save``; pickles are refused, so object arrays are too).
    Response: the model's FIRST output as one ``.npy`` array.
``application/json``
    Request: a list of rows (``[[1, 2], [3, 4]]``) or ``{"instances": [...rows...]}``. A flat list
    of numbers is one row. Values must be numbers or booleans.
    Response: ``{"predictions": {"<output name>": <nested list>, ...}}`` with EVERY output of the
    model, in the model's output order.
``text/csv``
    Request: rows of numbers separated by commas, one row per line, no header.
    Response: the model's FIRST output, one row per line (a 1-D output gives one value per line,
    outputs of rank > 2 are flattened per row). Floats are written with enough digits to read
    back the same float32/float64 value.

JSON and CSV request bodies always decode to at least two dimensions (rows x values); the caller
casts the array to the model input's datatype. Every malformed body raises `ValidationError`.
"""

from __future__ import annotations

import io
import json

import numpy as np

from mve.errors import ValidationError

NPY = "application/x-npy"
JSON = "application/json"
CSV = "text/csv"
CONTENT_TYPES = (NPY, JSON, CSV)

# SageMaker's InvokeEndpoint limit on the request body.
MAX_BODY_BYTES = 6 * 1024 * 1024


def normalize_content_type(value: str, *, field: str = "ContentType") -> str:
    """The bare, lower-case media type of `value`; ValidationError unless it is one mve decodes."""
    media_type = value.split(";", 1)[0].strip().lower()
    if media_type not in CONTENT_TYPES:
        raise ValidationError(
            f"{field} '{value}' is not supported; use one of {', '.join(CONTENT_TYPES)}"
        )
    return media_type


def response_content_type(content_type: str, accept: str) -> str:
    """The response media type: `accept` when given (``*/*`` means "same as the request")."""
    if not accept.strip() or accept.split(";", 1)[0].strip() == "*/*":
        return content_type
    return normalize_content_type(accept, field="Accept")


def check_body_size(body: bytes) -> None:
    """ValidationError when a request body is empty or over 6 MB (6,291,456 bytes)."""
    if len(body) > MAX_BODY_BYTES:
        raise ValidationError(
            f"Request body of {len(body)} bytes is over the 6 MB limit ({MAX_BODY_BYTES} bytes)"
        )
    if not body:
        raise ValidationError("Request body is empty")


def decode(body: bytes, content_type: str) -> np.ndarray:
    """Decode a request body of a supported `content_type` into one numeric numpy array."""
    media_type = normalize_content_type(content_type)
    check_body_size(body)
    if media_type == NPY:
        array = _decode_npy(body)
    elif media_type == JSON:
        array = _decode_json(body)
    else:
        array = _decode_csv(body)
    if array.dtype.kind not in "biuf":
        raise ValidationError(f"{media_type} body holds {array.dtype} values; only numbers and booleans are accepted")
    return array


def _decode_npy(body: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValidationError(f"application/x-npy body is not a readable .npy array: {error}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise ValidationError("application/x-npy body must be one .npy array, not an .npz archive")
    if array.dtype.names is not None:
        raise ValidationError("application/x-npy body has a structured dtype; send one plain array")
    return array


def _decode_json(body: bytes) -> np.ndarray:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValidationError(f"application/json body is not valid JSON: {error}") from None
    except RecursionError:
        raise ValidationError("application/json body is nested too deeply; rows are lists of numbers") from None
    if isinstance(document, dict):
        if "instances" not in document:
            raise ValidationError('application/json body must be a list of rows or {"instances": [rows]}')
        document = document["instances"]
    if not isinstance(document, list) or not document:
        raise ValidationError("application/json body must hold a non-empty list of rows")
    try:
        array = np.array(document)
    except (ValueError, TypeError, RecursionError):
        raise ValidationError("application/json rows must all have the same length") from None
    if array.dtype.kind not in "biuf":
        raise ValidationError("application/json rows must hold only numbers, all rows of the same length")
    return np.atleast_2d(array)


def _decode_csv(body: bytes) -> np.ndarray:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("text/csv body is not UTF-8 text") from None
    if not text.strip():
        raise ValidationError("text/csv body has no rows")
    try:
        array = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise ValidationError(f"text/csv body must be rows of numbers with the same count per row: {error}") from None
    if array.size == 0:
        raise ValidationError("text/csv body has no rows")
    return array


def encode(outputs: dict[str, np.ndarray], accept: str) -> bytes:
    """Encode model outputs (name -> array, in the model's output order) as an `accept` body."""
    media_type = normalize_content_type(accept, field="Accept")
    if not outputs:
        raise ValidationError("the model returned no outputs")
    if media_type == JSON:
        predictions = {name: array.tolist() for name, array in outputs.items()}
        return json.dumps({"predictions": predictions}, default=_json_default).encode()
    first = next(iter(outputs.values()))
    if media_type == NPY:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(first), allow_pickle=False)
        return buffer.getvalue()
    return _encode_csv(first)


def _json_default(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode_csv(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        raise ValidationError("text/csv responses hold numbers only; this model's first output is BYTES")
    rows = array.reshape(-1, 1) if array.ndim <= 1 else array.reshape(array.shape[0], -1)
    if rows.dtype.kind == "b":
        rows = rows.astype(np.int8)
    if rows.dtype.kind in "iu":
        fmt = "%d"
    elif rows.dtype.itemsize <= 4:
        fmt = "%.9g"  # enough digits to read back the same float32
    else:
        fmt = "%.17g"
    buffer = io.StringIO()
    np.savetxt(buffer, rows, fmt=fmt, delimiter=",")
    return buffer.getvalue().encode()
