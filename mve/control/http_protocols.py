"""The wire protocols botocore speaks to the control plane's APIs, as codecs guided by its shapes.

Which protocols a service speaks is read from the installed botocore's model (``metadata["protocols"]``,
else ``["protocol"]``); mve serves the two of them botocore can send to its services:

- ``json`` (AWS JSON 1.1 for SageMaker and Application Auto Scaling, 1.0 for CloudWatch, which
  botocore 1.44 picks for it first): ``POST /`` with ``X-Amz-Target: <targetPrefix>.<Operation>``;
  timestamps are epoch seconds, blobs base64; an error is ``{"__type": "<Name>", "message": "..."}``
  with an HTTP status.
- ``smithy-rpc-v2-cbor`` (CloudWatch; AWS SDKs that rank it first send it):
  ``POST /service/<targetPrefix>/operation/<Operation>`` with ``smithy-protocol: rpc-v2-cbor``; CBOR
  bodies, timestamps as tag 1 (epoch seconds), blobs as byte strings; an error is a CBOR map with
  ``__type``.

An error's ``__type`` is the name of the error's shape in botocore's model (the code itself when
unmodeled). A service marked ``awsQueryCompatible`` (CloudWatch) also gets
``x-amzn-query-error: <Code>;Sender|Receiver``: botocore reports that code (``InvalidParameterValue``,
as CloudWatch's query protocol named it) and picks the exception class by it.

A request body becomes the params dict mve's SDK takes (`decode_params`); the SDK's response dict
is written back with only the members of the operation's output shape (`encode_output`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import cbor2
from botocore.model import OperationModel, ServiceModel, Shape

from mve.sdk.params import parse_timestamp

JSON_PROTOCOL = "json"
CBOR_PROTOCOL = "smithy-rpc-v2-cbor"
# cbor2's own bound is 400; JSON's is the interpreter's recursion limit (json.loads raises RecursionError).
MAX_CBOR_DEPTH = 64


class WireError(Exception):
    """A body that cannot be read as the protocol's format (SerializationException, HTTP 400)."""

    code = "SerializationException"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ErrorReply:
    """An error as it goes on the wire, before a protocol writes it.

    `query_code` is the error's name in AWS's query protocol where it differs (a query-compatible
    service sends it in ``x-amzn-query-error``; botocore then reports it as the code).
    """

    code: str
    message: str
    status: int
    query_code: str = ""


@dataclass(frozen=True)
class WireReply:
    """An HTTP answer: status, headers and body."""

    status: int
    headers: dict[str, str]
    body: bytes


def _epoch_seconds(value) -> int | float:
    moment = parse_timestamp(value)
    if moment is None:
        raise TypeError(f"not a timestamp: {value!r}")
    seconds = int(moment.replace(microsecond=0).timestamp())
    return seconds if moment.microsecond == 0 else (seconds * 10**6 + moment.microsecond) / 10**6


class Protocol:
    """What every protocol does: decode a request body into params, encode an output or an error."""

    name = ""
    content_type = ""
    # The status of UnknownOperationException: AWS JSON answers 400; Smithy RPC v2 a 404 (no such path).
    unknown_operation_status = 400

    def decode_params(self, body: bytes, operation: OperationModel) -> dict:
        """The params dict of a request body (WireError if the body is not the protocol's format)."""
        raw = self._load(body)
        if not isinstance(raw, dict):
            raise WireError(f"the request body must be a {self.name} object (a map), got {type(raw).__name__}")
        shape = operation.input_shape
        return self._read_structure(shape, raw) if shape is not None else {}

    def encode_output(self, value: dict, operation: OperationModel, request_id: str) -> WireReply:
        """A 200 answer with the members of the operation's output shape found in `value`."""
        shape = operation.output_shape
        document = self._write(shape, value) if shape is not None else {}
        return WireReply(200, self._headers(request_id), self._dump(document))

    def encode_error(self, error: ErrorReply, service: ServiceModel | None, request_id: str) -> WireReply:
        """`error` in this protocol's format, ``__type`` naming its modeled shape (see the module docstring)."""
        shape = service.shape_for_error_code(error.code) if service is not None else None
        type_name = shape.name if shape is not None else error.code
        headers = self._headers(request_id)
        if service is not None and service.is_query_compatible:
            fault = "Receiver" if error.status >= 500 else "Sender"
            headers["x-amzn-query-error"] = f"{error.query_code or error.code};{fault}"
        return WireReply(error.status, headers, self._dump({"__type": type_name, "message": error.message}))

    def _headers(self, request_id: str) -> dict[str, str]:
        return {"Content-Type": self.content_type, "x-amzn-RequestId": request_id}

    # Reading: walk the value along the shape, converting the protocol's timestamps and blobs.
    # Members the shape does not know are kept, so that mve's SDK refuses them by name.
    def _read(self, shape: Shape, value):
        if value is None:
            return None
        kind = shape.type_name
        if kind == "structure" and not shape.is_document_type and isinstance(value, dict):
            return self._read_structure(shape, value)
        if kind == "list" and isinstance(value, list):
            return [self._read(shape.member, item) for item in value if item is not None]
        if kind == "map" and isinstance(value, dict):
            return {key: self._read(shape.value, item) for key, item in value.items() if item is not None}
        if kind == "timestamp":
            return self._read_timestamp(value)
        if kind == "blob":
            return self._read_blob(value)
        return value

    def _read_structure(self, shape: Shape, value: dict) -> dict:
        names = {member.serialization.get("name", name): name for name, member in shape.members.items()}
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise WireError(f"member names must be strings, got {type(key).__name__} {key!r:.40}")
            if item is None:
                continue
            name = names.get(key, key)
            member = shape.members.get(name)
            out[name] = self._read(member, item) if member is not None else item
        return out

    def _read_timestamp(self, value):
        moment = parse_timestamp(value)
        return moment if moment is not None else value  # the SDK names a bad one

    def _read_blob(self, value):
        return value

    # Writing: only the shape's members; timestamps, blobs and numbers in the protocol's form.
    def _write(self, shape: Shape, value):
        kind = shape.type_name
        if kind == "structure":
            if shape.is_document_type:
                return value
            out = {}
            for name, member in shape.members.items():
                item = value.get(name) if isinstance(value, dict) else None
                if item is not None:
                    out[self._member_name(member, name)] = self._write(member, item)
            return out
        if kind == "list":
            return [self._write(shape.member, item) for item in value if item is not None]
        if kind == "map":
            return {str(key): self._write(shape.value, item) for key, item in value.items() if item is not None}
        if kind == "timestamp":
            return self._write_timestamp(value)
        if kind == "blob":
            return self._write_blob(value)
        if kind in ("double", "float"):
            return float(value)
        if kind in ("integer", "long"):
            return int(value)
        if kind == "boolean":
            return bool(value)
        return value

    def _member_name(self, member: Shape, name: str) -> str:
        return name

    def _load(self, body: bytes):
        raise NotImplementedError

    def _dump(self, document) -> bytes:
        raise NotImplementedError

    def _write_timestamp(self, value):
        raise NotImplementedError

    def _write_blob(self, value):
        raise NotImplementedError


