"""What every client shares: one blocking gRPC channel (TLS when a CA is known), the bearer token on
every call, deadlines, validation and error translation."""

from __future__ import annotations

import grpc

from mve.sdk import params as shapes
from mve.sdk.exceptions import ClientError, ClientExceptions, new_request_id, response_metadata, translate_rpc_error
from mve.sdk.security import ClientSecurity, resolve_client_security, warn_if_token_in_the_clear

# Bodies go up to 6 MB; leave room for the envelope.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def _check_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be HOST:PORT with a port in 1-65535, got {address!r}")
    return address


class BaseClient:
    """A synchronous client over one gRPC channel; every call has a deadline of `timeout` seconds.

    `security` holds the TLS files and token to use (`mve.sdk.security`); None resolves them as
    ``mve.client`` does with no keywords (environment, then a secure data dir, else plaintext).
    """

    service_name = ""
    # The parameter shapes this client's operations are validated against (None: SageMaker's).
    _shapes: dict | None = None

    def __init__(self, address: str, timeout: float, security: ClientSecurity | None = None):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.address = _check_address(address)
        self.timeout = float(timeout)
        self.exceptions = ClientExceptions()
        self.security = security if security is not None else resolve_client_security()
        warn_if_token_in_the_clear(self.security, self.address)
        self._auth_metadata = self.security.metadata
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if self.security.secure:
            self._channel = grpc.secure_channel(address, self.security.channel_credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)

    def _call(self, operation: str, method, params: dict, build):
        """Validate `params`, send ``build(params)`` through `method`, return (response, request id)."""
        shapes.validate(operation, params, self._shapes)
        request = build(params)
        request_id = new_request_id()
        try:
            response = method(
                request, timeout=self.timeout, metadata=(("x-mve-request-id", request_id), *self._auth_metadata)
            )
        except grpc.RpcError as error:
            raise self._client_error(
                translate_rpc_error(
                    error, operation=operation, address=self.address, timeout=self.timeout, request_id=request_id,
                    service=self.service_name,
                )
            ) from None
        return response, response_metadata(request_id)

    def _client_error(self, error: Exception) -> Exception:
        """`error` as this client's own class for its code (boto3 has per-service exception classes)."""
        if not isinstance(error, ClientError):
            return error
        cls = self.exceptions.from_code(error.response.get("Error", {}).get("Code", ""))
        if cls is ClientError or type(error) is cls:
            return error
        return cls(error.response, error.operation_name)

    def can_paginate(self, operation_name: str) -> bool:
        """Whether `operation_name` (snake_case) has a paginator (the list_* calls)."""
        return operation_name in getattr(self, "_paginated", ())

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        tls = " (TLS)" if self.security.secure else ""
        return f"<{type(self).__name__} {self.service_name} at {self.address}{tls}>"


def operation_method(client: str, service: str, method_name: str, operation: str, convert):
    """A client method for `operation`: boto3's keyword arguments in, its response dict out.

    `convert` is the service's conversion module (``build_request``, ``convert_response``).
    """

    def method(self, **kwargs) -> dict:
        stub_method = getattr(self._stub, operation)
        response, metadata = self._call(operation, stub_method, kwargs, lambda p: convert.build_request(operation, p))
        out = convert.convert_response(operation, response)
        out["ResponseMetadata"] = metadata
        return out

    method.__name__ = method_name
    method.__qualname__ = f"{client}.{method_name}"
    method.__doc__ = f"{operation}, as boto3's ``{service}.{method_name}``: keyword arguments in, a dict out."
    return method
