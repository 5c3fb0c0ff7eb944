"""Which TLS files and bearer token a client uses: resolved once, when the client is made.

    security = resolve_client_security(tls_ca="tls/ca.crt", token=None)
    channel = grpc.secure_channel(address, security.channel_credentials())
    stub.Method(request, metadata=(*security.metadata, ...))

The settings come from ONE place, the first of these that names any of them:

1. the keywords ``token``, ``tls_ca``, ``tls_cert``, ``tls_key`` of ``mve.client``;
2. the environment: ``MVE_TLS_CA``, ``MVE_TLS_CERT``, ``MVE_TLS_KEY``, and ``MVE_TOKEN`` (the token
   itself) or ``MVE_TOKEN_FILE`` (a 0600 file, its first token);
3. a secure data dir, ``$MVE_DATA_DIR`` or ``./.mve``, one that has ``tls/ca.crt`` (made by
   ``mve up --secure``): its CA, its admin client certificate ``tls/client.crt`` / ``tls/client.key``
   (Common Name mve-admin) and its ``token``.

One place, not a mix: a certificate given as a keyword is never topped up with the data dir's admin
token. Nothing found anywhere: plaintext and no token, as before. TLS is used when a CA is known; the
token, when known, is sent on every call. Files are read and checked here, so a bad one is a
ValueError (`TlsConfigError`, `TokenFileError`) naming the keyword, variable or file at fault, raised
by ``mve.client`` itself rather than by the first call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mve.authn import TOKEN_PATTERN, TokenFileError, bearer_metadata, fingerprint, read_tokens
from mve.tls import TlsConfigError, TlsFiles, is_loopback, load_tls

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = ".mve"
# Where `mve up --secure` puts a data dir's files (mve.pki's names for the client role).
TLS_DIR = "tls"
CA_FILE = "ca.crt"
CLIENT_CERT_FILE = "client.crt"
CLIENT_KEY_FILE = "client.key"
TOKEN_FILE = "token"

ENV_CA, ENV_CERT, ENV_KEY = "MVE_TLS_CA", "MVE_TLS_CERT", "MVE_TLS_KEY"
ENV_TOKEN, ENV_TOKEN_FILE = "MVE_TOKEN", "MVE_TOKEN_FILE"


@dataclass(frozen=True)
class ClientSecurity:
    """What a client dials with: TLS files (None: plaintext) and a bearer token (None: none sent).

    `source` says where they came from, for messages ("keywords", "environment", "data dir .mve",
    or "" when nothing was found).
    """

    tls: TlsFiles | None = None
    token: str | None = None
    source: str = ""

    @property
    def secure(self) -> bool:
        """Whether the channel is TLS."""
        return self.tls is not None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call carries for the token (empty without one)."""
        return bearer_metadata(self.token)

    def channel_credentials(self):
        """gRPC channel credentials: verify the server against the CA, present the client certificate if any."""
        if self.tls is None:
            raise TlsConfigError("this client has no TLS settings (no CA)")
        return self.tls.channel_credentials()

    def __repr__(self) -> str:  # never the token itself
        token = fingerprint(self.token) if self.token else None
        client_cert = bool(self.tls and self.tls.has_identity)
        return f"ClientSecurity(tls={self.secure}, client_cert={client_cert}, token={token}, source={self.source!r})"


PLAINTEXT = ClientSecurity()


@dataclass(frozen=True)
class _Setting:
    """One setting's value and the name to blame in a message (a keyword, a variable, a file)."""

    value: str | None
    name: str


def data_dir_path(env=None) -> Path:
    """The data dir a client looks in: $MVE_DATA_DIR, else ``./.mve``."""
    env = os.environ if env is None else env
    return Path(env.get("MVE_DATA_DIR") or DEFAULT_DATA_DIR)


def is_secure_data_dir(data_dir: str | Path) -> bool:
    """Whether `data_dir` was made secure by ``mve up --secure`` (it has ``tls/ca.crt``)."""
    return (Path(data_dir) / TLS_DIR / CA_FILE).is_file()


def data_dir_settings(data_dir: str | Path) -> dict:
    """The ``mve.client`` keywords for a secure data dir's admin credentials (CA, client certificate,
    token); empty for a data dir without ``tls/ca.crt``. The token file is read (and checked) here."""
    data_dir = Path(data_dir)
    if not is_secure_data_dir(data_dir):
        return {}
    tls = data_dir / TLS_DIR
    settings = {"tls_ca": str(tls / CA_FILE)}
    if (tls / CLIENT_CERT_FILE).exists() or (tls / CLIENT_KEY_FILE).exists():
        settings.update(tls_cert=str(tls / CLIENT_CERT_FILE), tls_key=str(tls / CLIENT_KEY_FILE))
    token_path = data_dir / TOKEN_FILE
    if token_path.exists():
        settings["token"] = read_tokens(token_path, flag=f"the data dir's token ({token_path})")[0]
    return settings


