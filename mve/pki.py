"""A local certificate authority for ``mve up --secure``: a CA, one certificate per role, and a token.

    files = ensure_local_pki(data_dir / "tls")      # made once, kept afterwards
    files.cert("proxy"), files.key("proxy"), files.ca_cert

Everything is made with the `cryptography` package (no openssl shell-outs): ECDSA P-256 keys,
SHA-256 signatures. The CA is valid 10 years, the role certificates 825 days (the longest a
browser-facing certificate may live); each role certificate names the role in its Common Name
(`mve.authn.ROLE_OF_COMMON_NAME`) and this machine in its subject alternative names (localhost,
127.0.0.1, ::1, the host name and any extra host given), so that clients dialling loopback verify
it. It is good for both TLS server and client authentication: one identity per process.

Every file is written 0600. Files present are kept (a later run reuses them); a missing role
certificate is made again from the existing CA; a certificate due to expire within 30 days is renewed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from mve.tls import write_private

# Role → Common Name, and the file stem of its certificate and key.
ROLES = {
    "control-plane": "mve-control-plane",
    "proxy": "mve-proxy",
    "model-server": "mve-model-server",
    "client": "mve-admin",
}
CA_NAME = "mve local CA"
CA_DAYS = 3650
LEAF_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class LocalPki:
    """Where a local CA's files are: ``ca.crt``, ``ca.key`` and ``<role>.crt`` / ``<role>.key``."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate every process trusts."""
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA's private key (needed only to make certificates)."""
        return self.directory / "ca.key"

    def cert(self, role: str) -> Path:
        """The certificate of `role` (control-plane, proxy, model-server, client)."""
        return self.directory / f"{role}.crt"

    def key(self, role: str) -> Path:
        """The private key of `role`."""
        return self.directory / f"{role}.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _make_ca():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _alt_names(hosts) -> list:
    from cryptography import x509

    names, seen = [], set()
    for host in ("localhost", "127.0.0.1", "::1", socket.gethostname(), *hosts):
        host = (host or "").strip().strip("[]")
        if not host or host in seen or host in ("0.0.0.0", "::"):
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _make_leaf(common_name: str, ca_key, ca_cert, hosts):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _load(cert_path: Path, key_path: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key, cert


def _current(pair, ca_cert=None) -> bool:
    if pair is None:
        return False
    _, cert = pair
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    return ca_cert is None or cert.issuer == ca_cert.subject


def ensure_local_pki(directory: str | Path, hosts=()) -> LocalPki:
    """The local CA and role certificates in `directory`, made where missing or due (see the module
    docstring); `hosts` are extra names or addresses for the certificates' alternative names."""
    pki = LocalPki(Path(directory))
    pki.directory.mkdir(parents=True, exist_ok=True)
    pki.directory.chmod(0o700)
    ca = _load(pki.ca_cert, pki.ca_key)
    renew_all = not _current(ca)
    if renew_all:
        ca = _make_ca()
        write_private(pki.ca_key, _key_pem(ca[0]))
        write_private(pki.ca_cert, _cert_pem(ca[1]))
    ca_key, ca_cert = ca
    for role, common_name in ROLES.items():
        if not renew_all and _current(_load(pki.cert(role), pki.key(role)), ca_cert):
            continue
        key, cert = _make_leaf(common_name, ca_key, ca_cert, hosts)
        write_private(pki.key(role), _key_pem(key))
        write_private(pki.cert(role), _cert_pem(cert))
    return pki


def make_certificate(directory: str | Path, stem: str, common_name: str, ca: LocalPki, hosts=()) -> tuple[Path, Path]:
    """Another certificate from `ca` (e.g. for a caller service): ``<stem>.crt`` and ``<stem>.key``
    in `directory`, with `common_name` as its identity. Returns (certificate, key)."""
    pair = _load(ca.ca_cert, ca.ca_key)
    if pair is None:
        raise FileNotFoundError(f"no CA in {ca.directory}")
    key, cert = _make_leaf(common_name, pair[0], pair[1], hosts)
    directory = Path(directory)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    write_private(key_path, _key_pem(key))
    write_private(cert_path, _cert_pem(cert))
    return cert_path, key_path


__all__ = ["ROLES", "LocalPki", "ensure_local_pki", "make_certificate"]
