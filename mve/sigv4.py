"""AWS Signature Version 4 verification for mve's HTTP faces (boto3 and the AWS CLI sign every call).

The expected signature is computed by botocore's own `SigV4Auth` (canonical request, string to
sign, signing-key chain), from the request as received; only the start of the key chain differs:
it starts from the *date key* HMAC-SHA256("AWS4" + secret, "YYYYMMDD") instead of the secret, so
that a proxy can verify signatures with the date keys the routing table carries and never sees a
secret. Signatures are compared with `hmac.compare_digest`.

Interface used by the HTTP faces (control plane ``mve/control/http_*.py``, proxy
``mve/proxy/transport/http_runtime.py``)::

    from mve.sigv4 import AuthError, SigningKeys, aiohttp_verify

    keys: SigningKeys = router.signing_keys            # proxy: the applied routing table's
    keys: SigningKeys = service.routes.signing_keys    # control plane: the table it publishes
    if keys.auth_required:
        try:
            access_key_id = aiohttp_verify(request, body, keys)
        except AuthError as error:
            # answer error.http_status with error.code / error.message in the face's protocol
            ...

- `verify(method, url, headers, body, keys, *, now=None, max_skew_s=300, services=SIGNING_SERVICES)`
  returns the access key id of a correctly signed request or raises `AuthError`.
- `aiohttp_verify(request, body, keys, now=None, services=SIGNING_SERVICES)`: the same for an
  ``aiohttp.web.Request`` (URL rebuilt as the client signed it: its Host header, raw path and query).
- `DateKeys` is the protocol of a key source: ``date_key(access_key_id, "YYYYMMDD") -> bytes | None``.
  `SigningKeys` implements it from a routing table's ``signing_keys`` and carries ``auth_required``.
- `date_key(secret, date)` derives a date key.

Errors (`AuthError.code`, `.http_status`, `.message`), as AWS's JSON services (SageMaker is JSON 1.1,
its runtime REST-JSON) put them in ``__type`` / ``x-amzn-ErrorType``:

| case | code | status |
| --- | --- | --- |
| no Authorization header | MissingAuthenticationTokenException | 403 |
| malformed Authorization, no X-Amz-Date/Date, host not signed, unsigned payload | IncompleteSignatureException | 400 |
| unknown access key id (or a session token: mve issues none) | UnrecognizedClientException | 403 |
| wrong signature, scope date != request date, foreign service, skew over 5 minutes | InvalidSignatureException | 403 |

AWS's common-errors pages list the query-protocol spellings (IncompleteSignature,
MissingAuthenticationToken, InvalidClientTokenId, SignatureDoesNotMatch); JSON services answer
with the ``...Exception`` names above (e.g. Cloud9 and DynamoDB answer
``{"__type": "IncompleteSignatureException"}`` with HTTP 400). `QUERY_CODES` maps each to its
query-protocol spelling for a face that speaks that protocol.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Collection, Iterable, Mapping, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from aiohttp import web

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
# The signing names of the services mve's HTTP faces speak: sagemaker (control API and the runtime),
# application-autoscaling, and monitoring (CloudWatch's endpointPrefix; its model has no signingName).
SIGNING_SERVICES = frozenset({"sagemaker", "application-autoscaling", "monitoring"})
MAX_SKEW_S = 300.0

MISSING_TOKEN = "MissingAuthenticationTokenException"
INCOMPLETE_SIGNATURE = "IncompleteSignatureException"
UNRECOGNIZED_CLIENT = "UnrecognizedClientException"
INVALID_SIGNATURE = "InvalidSignatureException"
# The same errors as AWS's query-protocol services spell them.
QUERY_CODES = {
    MISSING_TOKEN: "MissingAuthenticationToken",
    INCOMPLETE_SIGNATURE: "IncompleteSignature",
    UNRECOGNIZED_CLIENT: "InvalidClientTokenId",
    INVALID_SIGNATURE: "SignatureDoesNotMatch",
}
_STATUS = {MISSING_TOKEN: 403, INCOMPLETE_SIGNATURE: 400, UNRECOGNIZED_CLIENT: 403, INVALID_SIGNATURE: 403}

BAD_TOKEN_MESSAGE = "The security token included in the request is invalid."
MISMATCH_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_TIMESTAMP = re.compile(r"^\d{8}T\d{6}Z$")
_DATE = re.compile(r"^\d{8}$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class AuthError(Exception):
    """A request refused by signature checking: ``code`` (AWS's error name), ``message``, ``http_status``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = _STATUS[code]

    @property
    def query_code(self) -> str:
        """The same error as AWS's query-protocol services name it (IncompleteSignature, ...)."""
        return QUERY_CODES[self.code]

    def __repr__(self) -> str:
        return f"AuthError({self.code}: {self.message!r})"


class DateKeys(Protocol):
    """Where a verifier finds an access key's date key."""

    def date_key(self, access_key_id: str, date: str) -> bytes | None:
        """HMAC-SHA256("AWS4" + secret, date) of the key for that UTC day (YYYYMMDD); None when unknown."""


def date_key(secret: str, date: str) -> bytes:
    """SigV4's date key: HMAC-SHA256("AWS4" + secret, "YYYYMMDD")."""
    return hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class SigningKeys:
    """The date keys requests are checked against, and whether they are checked at all.

    Built from a routing table (`from_table`): its ``auth_required`` and ``signing_keys``. Immutable:
    a new table makes a new object, swapped in whole.
    """

    auth_required: bool = True
    keys: Mapping[tuple[str, str], bytes] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table) -> "SigningKeys":
        """The signing keys of an ``mve.v1.RoutingTable``."""
        return cls.from_signing_keys(table.auth_required, table.signing_keys)

    @classmethod
    def from_signing_keys(cls, auth_required: bool, signing_keys: Iterable) -> "SigningKeys":
        """From ``SigningKey`` messages (or anything with access_key_id, date and date_key)."""
        return cls(auth_required, {(k.access_key_id, k.date): bytes(k.date_key) for k in signing_keys})

    def date_key(self, access_key_id: str, date: str) -> bytes | None:
        """The key's date key for `date`, or None (`DateKeys`)."""
        return self.keys.get((access_key_id, date))

    @property
    def access_key_ids(self) -> frozenset[str]:
        """The access keys these date keys belong to."""
        return frozenset(key_id for key_id, _ in self.keys)


