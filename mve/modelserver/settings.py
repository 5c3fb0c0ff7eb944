"""Model server settings, filled from flags and validated once at start with a clear message."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mve.modelserver.devices import parse_device
from mve.tls import TlsConfigError, TlsFiles, load_tls

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
MAX_GRACE_PERIOD_S = 300.0
CLIENT_AUTH_MODES = ("none", "require")


class SettingsError(ValueError):
    """A flag is out of its range; the message says which and what is allowed."""


def max_threads() -> int:
    """The most ONNX Runtime threads a model server may ask for: four per core."""
    return (os.cpu_count() or 1) * 4


@dataclass(frozen=True)
class ModelServerSettings:
    """Everything `mve model-server` needs, validated."""

    model: Path
    model_name: str
    host: str
    port: int
    device: tuple[str, int]
    threads: int
    grace_period_s: float
    # TLS on the gRPC port (None: plaintext); with `require_client_auth`, callers must present a
    # certificate the --tls-ca bundle signed, and only the control plane's and proxies' (and
    # administrators') identities may call anything but health and reflection.
    tls: TlsFiles | None = None
    require_client_auth: bool = False

    @property
    def bind_address(self) -> str:
        """``host:port`` for gRPC (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_args(cls, args) -> ModelServerSettings:
        """Validate parsed flags; raises SettingsError naming the flag at fault."""
        model = Path(args.model)
        if not model.is_file():
            raise SettingsError(f"--model: {model} is not a file")
        name = args.model_name if args.model_name is not None else model.stem
        if not MODEL_NAME.match(name):
            raise SettingsError(
                f"--model-name: {name!r} must be 1-63 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        host = args.host.strip()
        if not _valid_host(host):
            raise SettingsError(f"--host: {args.host!r} is not an IP address or host name")
        if not 0 <= args.port <= 65535:
            raise SettingsError(f"--port must be 0..65535 (0 picks a free port), not {args.port}")
        try:
            device = parse_device(args.device)
        except ValueError as error:
            raise SettingsError(f"--device: {error}") from None
        if not 1 <= args.threads <= max_threads():
            raise SettingsError(f"--threads must be 1..{max_threads()} (4 per core), not {args.threads}")
        if not 0 <= args.grace_period_s <= MAX_GRACE_PERIOD_S:
            raise SettingsError(f"--grace-period-s must be 0..{MAX_GRACE_PERIOD_S:g}, not {args.grace_period_s}")
        tls, require_client_auth = _tls_settings(args)
        return cls(
            model, name, host, args.port, device, args.threads, float(args.grace_period_s), tls, require_client_auth
        )


def _tls_settings(args) -> tuple[TlsFiles | None, bool]:
    """The --tls-* flags, checked: the files (None: plaintext) and whether client certificates are required."""
    mode = getattr(args, "tls_client_auth", None) or "none"
    if mode not in CLIENT_AUTH_MODES:
        raise SettingsError(f"--tls-client-auth must be one of {', '.join(CLIENT_AUTH_MODES)}, not {mode!r}")
    cert, key, ca = getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None)
    require = mode == "require"
    if require and (cert is None or ca is None):
        raise SettingsError(
            "--tls-client-auth require needs --tls-cert and --tls-key (the server's identity) and --tls-ca "
            "(the CA that signs its callers' certificates)"
        )
    if ca is not None and not require:
        # A model server dials nothing: its CA bundle would only verify callers. Refused, not ignored.
        raise SettingsError(
            "--tls-ca is used only to verify callers' certificates: give --tls-client-auth require, or drop --tls-ca"
        )
    try:
        tls = load_tls(cert, key, ca, flag="--tls", need_identity=True)
    except TlsConfigError as error:
        raise SettingsError(str(error)) from None
    return tls, require


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(HOSTNAME.match(host))
