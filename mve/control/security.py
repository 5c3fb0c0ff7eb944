"""The control plane's TLS and credentials, read and checked once at start (`load_security`).

    security = load_security(settings)     # TlsConfigError / TokenFileError, naming the flag
    interceptors = [*security.interceptors(), ErrorInterceptor()]
    port = security.add_port(server, "127.0.0.1:7070")

One place holds what the flags of `mve.control.settings` turn into:

- the gRPC door's TLS (``--tls-cert/--tls-key/--tls-ca``, ``--tls-client-auth``), also the HTTP
  face's HTTPS certificate and the client certificate the control plane presents when it dials;
- who may call (``--token-file``, ``--open-reads``): a `Gatekeeper` with the file's tokens and one
  *internal* token made now, kept in memory only, that the control plane's own HTTP face sends on
  its calls to the gRPC door;
- the model servers' TLS (``--model-server-tls-cert/--model-server-tls-key``): the flags they are
  started with and the credentials the control plane dials them with.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mve.authn import AuthInterceptor, ControlPlanePolicy, Gatekeeper, TokenSet, new_token, read_tokens
from mve.control.settings import ControlPlaneSettings
from mve.tls import TlsConfigError, TlsFiles, is_loopback, load_tls

log = logging.getLogger(__name__)

# Model servers bind this address (`mve.control.instances`): their certificate must name it.
MODEL_SERVER_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ModelServerTls:
    """How model servers run under TLS: their files (given to each on its command line) and the
    credentials the control plane dials them with (its own certificate, verified against --tls-ca)."""

    cert: Path
    key: Path
    ca: Path
    dial: TlsFiles

    def flags(self) -> list[str]:
        """The ``mve model-server`` flags: its certificate, the CA it trusts, mutual TLS required."""
        return [
            "--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca),
            "--tls-client-auth", "require",
        ]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials to dial a model server (readiness checks)."""
        return self.dial.channel_credentials()


@dataclass(frozen=True)
class ControlPlaneSecurity:
    """TLS files, the gatekeeper and the internal token of one control plane."""

    tls: TlsFiles | None = None
    require_client_auth: bool = False
    gatekeeper: Gatekeeper | None = None
    internal_token: str | None = field(default=None, repr=False)  # never printed, never written
    token_file: bool = False
    model_servers: ModelServerTls | None = None

    @property
    def auth_on(self) -> bool:
        """Whether gRPC calls need a credential (a token file, or client certificates required)."""
        return self.gatekeeper is not None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The interceptors that go first in the gRPC server's list (none when authorization is off)."""
        return [AuthInterceptor(self.gatekeeper)] if self.gatekeeper is not None else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind `address` in plaintext or TLS as configured; the port (0 or RuntimeError when it fails)."""
        if self.tls is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.tls.server_credentials(self.require_client_auth))

    def internal_client(self):
        """How the HTTP face's clients dial the gRPC door (`mve.sdk.security.ClientSecurity`): TLS with
        this control plane's certificate, verified against --tls-ca (else the system's CAs), and the
        internal token when the door requires a credential."""
        from mve.sdk.security import ClientSecurity

        return ClientSecurity(tls=self.tls, token=self.internal_token, source="the control plane's HTTP face")

    def http_ssl_context(self):
        """The HTTP face's `ssl.SSLContext` (HTTPS with the gRPC door's certificate), or None (HTTP)."""
        return self.tls.server_ssl_context() if self.tls is not None else None

    def describe(self) -> dict:
        """What the ready line and the start log say about the door: ``tls`` and ``auth``."""
        kinds = [kind for kind, on in (("token", self.token_file), ("mtls", self.require_client_auth)) if on]
        auth = "+".join(kinds) if self.gatekeeper is not None else "none"
        return {"tls": self.tls is not None, "auth": auth}


def load_security(settings: ControlPlaneSettings) -> ControlPlaneSecurity:
    """Read the TLS and token files the settings name; TlsConfigError or TokenFileError naming the flag."""
    tls = load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, flag="--tls", need_identity=True)
    if tls is not None and settings.http_enabled:
        internal_address(settings.host, settings.port, tls)  # the HTTP face can verify the door it dials
    gatekeeper = internal_token = None
    if settings.grpc_auth:
        file_tokens = read_tokens(settings.token_file, "--token-file") if settings.token_file is not None else ()
        internal_token = new_token()
        gatekeeper = Gatekeeper(ControlPlanePolicy(settings.open_reads), TokenSet((*file_tokens, internal_token)))
    model_servers = None
    if settings.model_server_tls:
        model_servers = _model_server_tls(settings, tls)
    return ControlPlaneSecurity(
        tls=tls,
        require_client_auth=settings.require_client_certificates,
        gatekeeper=gatekeeper,
        internal_token=internal_token,
        token_file=settings.token_file is not None,
        model_servers=model_servers,
    )


def _model_server_tls(settings: ControlPlaneSettings, own: TlsFiles | None) -> ModelServerTls:
    assert own is not None and settings.tls_ca is not None  # validate_security saw to it
    files = load_tls(
        settings.model_server_tls_cert, settings.model_server_tls_key, flag="--model-server-tls", need_identity=True
    )
    assert files is not None and files.cert_pem is not None
    if not names_host(files.cert_pem, MODEL_SERVER_HOST):
        raise TlsConfigError(
            f"--model-server-tls-cert: {settings.model_server_tls_cert} does not name {MODEL_SERVER_HOST} "
            "(model servers bind it, and whoever dials them verifies the name): add it to the certificate's "
            "subject alternative names"
        )
    return ModelServerTls(
        cert=settings.model_server_tls_cert.resolve(),
        key=settings.model_server_tls_key.resolve(),
        ca=settings.tls_ca.resolve(),
        dial=own,
    )


def _alternative_names(cert_pem: bytes) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) in the subject alternative names of a PEM chain's first certificate."""
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = extension.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in extension.get_values_for_type(x509.IPAddress)]
    return dns, ips


def names_host(cert_pem: bytes, host: str) -> bool:
    """Whether a certificate's alternative names cover `host` (an IP address, or a DNS name exactly or by
    a one-label ``*.`` wildcard)."""
    dns, ips = _alternative_names(cert_pem)
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host)) in ips
    except ValueError:
        pass
    host = host.lower()
    for name in dns:
        name = name.lower()
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


def _dial_host(bind_host: str) -> str:
    """The host the control plane's own clients dial for a door bound to `bind_host` (wildcards: loopback)."""
    if bind_host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind_host in ("::", "[::]"):
        return "::1"
    return bind_host.strip("[]")


def internal_address(bind_host: str, port: int, tls: TlsFiles | None) -> str:
    """HOST:PORT the HTTP face dials to reach the gRPC door bound to `bind_host`:`port`.

    Under TLS the host must be one the certificate names (the HTTP face verifies it): the bound
    address, else ``localhost`` for a loopback or wildcard one; TlsConfigError when it names neither.
    """
    host = _dial_host(bind_host)
    if tls is not None and tls.cert_pem is not None and not names_host(tls.cert_pem, host):
        if is_loopback(host) and names_host(tls.cert_pem, "localhost"):
            host = "localhost"
        else:
            raise TlsConfigError(
                f"--tls-cert: {tls.cert_path} names neither {host} nor localhost, and the HTTP face dials the "
                f"gRPC door at {host} and verifies its certificate: add {host} to the certificate's subject "
                "alternative names, or turn the HTTP face off (--http-port -1)"
            )
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["ControlPlaneSecurity", "ModelServerTls", "internal_address", "is_loopback", "load_security", "names_host"]
