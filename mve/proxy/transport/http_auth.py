"""Who may call the proxy's HTTP door: admitted, or refused with the error SageMaker would answer.

The routing table says whether requests must carry an AWS Signature Version 4
(``RoutingTable.auth_required``) and carries each access key's SigV4 date keys, never a secret
(``RoutingTable.signing_keys``). `RequestAuth.admit` decides per request:

- no routing table yet: ServiceUnavailable (503): the proxy does not know yet whether requests
  must be signed, nor any key, so it never serves unauthenticated by accident;
- a table that requires signatures: `mve.sigv4.aiohttp_verify(request, body, keys)` checks the
  signature, the key id and the clock skew; its ``AuthError(code, message, http_status)``
  (UnrecognizedClientException, InvalidSignatureException, IncompleteSignature, ...) is answered
  as it is;
- a table that does not (the control plane runs with ``--auth none``): admitted.

`SigningSource` is the seam: the `Router` keeps the applied table's ``mve.sigv4.SigningKeys``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class AuthRefused(Exception):
    """A request the door refuses before it reaches the data plane: a rest-json error to answer."""

    def __init__(self, code: str, message: str, http_status: int):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class SigningKeys(Protocol):
    """The applied table's signing keys (``mve.sigv4.SigningKeys``): whether requests must be signed,
    and each access key's date key by UTC day (``YYYYMMDD``; None for a key or day not known)."""

    auth_required: bool

    def date_key(self, access_key_id: str, date: str) -> bytes | None: ...


class SigningSource(Protocol):
    """Where the proxy keeps what its last routing table said (the `Router`)."""

    has_table: bool  # whether any routing table has been applied
    signing_keys: SigningKeys  # the last table's


NO_TABLE_MESSAGE = (
    "The proxy has no routing table from the control plane yet, so it knows neither the endpoints nor the keys "
    "that may sign requests; retry shortly"
)


UNSIGNED_REFUSED_MESSAGE = (
    "This proxy requires a credential for invocations (--invoke-token-file or --tls-client-auth require), "
    "but the control plane runs with --auth none, so this HTTP door has no access keys to check signatures "
    "against: it serves no unsigned calls. Run the control plane with --auth sigv4, or invoke over gRPC."
)


class RequestAuth:
    """Admits a request (returns) or refuses it (`AuthRefused`), from what the last table said.

    `verify` is ``mve.sigv4.aiohttp_verify`` (loaded when first needed) and `auth_error` the
    exception type it raises; tests pass their own.
    """

    def __init__(
        self,
        source: SigningSource,
        *,
        verify: Callable | None = None,
        auth_error: type | None = None,
        credentials_required: bool = False,
    ):
        self._source = source
        self._verify = verify
        self._auth_error = auth_error if auth_error is not None else AuthRefused
        # True when the proxy's gRPC door requires a credential for invocations: this door then
        # never serves unsigned calls, even when the control plane runs --auth none.
        self._credentials_required = credentials_required

    def admit(self, request, body: bytes) -> None:
        """Return when `request` (with its `body`) may be served; raise `AuthRefused` otherwise."""
        source = self._source
        if not source.has_table:
            raise AuthRefused("ServiceUnavailable", NO_TABLE_MESSAGE, 503)
        keys = source.signing_keys
        if not keys.auth_required:
            if self._credentials_required:
                raise AuthRefused("MissingAuthenticationTokenException", UNSIGNED_REFUSED_MESSAGE, 403)
            return
        if self._verify is None:
            self._load_verifier()
        try:
            self._verify(request, body, keys)
        except self._auth_error as error:
            raise AuthRefused(error.code, error.message, error.http_status) from None

    def _load_verifier(self) -> None:
        try:
            from mve import sigv4
        except ImportError:
            raise AuthRefused(
                "ServiceUnavailable",
                "The control plane requires signed requests, but this proxy has no SigV4 verifier (mve.sigv4)",
                503,
            ) from None
        missing = sigv4.verifier_missing()  # botocore, whose signer computes the expected signature
        if missing is not None:
            raise AuthRefused("ServiceUnavailable", f"The control plane requires signed requests, but {missing}", 503)
        self._verify = sigv4.aiohttp_verify
        self._auth_error = sigv4.AuthError


__all__ = ["AuthRefused", "NO_TABLE_MESSAGE", "RequestAuth", "SigningKeys", "SigningSource"]
