"""TLS for every mve door: the files a process is given, checked once at start, as gRPC and ssl credentials.

    tls = load_tls(cert="tls/proxy.crt", key="tls/proxy.key", ca="tls/ca.crt", what="--tls")
    server.add_secure_port(address, tls.server_credentials(require_client_auth=True))
    channel = grpc.aio.secure_channel(address, tls.channel_credentials())

A process holds one identity, a certificate and its key, used both as the server certificate of
its own door and as the client certificate it presents to the doors it dials (mutual TLS). `ca` is
the bundle it trusts: the servers it dials are verified against it, and so are its callers'
certificates when it requires them. Files are read once, at start: to rotate, restart.

A private key that group or others can read is refused (``chmod 600`` it), as is a key that does
not belong to its certificate; the messages name the flag at fault.
"""

from __future__ import annotations

import ipaddress
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

MAX_PEM_BYTES = 1024 * 1024


class TlsConfigError(ValueError):
    """A TLS file that is missing, unreadable, too open, malformed, or not matching its pair."""


@dataclass(frozen=True)
class TlsFiles:
    """A process's certificate chain and key (PEM, optional for a client) and the CA bundle it trusts."""

    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    ca_pem: bytes | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    ca_path: Path | None = None

    @property
    def has_identity(self) -> bool:
        """Whether a certificate and key are set (a server needs them; a client presents them under mTLS)."""
        return self.cert_pem is not None and self.key_pem is not None

    def server_credentials(self, require_client_auth: bool = False) -> grpc.ServerCredentials:
        """The credentials of a TLS gRPC port; with `require_client_auth`, callers must present a
        certificate signed by the CA bundle (mutual TLS)."""
        if not self.has_identity:
            raise TlsConfigError("a TLS server needs a certificate and its key")
        if require_client_auth and self.ca_pem is None:
            raise TlsConfigError("requiring client certificates needs the CA bundle to verify them (--tls-ca)")
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.ca_pem if require_client_auth else None,
            require_client_auth=require_client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials to dial a TLS server: verified against the CA bundle (the system's when none is
        set), presenting this process's certificate when it has one."""
        if self.has_identity:
            return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)
        return grpc.ssl_channel_credentials(self.ca_pem)

    def server_ssl_context(self) -> ssl.SSLContext:
        """An `ssl.SSLContext` for an HTTPS server (the HTTP faces): this certificate, TLS 1.2 or later."""
        if self.cert_path is None or self.key_path is None:
            raise TlsConfigError("an HTTPS server needs a certificate and its key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_ssl_context(self) -> ssl.SSLContext:
        """An `ssl.SSLContext` to dial an HTTPS server: verified against the CA bundle (else the system's)."""
        context = ssl.create_default_context(cafile=str(self.ca_path) if self.ca_path else None)
        if self.cert_path is not None and self.key_path is not None:
            context.load_cert_chain(self.cert_path, self.key_path)
        return context


def _read_pem(path: Path, flag: str, *, private: bool = False) -> bytes:
    try:
        info = path.stat()
    except OSError as error:
        raise TlsConfigError(f"{flag}: cannot read {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TlsConfigError(f"{flag}: {path} is not a file")
    if private and info.st_mode & 0o077:
        raise TlsConfigError(
            f"{flag}: {path} can be read by group or others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"a private key must be 0600: chmod 600 {path}"
        )
    if info.st_size > MAX_PEM_BYTES:
        raise TlsConfigError(f"{flag}: {path} is {info.st_size} bytes, more than a PEM file of {MAX_PEM_BYTES}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TlsConfigError(f"{flag}: cannot read {path}: {error.strerror or error}") from None
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{flag}: {path} is not PEM (no -----BEGIN line)")
    return data


def _certificates(data: bytes, path: Path, flag: str):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise TlsConfigError(f"{flag}: {path} holds no valid PEM certificate ({error})") from None


def _check_pair(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path, cert_flag: str, key_flag: str):
    from cryptography.hazmat.primitives import serialization

    leaf = _certificates(cert_pem, cert_path, cert_flag)[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise TlsConfigError(f"{key_flag}: {key_path} is not an unencrypted PEM private key ({error})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != leaf.public_key().public_bytes(encoding, public):
        raise TlsConfigError(f"{key_flag}: {key_path} is not the key of the certificate in {cert_path} ({cert_flag})")


def load_tls(
    cert: str | Path | None = None,
    key: str | Path | None = None,
    ca: str | Path | None = None,
    *,
    flag: str = "--tls",
    names: tuple[str, str, str] | None = None,
    need_identity: bool = False,
) -> TlsFiles | None:
    """Read and check a process's TLS files; None when none is given.

    `flag` is the flags' common prefix, for messages (``--tls`` names ``--tls-cert``, ``--tls-key``,
    ``--tls-ca``); `names` names the three otherwise (e.g. the SDK's keywords or variables). With
    `need_identity` (a server), a CA bundle alone is an error.
    """
    if cert is None and key is None and ca is None:
        return None
    cert_flag, key_flag, ca_flag = names or (f"{flag}-cert", f"{flag}-key", f"{flag}-ca")
    if (cert is None) != (key is None):
        raise TlsConfigError(f"{cert_flag} and {key_flag} go together: give both or neither")
    if need_identity and cert is None:
        raise TlsConfigError(f"{ca_flag} without {cert_flag} and {key_flag}: a TLS server needs its certificate and key")
    cert_path = Path(cert) if cert is not None else None
    key_path = Path(key) if key is not None else None
    ca_path = Path(ca) if ca is not None else None
    cert_pem = key_pem = ca_pem = None
    if cert_path is not None and key_path is not None:
        cert_pem = _read_pem(cert_path, cert_flag)
        key_pem = _read_pem(key_path, key_flag, private=True)
        _check_pair(cert_pem, key_pem, cert_path, key_path, cert_flag, key_flag)
    if ca_path is not None:
        ca_pem = _read_pem(ca_path, ca_flag)
        _certificates(ca_pem, ca_path, ca_flag)
    return TlsFiles(cert_pem, key_pem, ca_pem, cert_path, key_path, ca_path)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address, IPv6 in brackets or not) is loopback: only this machine
    reaches it, so plaintext to it stays on the machine."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600 from the first byte (keys, tokens)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        temporary = Path(file.name)
    try:
        os.chmod(temporary, 0o600)
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


__all__ = ["TlsConfigError", "TlsFiles", "is_loopback", "load_tls", "write_private"]
