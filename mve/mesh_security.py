"""``mve up --secure``: the data dir's local CA, certificates and token, and the flags they become.

    security = prepare_secure_data_dir(data_dir, host="127.0.0.1")   # made on the first run, kept after
    control_plane_args = security.control_plane_args()
    proxy_args = security.proxy_args()

The first run makes ``<data-dir>/tls/`` (a local CA, one certificate per role: `mve.pki`) and
``<data-dir>/token`` (one bearer token, `mve.authn.new_token`); every file is 0600. A data dir that
has ``tls/ca.crt`` is secure on every later run, with or without ``--secure``; removing ``tls/`` is
how to go back to plaintext. The control plane requires mutual TLS or the token on its gRPC door and
launches model servers under mutual TLS; the proxy serves TLS, dials the control plane with its own
certificate (role proxy) and requires the token (or a client certificate) for invocations. Both HTTP
faces serve HTTPS with the same certificates.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from mve.authn import new_token, read_tokens
from mve.pki import LocalPki, ensure_local_pki
from mve.sdk.security import TLS_DIR, TOKEN_FILE
from mve.tls import write_private

__all__ = ["MeshSecurity", "host_missing_from_certificates", "prepare_secure_data_dir"]


@dataclass(frozen=True)
class MeshSecurity:
    """A secure data dir's files (absolute paths) and what they mean for each child and client."""

    data_dir: Path
    pki: LocalPki
    token_path: Path

    def control_plane_args(self) -> list[str]:
        """The control plane on mutual TLS, the token accepted, model servers launched under mutual TLS."""
        pki = self.pki
        return [
            "--tls-cert", str(pki.cert("control-plane")), "--tls-key", str(pki.key("control-plane")),
            "--tls-ca", str(pki.ca_cert), "--tls-client-auth", "require",
            "--token-file", str(self.token_path),
            "--model-server-tls-cert", str(pki.cert("model-server")),
            "--model-server-tls-key", str(pki.key("model-server")),
        ]

    def proxy_args(self) -> list[str]:
        """The proxy on TLS (no client certificate asked: SDK callers bring the token), the token
        required for invocations; it dials the control plane with its certificate (role proxy)."""
        pki = self.pki
        return [
            "--tls-cert", str(pki.cert("proxy")), "--tls-key", str(pki.key("proxy")),
            "--tls-ca", str(pki.ca_cert), "--tls-client-auth", "none",
            "--invoke-token-file", str(self.token_path),
        ]

    def usage(self) -> str:
        """How clients point at this mesh, in a few lines (no secret in them)."""
        ca = self.pki.ca_cert
        return (
            f"secure         TLS on every door; gRPC callers need the token or a certificate from {ca.parent}\n"
            f"  mve CLI/SDK  MVE_DATA_DIR={self.data_dir}   (mve.client and the CLI read tls/ and token there)\n"
            f"  other gRPC   CA {ca}, client certificate {self.pki.cert('client')} + .key (admin),\n"
            f"               or 'authorization: Bearer <token>' metadata with the token in {self.token_path}\n"
            f"  boto3        verify={str(ca)!r} and the access key below"
        )


def prepare_secure_data_dir(data_dir: str | Path, host: str) -> MeshSecurity:
    """Make (first run) or check (later runs) a secure data dir's CA, certificates and token.

    Certificates name `host` too (and localhost, 127.0.0.1, ::1, this machine's name); a certificate
    due to expire is renewed (`mve.pki.ensure_local_pki`). A token file that is not 0600 or holds no
    valid token is a `mve.authn.TokenFileError` naming it; OSErrors pass through.
    """
    data_dir = Path(data_dir).resolve()
    pki = ensure_local_pki(data_dir / TLS_DIR, hosts=[host])
    token_path = data_dir / TOKEN_FILE
    if token_path.exists():
        read_tokens(token_path, flag=f"the data dir's token file {token_path}")
    else:
        write_private(token_path, (new_token() + "\n").encode())
    return MeshSecurity(data_dir, pki, token_path)


def host_missing_from_certificates(security: MeshSecurity, host: str) -> bool:
    """Whether `host` (a name or address clients dial) is absent from the certificates' alternative
    names: certificates made on an earlier run with another --host. A wildcard bind is never missing."""
    from cryptography import x509

    name = host.strip().strip("[]")
    if name in ("", "0.0.0.0", "::"):
        return False
    try:
        cert = x509.load_pem_x509_certificate(security.pki.cert("control-plane").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return True
    try:
        return ipaddress.ip_address(name) not in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        return name.lower() not in (n.lower() for n in names.get_values_for_type(x509.DNSName))