class JsonProtocol(Protocol):
    """AWS JSON 1.1 (botocore's ``JSONSerializer`` / ``JSONParser``)."""

    name = "JSON"
    content_type = "application/x-amz-json-1.1"

    def __init__(self, json_version: str = "1.1"):
        self.content_type = f"application/x-amz-json-{json_version}"

    def _load(self, body: bytes):
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as error:
            raise WireError(f"the request body is not valid JSON: {_short(error)}") from None

    def _dump(self, document) -> bytes:
        return json.dumps(document, separators=(",", ":"), allow_nan=True).encode()

    def _member_name(self, member: Shape, name: str) -> str:
        return member.serialization.get("name", name)

    def _read_blob(self, value):
        if not isinstance(value, str):
            return value
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise WireError("a blob member is not valid base64") from None

    def _write_timestamp(self, value):
        return _epoch_seconds(value)

    def _write_blob(self, value):
        data = value.encode() if isinstance(value, str) else bytes(value)
        return base64.b64encode(data).decode("ascii")


class CborProtocol(Protocol):
    """Smithy RPC v2 CBOR (botocore's ``RpcV2CBORSerializer`` / ``RpcV2CBORParser``)."""

    name = "CBOR"
    content_type = "application/cbor"
    unknown_operation_status = 404

    def _headers(self, request_id: str) -> dict[str, str]:
        return {**super()._headers(request_id), "smithy-protocol": "rpc-v2-cbor"}

    def _load(self, body: bytes):
        if not body:
            return {}  # an operation without input may send no body at all
        try:
            return cbor2.loads(body, max_depth=MAX_CBOR_DEPTH)
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as error:
            raise WireError(f"the request body is not valid CBOR: {_short(error)}") from None

    def _dump(self, document) -> bytes:
        return cbor2.dumps(document)

    def _write_timestamp(self, value):
        return cbor2.CBORTag(1, _epoch_seconds(value))

    def _write_blob(self, value):
        return value.encode() if isinstance(value, str) else bytes(value)


def _short(error: Exception, limit: int = 200) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def protocols_for(service: ServiceModel) -> dict[str, Protocol]:
    """The codecs of the protocols `service` speaks that mve serves, by botocore's protocol name."""
    names = service.metadata.get("protocols") or [service.metadata["protocol"]]
    codecs: dict[str, Protocol] = {}
    for name in names:
        if name == JSON_PROTOCOL:
            codecs[name] = JsonProtocol(service.metadata.get("jsonVersion", "1.1"))
        elif name == CBOR_PROTOCOL:
            codecs[name] = CborProtocol()
    if service.resolved_protocol not in codecs:
        raise ValueError(
            f"{service.service_name}: botocore sends {service.resolved_protocol!r}, which mve's HTTP face does not speak"
        )
    return codecs


__all__ = [
    "CBOR_PROTOCOL", "CborProtocol", "ErrorReply", "JSON_PROTOCOL", "JsonProtocol", "Protocol", "WireError",
    "WireReply", "protocols_for",
]