# Fail closed: before any table arrives, nothing signed can pass (no keys) and nothing unsigned either.
NO_KEYS = SigningKeys(auth_required=True)
AUTH_OFF = SigningKeys(auth_required=False)


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str


@functools.cache
def _signer_class():
    """botocore's SigV4 signer, subclassed on first use (botocore is imported only by a verifying process)."""
    from botocore.auth import SigV4Auth, _host_from_url

    class _DateKeySigner(SigV4Auth):
        """botocore's SigV4 signer with the client's scope, the client's signed headers, and a date key.

        The canonical request and string to sign are botocore's own code. The headers are exactly those
        the client listed in SignedHeaders (botocore's client-side blacklist, user-agent and the like,
        is for choosing them, not for checking them); the payload hash is the received body's, computed
        once; the key chain starts from the date key.
        """

        def __init__(self, auth: _Authorization, key: bytes, payload_hash: str, headers: dict[str, list[str]]):
            super().__init__(credentials=None, service_name=auth.service, region_name=auth.region)
            self._auth = auth
            self._key = key
            self._payload_hash = payload_hash
            self._headers = headers

        def headers_to_sign(self, request):
            signed = _SignedHeaders()
            for name in self._auth.signed_headers:
                values = self._headers.get(name)
                if not values and name == "host":
                    values = [_host_from_url(request.url)]
                signed[name] = values or []
            return signed

        def payload(self, request):
            return self._payload_hash

        def signature(self, string_to_sign, request):
            signing_key = _signing_key(self._key, self._region_name, self._service_name)
            return self._sign(signing_key, string_to_sign, hex=True)

    return _DateKeySigner


class _SignedHeaders(dict):
    """Signed header name -> its values, read by botocore as its HTTPHeaders (names, `get_all`),
    without the cost of an email.message per request."""

    def get_all(self, name, failobj=None):
        return self.get(name, failobj)


_SIGNING_KEYS: dict[tuple[bytes, str, str], bytes] = {}
_SIGNING_KEYS_MAX = 4096


def _signing_key(key: bytes, region: str, service: str) -> bytes:
    """HMAC chain date key -> region -> service -> "aws4_request", remembered (a few per key and day)."""
    cache_key = (key, region, service)
    signing = _SIGNING_KEYS.get(cache_key)
    if signing is None:
        k_region = hmac.new(key, region.encode(), hashlib.sha256).digest()
        k_service = hmac.new(k_region, service.encode(), hashlib.sha256).digest()
        signing = hmac.new(k_service, TERMINATOR.encode(), hashlib.sha256).digest()
        if len(_SIGNING_KEYS) >= _SIGNING_KEYS_MAX:
            _SIGNING_KEYS.clear()
        _SIGNING_KEYS[cache_key] = signing
    return signing