def resolve_client_security(
    *,
    token: str | None = None,
    tls_ca: str | os.PathLike | None = None,
    tls_cert: str | os.PathLike | None = None,
    tls_key: str | os.PathLike | None = None,
    env=None,
) -> ClientSecurity:
    """The TLS files and token a client uses (see the module docstring for the order)."""
    if any(value is not None for value in (token, tls_ca, tls_cert, tls_key)):
        return _load(
            _Setting(_text(token, "token"), "token"), _Setting(_path(tls_ca), "tls_ca"),
            _Setting(_path(tls_cert), "tls_cert"), _Setting(_path(tls_key), "tls_key"), source="keywords",
        )
    env = os.environ if env is None else env
    names = (ENV_CA, ENV_CERT, ENV_KEY, ENV_TOKEN, ENV_TOKEN_FILE)
    if any(env.get(name) for name in names):
        if env.get(ENV_TOKEN) and env.get(ENV_TOKEN_FILE):
            raise ValueError(f"{ENV_TOKEN} and {ENV_TOKEN_FILE} are both set: set one")
        token_setting = _Setting(env.get(ENV_TOKEN) or None, ENV_TOKEN)
        if env.get(ENV_TOKEN_FILE):
            token_setting = _Setting(read_tokens(env[ENV_TOKEN_FILE], flag=ENV_TOKEN_FILE)[0], ENV_TOKEN_FILE)
        return _load(
            token_setting, _Setting(env.get(ENV_CA) or None, ENV_CA), _Setting(env.get(ENV_CERT) or None, ENV_CERT),
            _Setting(env.get(ENV_KEY) or None, ENV_KEY), source="environment",
        )
    data_dir = data_dir_path(env)
    return _data_dir_security(data_dir, f"data dir {data_dir}" + (" ($MVE_DATA_DIR)" if env.get("MVE_DATA_DIR") else ""))


def data_dir_security(data_dir: str | Path) -> ClientSecurity:
    """What an administrator of the mesh on `data_dir` dials with: its CA, admin certificate and token
    when it is secure, else plaintext; never the environment's or the working directory's."""
    return _data_dir_security(Path(data_dir), f"data dir {data_dir}")


def _data_dir_security(data_dir: Path, where: str) -> ClientSecurity:
    if not is_secure_data_dir(data_dir):
        return PLAINTEXT
    settings = data_dir_settings(data_dir)
    return _load(
        _Setting(settings.get("token"), f"{where}: {TOKEN_FILE}"),
        _Setting(settings.get("tls_ca"), f"{where}: {TLS_DIR}/{CA_FILE}"),
        _Setting(settings.get("tls_cert"), f"{where}: {TLS_DIR}/{CLIENT_CERT_FILE}"),
        _Setting(settings.get("tls_key"), f"{where}: {TLS_DIR}/{CLIENT_KEY_FILE}"),
        source=where,
    )


def _text(value, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _path(value) -> str | None:
    return None if value is None else os.fspath(value)


def _load(token: _Setting, ca: _Setting, cert: _Setting, key: _Setting, *, source: str) -> ClientSecurity:
    if token.value is not None and not TOKEN_PATTERN.match(token.value):
        raise ValueError(f"{token.name}: not a token (32-512 characters of letters, digits, ._~+/=-)")
    if (cert.value is None) != (key.value is None):
        raise TlsConfigError(f"{cert.name} and {key.name} go together: give both or neither")
    if cert.value is not None and ca.value is None:
        raise TlsConfigError(
            f"{cert.name} without {ca.name}: a client certificate is for a TLS server, "
            f"and TLS needs the CA that signed the server's certificate ({ca.name})"
        )
    tls = load_tls(cert.value, key.value, ca.value, names=(cert.name, key.name, ca.name))
    return ClientSecurity(tls, token.value, source)


def warn_if_token_in_the_clear(security: ClientSecurity, address: str) -> None:
    """Log a WARNING when a token would travel in plaintext to an address off this machine."""
    if security.token is None or security.secure or is_loopback(address.rpartition(":")[0]):
        return
    log.warning(
        "event=token_in_plaintext address=%s token=%s: the bearer token travels unencrypted; "
        "give the server's CA (tls_ca / MVE_TLS_CA) to use TLS",
        address, fingerprint(security.token),
    )


__all__ = [
    "ClientSecurity",
    "PLAINTEXT",
    "TlsConfigError",
    "TokenFileError",
    "data_dir_path",
    "data_dir_security",
    "data_dir_settings",
    "is_secure_data_dir",
    "resolve_client_security",
    "warn_if_token_in_the_clear",
]
