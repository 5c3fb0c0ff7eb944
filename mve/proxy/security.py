"""The proxy's TLS and credentials: its --tls-*, --invoke-token-file, --control-plane-token-file and
--control-plane-tls flags, read and checked once at start (`load_security`), and what they make.

- its gRPC door: TLS with its certificate, mutual TLS under ``--tls-client-auth require``
  (`server_credentials`); its HTTP door: HTTPS with the same certificate (`http_ssl_context`);
- invocation auth: `gatekeeper` is a ``Gatekeeper(RuntimePolicy(), tokens)`` when a token file is
  given or client certificates are required, else None, and the handlers then check nothing
  (`mve.proxy.transport.grpc_registry`);
- the control plane: dialled with TLS per --control-plane-tls, verified against --tls-ca and
  presented --tls-cert (`control_plane_channel`), the token on WatchRoutes and ReportStats
  (`ControlPlaneStub`);
- model servers: `upstream_credentials` when the routing table says ``upstream_tls``.

Tokens are never logged: `describe` names a token by its fingerprint.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import grpc

from mve._proto import control_pb2_grpc
from mve.authn import Gatekeeper, RuntimePolicy, TokenFileError, TokenSet, bearer_metadata, fingerprint, read_tokens
from mve.errors import ValidationError
from mve.tls import TlsConfigError, TlsFiles, load_tls

CLIENT_AUTH_MODES = ("none", "require")
CONTROL_PLANE_TLS_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class ProxySecurity:
    """What the proxy's security flags hold, checked (`load_security`); the default is all off."""

    tls: TlsFiles | None = None
    require_client_auth: bool = False
    invoke_tokens: TokenSet | None = None
    control_plane_tls: bool = False
    control_plane_token: str | None = field(default=None, repr=False)

    @property
    def door_tls(self) -> bool:
        """Whether the proxy's doors serve TLS (it has a certificate and key)."""
        return self.tls is not None and self.tls.has_identity

    @property
    def invoke_auth(self) -> bool:
        """Whether invocations need a credential: a token file, or client certificates required."""
        return self.invoke_tokens is not None or self.require_client_auth

    def gatekeeper(self) -> Gatekeeper | None:
        """The gatekeeper of the invocation methods, or None when invocations need no credential."""
        if not self.invoke_auth:
            return None
        return Gatekeeper(RuntimePolicy(), self.invoke_tokens)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """The gRPC door's TLS credentials, or None for plaintext."""
        if not self.door_tls:
            return None
        return self.tls.server_credentials(require_client_auth=self.require_client_auth)

    def http_ssl_context(self) -> ssl.SSLContext | None:
        """The HTTP door's HTTPS context (the same certificate; client certificates required as on
        the gRPC door), or None for plain HTTP."""
        if not self.door_tls:
            return None
        context = self.tls.server_ssl_context()
        if self.require_client_auth:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self.tls.ca_pem.decode("ascii", "replace"))
        return context

    def upstream_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials to dial model servers under mutual TLS (the CA and this proxy's certificate),
        or None when the proxy lacks either."""
        if not self.door_tls or self.tls.ca_pem is None:
            return None
        return self.tls.channel_credentials()

    def control_plane_channel(self, address: str, options) -> grpc.aio.Channel:
        """A channel to the control plane: TLS when --control-plane-tls says so (verified against
        --tls-ca, else the system's CAs; presenting --tls-cert when given), else plaintext."""
        if not self.control_plane_tls:
            return grpc.aio.insecure_channel(address, options=options)
        credentials = self.tls.channel_credentials() if self.tls is not None else grpc.ssl_channel_credentials()
        return grpc.aio.secure_channel(address, credentials, options=options)

    def control_plane_stub(self, channel: grpc.aio.Channel):
        """The EndpointControl stub the route watcher and stats reporter use: with the control-plane
        token on each call when one is set."""
        stub = control_pb2_grpc.EndpointControlStub(channel)
        if self.control_plane_token is None:
            return stub
        return ControlPlaneStub(stub, bearer_metadata(self.control_plane_token))

    def describe(self) -> str:
        """key=value words for the start log line (a token by its fingerprint only)."""
        door = "off" if not self.door_tls else ("mutual" if self.require_client_auth else "on")
        ways = (["token"] if self.invoke_tokens is not None else []) + (["cert"] if self.require_client_auth else [])
        token = fingerprint(self.control_plane_token) if self.control_plane_token else "none"
        return (
            f"tls={door} invoke_auth={'+'.join(ways) or 'off'} "
            f"control_plane_tls={'on' if self.control_plane_tls else 'off'} control_plane_token={token}"
        )


class ControlPlaneStub:
    """The two EndpointControl calls a proxy makes, each carrying its bearer token in metadata."""

    def __init__(self, stub, metadata):
        self._stub = stub
        self._metadata = tuple(metadata)

    def WatchRoutes(self, request, **kwargs):  # noqa: N802 - the RPC's name
        """The routing-table stream."""
        return self._stub.WatchRoutes(request, metadata=self._metadata, **kwargs)

    def ReportStats(self, request, **kwargs):  # noqa: N802
        """One stats report."""
        return self._stub.ReportStats(request, metadata=self._metadata, **kwargs)


def load_security(settings) -> ProxySecurity:
    """Check the security flags of `settings` (a `ProxySettings`) and read their files; a
    ValidationError names the flag at fault."""
    if settings.tls_client_auth not in CLIENT_AUTH_MODES:
        raise ValidationError(
            f"--tls-client-auth must be one of {', '.join(CLIENT_AUTH_MODES)}, got {settings.tls_client_auth!r}"
        )
    if settings.control_plane_tls not in CONTROL_PLANE_TLS_MODES:
        raise ValidationError(
            f"--control-plane-tls must be one of {', '.join(CONTROL_PLANE_TLS_MODES)}, got {settings.control_plane_tls!r}"
        )
    cert, key, ca = settings.tls_cert or None, settings.tls_key or None, settings.tls_ca or None
    require = settings.tls_client_auth == "require"
    if require and (cert is None or ca is None):
        raise ValidationError(
            "--tls-client-auth require needs --tls-cert and --tls-key (the door's certificate) and --tls-ca "
            "(the CA that signs the callers' certificates)"
        )
    try:
        tls = load_tls(cert, key, ca, flag="--tls")
    except TlsConfigError as error:
        raise ValidationError(str(error)) from None
    mode = settings.control_plane_tls
    control_plane_tls = mode == "on" or (mode == "auto" and ca is not None)
    try:
        invoke_tokens = (
            TokenSet(read_tokens(settings.invoke_token_file, "--invoke-token-file"))
            if settings.invoke_token_file else None
        )
        control_plane_token = (
            read_tokens(settings.control_plane_token_file, "--control-plane-token-file")[0]
            if settings.control_plane_token_file else None
        )
    except TokenFileError as error:
        raise ValidationError(str(error)) from None
    return ProxySecurity(tls, require, invoke_tokens, control_plane_tls, control_plane_token)


__all__ = ["CLIENT_AUTH_MODES", "CONTROL_PLANE_TLS_MODES", "ControlPlaneStub", "ProxySecurity", "load_security"]