def _incomplete(message: str) -> AuthError:
    return AuthError(INCOMPLETE_SIGNATURE, message)


def _parse_authorization(value: str) -> _Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(
            f"Unsupported authorization algorithm {algorithm[:40]!r}: mve accepts AWS Signature Version 4 "
            f"({ALGORITHM}) in the Authorization header."
        )
    params: dict[str, str] = {}
    for part in rest.split(","):
        part = part.strip()
        if not part:
            continue
        name, equals, param = part.partition("=")
        if not equals:
            raise _incomplete(f"{part[:80]!r} not a valid key=value pair (missing equal-sign) in Authorization header.")
        params[name.strip()] = param.strip()
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if not params.get(name)]
    if missing:
        raise _incomplete(" ".join(f"Authorization header requires '{name}' parameter." for name in missing))
    scope = params["Credential"].split("/")
    if len(scope) != 5 or not all(scope):
        raise _incomplete(
            "Credential must have the form ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request, "
            f"got {len(scope)} parts."
        )
    if not _DATE.match(scope[1]):
        raise _incomplete(f"Credential scope date must be YYYYMMDD, got {scope[1][:20]!r}.")
    signed = tuple(params["SignedHeaders"].split(";"))
    if any(not name or name != name.strip().lower() for name in signed):
        raise _incomplete("SignedHeaders must be lower-case header names separated by ';'.")
    if "host" not in signed:
        raise _incomplete("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    return _Authorization(scope[0], scope[1], scope[2], scope[3], scope[4], signed, params["Signature"])


def _request_time(headers: dict[str, list[str]]) -> tuple[str, float]:
    """(SigV4 timestamp YYYYMMDDTHHMMSSZ, epoch seconds) from X-Amz-Date, else Date."""
    if "x-amz-date" in headers:
        amz_date = headers["x-amz-date"][0].strip()
        if not _TIMESTAMP.match(amz_date):
            raise _incomplete(f"X-Amz-Date must be in ISO-8601 basic format YYYYMMDDTHHMMSSZ, got {amz_date[:40]!r}.")
        try:
            moment = datetime(
                int(amz_date[0:4]), int(amz_date[4:6]), int(amz_date[6:8]),
                int(amz_date[9:11]), int(amz_date[11:13]), int(amz_date[13:15]), tzinfo=timezone.utc,
            )
        except ValueError:
            raise _incomplete(f"X-Amz-Date {amz_date!r} is not a valid date and time.") from None
        return amz_date, moment.timestamp()
    if "date" not in headers:
        raise _incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    http_date = headers["date"][0]
    try:
        moment = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        raise _incomplete(f"Date header {http_date[:40]!r} is not an HTTP date.") from None
    if moment.tzinfo is None:  # an HTTP date is GMT even when it does not say so
        moment = moment.replace(tzinfo=timezone.utc)
    epoch = moment.timestamp()
    return _basic(epoch), epoch


def _basic(epoch: float) -> str:
    return time.strftime(_TIMESTAMP_FORMAT, time.gmtime(epoch))


def _check_skew(timestamp: str, sent: float, now: float, max_skew_s: float) -> None:
    minutes = f"{max_skew_s / 60:g} min."
    if sent < now - max_skew_s:
        raise AuthError(
            INVALID_SIGNATURE,
            f"Signature expired: {timestamp} is now earlier than {_basic(now - max_skew_s)} "
            f"({_basic(now)} - {minutes})",
        )
    if sent > now + max_skew_s:
        raise AuthError(
            INVALID_SIGNATURE,
            f"Signature not yet current: {timestamp} is still later than {_basic(now + max_skew_s)} "
            f"({_basic(now)} + {minutes})",
        )


def _payload_hash(headers: dict[str, list[str]], body: bytes) -> str:
    """The body's SHA-256 (hex); an X-Amz-Content-SHA256 header, which botocore would take as it is,
    must be that same hash."""
    actual = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
    if "x-amz-content-sha256" in headers:
        claimed = headers["x-amz-content-sha256"][0].strip()
        if claimed == "UNSIGNED-PAYLOAD" or claimed.startswith("STREAMING-"):
            raise _incomplete(f"mve requires a signed payload; X-Amz-Content-SHA256 {claimed[:60]!r} is not accepted.")
        if not hmac.compare_digest(claimed.lower().encode(), actual.encode()):
            raise AuthError(
                INVALID_SIGNATURE, "The provided 'x-amz-content-sha256' header does not match what was computed."
            )
    return actual


def _check_path(url: str) -> None:
    """Refuse paths whose '.', '..' or empty segments the canonical form would erase.

    SigV4 signs the path with dot segments and repeated slashes removed, so two different request
    paths would share one signature; boto3 never sends such a path.
    """
    from botocore.utils import normalize_url_path

    path = urlsplit(url).path or "/"
    if normalize_url_path(path) != path:
        raise _incomplete("The request path must not contain '.', '..' or empty segments.")


def verify(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    keys: DateKeys,
    *,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
    services: Collection[str] = SIGNING_SERVICES,
) -> str:
    """The access key id that signed this request; `AuthError` when it is not correctly signed.

    `url` is the URL as the client signed it (scheme://host[:port]/raw/path?raw=query), `headers`
    the received headers (a plain mapping, or a multidict whose ``items()`` repeats a header sent
    several times), `body` the exact bytes received. Any region is accepted in the credential
    scope; its service must be one of `services`.
    """
    received: dict[str, list[str]] = {}
    for name, value in headers.items():
        received.setdefault(name.lower(), []).append(value)
    if "authorization" not in received:
        if "x-amz-signature=" in urlsplit(url).query.lower():
            raise _incomplete("mve accepts Signature Version 4 in the Authorization header, not in presigned URLs.")
        raise AuthError(MISSING_TOKEN, "Missing Authentication Token")
    auth = _parse_authorization(received["authorization"][0])
    timestamp, sent = _request_time(received)
    if auth.date != timestamp[:8]:
        source = "X-Amz-Date" if "x-amz-date" in received else "Date"
        raise AuthError(
            INVALID_SIGNATURE,
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{auth.date}' != '{timestamp[:8]}', from '{source}'.",
        )
    if auth.terminator != TERMINATOR:
        raise AuthError(
            INVALID_SIGNATURE,
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{auth.terminator[:40]}'.",
        )
    if auth.service not in services:
        expected = "', '".join(sorted(services))
        raise AuthError(INVALID_SIGNATURE, f"Credential should be scoped to correct service: '{expected}'.")
    _check_skew(timestamp, sent, time.time() if now is None else now, max_skew_s)
    if "x-amz-security-token" in received:
        raise AuthError(UNRECOGNIZED_CLIENT, BAD_TOKEN_MESSAGE)  # mve issues no temporary credentials
    key = keys.date_key(auth.access_key_id, auth.date)
    if key is None:
        raise AuthError(UNRECOGNIZED_CLIENT, BAD_TOKEN_MESSAGE)
    payload_hash = _payload_hash(received, body)
    _check_path(url)
    if not _SIGNATURE.match(auth.signature):
        raise AuthError(INVALID_SIGNATURE, MISMATCH_MESSAGE)
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method.upper(), url=url)  # headers: the signer's, from `received`
    request.context["timestamp"] = timestamp
    signer = _signer_class()(auth, key, payload_hash, received)
    try:
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
    except (UnicodeError, ValueError):  # a header or path that is not text: no client signed it
        raise AuthError(INVALID_SIGNATURE, MISMATCH_MESSAGE) from None
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        raise AuthError(INVALID_SIGNATURE, MISMATCH_MESSAGE)
    return auth.access_key_id


