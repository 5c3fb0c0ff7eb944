"""Who may call a gRPC door: bearer tokens and mutual-TLS identities, checked before any handler runs.

A caller proves who it is in one of two ways:

- a **bearer token** in the call's metadata, ``authorization: Bearer <token>``, matched in constant
  time against the door's token file (`read_tokens`); a token holder is an administrator;
- a **client certificate** (mutual TLS), verified by the TLS handshake against the door's CA; its
  subject's Common Name is the caller's identity and decides its role (`ROLE_OF_COMMON_NAME`).
  Any other name the CA signed is a reader.

A `Policy` says which roles may call which method; `Gatekeeper.check` applies it to one call and
answers None or the error to end it with: UNAUTHENTICATED ``MissingAuthenticationTokenException``
(no credential) or ``UnrecognizedClientException`` (a token the door does not know), or
PERMISSION_DENIED ``AccessDeniedException`` naming the caller and the action. `AuthInterceptor`
puts a gatekeeper in front of every method of a grpc.aio server; the proxy calls its gatekeeper
from its own handlers (no interceptor on its hot path).

Tokens are never logged: a refused or accepted token appears in logs as its fingerprint
(``token:`` and the first 8 hex digits of its SHA-256).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

from mve.errors import (
    AUTOSCALING,
    CLOUDWATCH,
    IAM,
    RUNTIME,
    AccessDenied,
    MveError,
    Unauthenticated,
    UnrecognizedClient,
    api_of_method,
    to_status,
)

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
BEARER = "bearer "
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]{32,512}$")
MAX_TOKENS = 100
MAX_TOKEN_FILE_BYTES = 64 * 1024

# Roles, from the least trusted up.
READER = "reader"
MODEL_SERVER = "model-server"
PROXY = "proxy"
CONTROL_PLANE = "control-plane"
ADMIN = "admin"

# The Common Names mve's own certificates carry (`mve.pki` makes them so), and their roles.
ROLE_OF_COMMON_NAME = {
    "mve-admin": ADMIN,
    "mve-control-plane": CONTROL_PLANE,
    "mve-proxy": PROXY,
    "mve-model-server": MODEL_SERVER,
}

# The IAM action prefix of each API, as AWS spells it in "not authorized to perform: sagemaker:...".
_ACTION_PREFIX = {RUNTIME: "sagemaker", AUTOSCALING: "application-autoscaling", CLOUDWATCH: "cloudwatch", IAM: "iam"}


class TokenFileError(ValueError):
    """A token file that is missing, too open, empty, or holds a malformed token (the message says which)."""


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def fingerprint(token: str) -> str:
    """What logs show of a token: ``token:`` and 8 hex digits of its SHA-256."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def read_tokens(path: str | Path, flag: str = "--token-file") -> tuple[str, ...]:
    """The tokens in a token file: one per line, ``#`` comments and blank lines skipped.

    The file must be 0600 (no group or other access); each token is 32-512 characters of
    ``A-Z a-z 0-9 . _ ~ + / = -``; 1-100 tokens.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as error:
        raise TokenFileError(f"{flag}: cannot read {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"{flag}: {path} is not a file")
    if info.st_mode & 0o077:
        raise TokenFileError(
            f"{flag}: {path} can be read by group or others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"a token file must be 0600: chmod 600 {path}"
        )
    if info.st_size > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(f"{flag}: {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokenFileError(f"{flag}: cannot read {path}: {error}") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not TOKEN_PATTERN.match(line):
            raise TokenFileError(
                f"{flag}: line {number} of {path} is not a token (32-512 characters of letters, digits, ._~+/=-)"
            )
        tokens.append(line)
    if not tokens:
        raise TokenFileError(f"{flag}: {path} holds no token")
    if len(tokens) > MAX_TOKENS:
        raise TokenFileError(f"{flag}: {path} holds {len(tokens)} tokens, more than {MAX_TOKENS}")
    return tuple(tokens)


class TokenSet:
    """The tokens a door accepts, compared in constant time (every one is compared, match or not)."""

    def __init__(self, tokens):
        self._tokens = tuple(t.encode() for t in tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def match(self, presented: str) -> bool:
        """Whether `presented` is one of the tokens."""
        candidate = presented.encode("utf-8", "replace")
        found = False
        for token in self._tokens:
            found |= hmac.compare_digest(candidate, token)
        return found


@dataclass(frozen=True)
class Identity:
    """A caller that proved who it is: its role and a printable name (a Common Name or a token's fingerprint)."""

    role: str
    principal: str


def bearer_of(metadata) -> str | None:
    """The ``authorization`` value of a call's metadata, or None (the header's name is lower case in gRPC)."""
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def peer_common_name(context) -> str | None:
    """The Common Name of the caller's verified client certificate, or None (no mutual TLS)."""
    try:
        names = context.auth_context().get("x509_common_name")
    except Exception:  # noqa: BLE001 - a context without TLS has nothing to say
        return None
    if not names:
        return None
    name = names[0]
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata that carries `token` (empty for None), for a client's calls."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()


# What a method needs.
OPEN = "open"  # anyone who can connect (health, reflection)
READ = "read"  # any authenticated caller, or anyone when reads are opened
INVOKE = "invoke"  # any authenticated caller


@dataclass(frozen=True)
class Rule:
    """What calling one method takes: `kind` (OPEN, READ, INVOKE) or the roles allowed."""

    kind: str = ""
    roles: frozenset = frozenset()


_OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")
_READ_PREFIXES = ("Describe", "List", "Get")
_PROXY_METHODS = ("/mve.v1.EndpointControl/WatchRoutes", "/mve.v1.EndpointControl/ReportStats")


class Policy:
    """Which roles may call which method of a door."""

    def rule(self, method: str) -> Rule:
        """The rule for ``/package.Service/Method``."""
        raise NotImplementedError


def _service_of(method: str) -> str:
    return method.lstrip("/").partition("/")[0]


class ControlPlanePolicy(Policy):
    """The control plane: health and reflection open; reads (Describe*, List*, Get*) for any
    authenticated caller (or anyone with `open_reads`); WatchRoutes and ReportStats for proxies;
    access keys and every change for administrators (and the control plane's own HTTP face)."""

    WRITERS = frozenset({ADMIN, CONTROL_PLANE})
    PROXIES = frozenset({ADMIN, CONTROL_PLANE, PROXY})

    def __init__(self, open_reads: bool = False):
        self.open_reads = open_reads

    def rule(self, method: str) -> Rule:
        service = _service_of(method)
        if service in _OPEN_SERVICES:
            return Rule(OPEN)
        if method in _PROXY_METHODS:
            return Rule(roles=self.PROXIES)
        if service == "mve.v1.AccessKeys":
            # A key list names every key: kept for administrators, like the keys themselves.
            return Rule(roles=self.WRITERS)
        if method.rpartition("/")[2].startswith(_READ_PREFIXES):
            return Rule(OPEN) if self.open_reads else Rule(READ)
        return Rule(roles=self.WRITERS)


class RuntimePolicy(Policy):
    """A proxy's door: health and reflection open; everything else (InvokeEndpoint, the Open
    Inference Protocol) for any authenticated caller."""

    def rule(self, method: str) -> Rule:
        return Rule(OPEN) if _service_of(method) in _OPEN_SERVICES else Rule(INVOKE)


class ModelServerPolicy(Policy):
    """A model server under mutual TLS: only the control plane and proxies (and administrators) call it."""

    CALLERS = frozenset({ADMIN, CONTROL_PLANE, PROXY})

    def rule(self, method: str) -> Rule:
        return Rule(OPEN) if _service_of(method) in _OPEN_SERVICES else Rule(roles=self.CALLERS)


def action_of(method: str) -> str:
    """The IAM-style action of a method path: ``sagemaker:CreateEndpoint``, ``cloudwatch:PutMetricAlarm``."""
    api = api_of_method(method)
    return f"{_ACTION_PREFIX.get(api, api)}:{method.rpartition('/')[2]}"


class Gatekeeper:
    """Applies a `Policy` to calls, with the door's tokens (None: it accepts no bearer token)."""

    def __init__(self, policy: Policy, tokens: TokenSet | None = None):
        self.policy = policy
        self.tokens = tokens

    def identify(self, metadata, context) -> Identity | None:
        """The caller's identity: its token's, else its certificate's; None when it shows neither.

        Raises UnrecognizedClient for a token this door does not accept.
        """
        header = bearer_of(metadata)
        if header is not None and not self.tokens:
            # A door that takes no tokens is authenticated by certificates alone: a client that sends
            # both (the SDK sends a token whenever it knows one) is who its certificate says.
            name = peer_common_name(context)
            if name is not None:
                return Identity(ROLE_OF_COMMON_NAME.get(name, READER), name)
            raise UnrecognizedClient("This door accepts no bearer tokens; it authenticates client certificates.")
        if header is not None:
            if header[: len(BEARER)].lower() != BEARER:
                raise UnrecognizedClient("The authorization metadata must be 'Bearer <token>'.")
            token = header[len(BEARER):].strip()
            if self.tokens is not None and self.tokens.match(token):
                return Identity(ADMIN, fingerprint(token))
            raise UnrecognizedClient("The security token included in the request is invalid.")
        name = peer_common_name(context)
        if name is not None:
            return Identity(ROLE_OF_COMMON_NAME.get(name, READER), name)
        return None

    def check(self, method: str, metadata, context) -> MveError | None:
        """None when the call may go on, else the error to end it with (logged, never the token)."""
        rule = self.policy.rule(method)
        if rule.kind == OPEN:
            return None
        try:
            identity = self.identify(metadata, context)
        except MveError as error:
            self._refused(method, "unknown-token", error, context)
            return error
        if identity is None:
            error = Unauthenticated(
                f"Missing Authentication Token: {action_of(method)} needs a bearer token "
                "('authorization: Bearer <token>' metadata) or a client certificate"
            )
            self._refused(method, "anonymous", error, context)
            return error
        if rule.kind in (READ, INVOKE) or identity.role in rule.roles:
            return None
        error = AccessDenied(f"User: {identity.principal} is not authorized to perform: {action_of(method)}")
        self._refused(method, identity.principal, error, context)
        return error

    @staticmethod
    def _refused(method: str, principal: str, error: MveError, context) -> None:
        try:
            peer = context.peer()
        except Exception:  # noqa: BLE001
            peer = "?"
        log.warning("event=call_refused method=%s principal=%s reason=%s peer=%s", method, principal, error.reason, peer)


def _guard(handler: grpc.RpcMethodHandler, check, service: str) -> grpc.RpcMethodHandler:
    """`handler` with `check(context)` run before its behaviour; a refusal ends the call."""

    async def refuse(context) -> None:
        error = check(context)
        if error is not None:
            await context.abort_with_status(to_status(error, service))

    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            await refuse(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream
        if _is_async_generator(inner_stream):

            async def unary_stream(request, context):
                await refuse(context)
                async for response in inner_stream(request, context):
                    yield response
        else:  # a reader/writer-style coroutine (``await context.write(...)``)

            async def unary_stream(request, context):
                await refuse(context)
                return await inner_stream(request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests, context):
            await refuse(context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_ss = handler.stream_stream
    if _is_async_generator(inner_ss):

        async def stream_stream(requests, context):
            await refuse(context)
            async for response in inner_ss(requests, context):
                yield response
    else:

        async def stream_stream(requests, context):
            await refuse(context)
            return await inner_ss(requests, context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)


def _is_async_generator(function) -> bool:
    import inspect

    return inspect.isasyncgenfunction(function) or inspect.isasyncgenfunction(getattr(function, "__func__", None))


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Puts a `Gatekeeper` in front of every method of a grpc.aio server (list it first: outermost).

    Open methods (health, reflection) are returned untouched; the others check the caller before
    their handler (and before their request is looked at), errors named as the method's API names them.
    """

    def __init__(self, gatekeeper: Gatekeeper):
        self.gatekeeper = gatekeeper

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self.gatekeeper.policy.rule(method).kind == OPEN:
            return handler
        metadata = handler_call_details.invocation_metadata
        gatekeeper = self.gatekeeper
        return _guard(handler, lambda context: gatekeeper.check(method, metadata, context), api_of_method(method))


__all__ = [
    "ADMIN",
    "CONTROL_PLANE",
    "MODEL_SERVER",
    "PROXY",
    "READER",
    "ROLE_OF_COMMON_NAME",
    "AuthInterceptor",
    "ControlPlanePolicy",
    "Gatekeeper",
    "Identity",
    "ModelServerPolicy",
    "Policy",
    "RuntimePolicy",
    "TokenFileError",
    "TokenSet",
    "action_of",
    "bearer_metadata",
    "bearer_of",
    "fingerprint",
    "new_token",
    "peer_common_name",
    "read_tokens",
]
