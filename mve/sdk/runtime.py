"""``mve.client("sagemaker-runtime")``: a proxy's InvokeEndpoint with boto3's shapes."""

from __future__ import annotations

import io
from typing import Iterator

from mve._proto import runtime_pb2, runtime_pb2_grpc
from mve.sdk.base import BaseClient


class StreamingBody:
    """The response body, read like botocore's StreamingBody (``read()``, ``iter_lines()``, ...)."""

    def __init__(self, data: bytes):
        self._raw = io.BytesIO(data)
        self._content_length = len(data)

    def read(self, amt: int | None = None) -> bytes:
        """Up to `amt` bytes, or all that is left."""
        return self._raw.read(amt) if amt is not None else self._raw.read()

    def readable(self) -> bool:
        """Always True: the body is in memory."""
        return True

    def iter_chunks(self, chunk_size: int = 1024) -> Iterator[bytes]:
        """The rest of the body in chunks of `chunk_size` bytes."""
        while chunk := self._raw.read(chunk_size):
            yield chunk

    def iter_lines(self, chunk_size: int = 1024, keepends: bool = False) -> Iterator[bytes]:
        """The rest of the body line by line."""
        for line in self._raw.read().splitlines(keepends):
            yield line

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_chunks()

    def close(self) -> None:
        """Release the buffer."""
        self._raw.close()

    def __len__(self) -> int:
        return self._content_length

    def __repr__(self) -> str:
        return f"<StreamingBody {self._content_length} bytes>"


def _body_bytes(body) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    data = body.read()
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _invoke_request(params: dict) -> runtime_pb2.InvokeEndpointRequest:
    return runtime_pb2.InvokeEndpointRequest(
        endpoint_name=params["EndpointName"],
        body=_body_bytes(params["Body"]),
        content_type=params.get("ContentType", ""),
        accept=params.get("Accept", ""),
        target_variant=params.get("TargetVariant", ""),
        inference_id=params.get("InferenceId", ""),
        custom_attributes=params.get("CustomAttributes", ""),
        routing_key=params.get("RoutingKey", ""),
    )


class SageMakerRuntimeClient(BaseClient):
    """A proxy (``mve.v1.EndpointRuntime``) with boto3's ``sagemaker-runtime`` shapes."""

    service_name = "sagemaker-runtime"

    def __init__(self, address: str, timeout: float = 60.0, security=None):
        super().__init__(address, timeout, security)
        self._stub = runtime_pb2_grpc.EndpointRuntimeStub(self._channel)

    def invoke_endpoint(self, **kwargs) -> dict:
        """InvokeEndpoint(EndpointName, Body, ContentType, Accept, TargetVariant, InferenceId,
        CustomAttributes[, RoutingKey]) -> {"Body": StreamingBody, "ContentType",
        "InvokedProductionVariant", "CustomAttributes"?, "InferenceId"?, "ResponseMetadata"}.

        Body is bytes, str (sent as UTF-8) or a file-like object with ``read()``. ``InferenceId`` is
        mve's own response key (boto3's response has none): the caller's InferenceId, or the one the
        proxy made for the invocation; it is what ``mve.client("experiments").send_feedback`` names.
        """
        response, metadata = self._call("InvokeEndpoint", self._stub.InvokeEndpoint, kwargs, _invoke_request)
        out = {
            "Body": StreamingBody(response.body),
            "ContentType": response.content_type,
            "InvokedProductionVariant": response.invoked_production_variant,
        }
        if response.custom_attributes:
            out["CustomAttributes"] = response.custom_attributes
        if response.inference_id:
            out["InferenceId"] = response.inference_id
        out["ResponseMetadata"] = metadata
        return out