def verifier_missing() -> str | None:
    """Why this process cannot verify signatures (botocore is not installed), or None when it can."""
    try:
        import botocore.auth  # noqa: F401
    except ImportError as error:
        return (
            f"checking AWS Signature Version 4 needs botocore, which cannot be imported ({error}): "
            "pip install botocore"
        )
    return None


def aiohttp_verify(
    request: "web.Request",
    body: bytes,
    keys: DateKeys,
    now: float | None = None,
    *,
    services: Collection[str] = SIGNING_SERVICES,
) -> str:
    """`verify` for an aiohttp request whose body (`body`, read already) is given.

    The URL is rebuilt as the client signed it: the Host header, the raw path and query as they
    came on the request line.
    """
    host = request.headers.get("Host", "")
    url = f"{request.scheme}://{host}{request.raw_path}"
    return verify(request.method, url, request.headers, body, keys, now=now, services=services)


__all__ = [
    "AUTH_OFF",
    "AuthError",
    "DateKeys",
    "INCOMPLETE_SIGNATURE",
    "INVALID_SIGNATURE",
    "MISSING_TOKEN",
    "NO_KEYS",
    "QUERY_CODES",
    "SIGNING_SERVICES",
    "SigningKeys",
    "UNRECOGNIZED_CLIENT",
    "aiohttp_verify",
    "date_key",
    "verifier_missing",
    "verify",
]
