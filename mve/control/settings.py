"""Control plane settings: one dataclass, filled from flags then ``MVE_*`` environment variables,
validated once at start.

| setting | flag | env | default | range |
| --- | --- | --- | --- | --- |
| data_dir | --data-dir | MVE_DATA_DIR | (required) | a writable directory |
| host | --host | MVE_CONTROL_PLANE_HOST | 127.0.0.1 | |
| port | --port | MVE_CONTROL_PLANE_PORT | 7070 | 0-65535 (0: a free port) |
| default_startup_timeout_s | --default-startup-timeout | MVE_DEFAULT_STARTUP_TIMEOUT_S | 600 | min-3600 |
| min_startup_timeout_s | --min-startup-timeout | MVE_MIN_STARTUP_TIMEOUT_S | 60 | 1-60 |
| max_instances_per_variant | --max-instances-per-variant | MVE_MAX_INSTANCES_PER_VARIANT | 10 | 1-1000 |
| model_server_prefix | --model-server-prefix | MVE_MODEL_SERVER_PREFIX | "" | a command line run before the model server's (e.g. "nice -n 5", "taskset -c 2-3") |
| drain_s | --drain-seconds | MVE_DRAIN_S | 1.0 | 0-60: how long a removed instance keeps serving before SIGTERM |
| stop_grace_s | --stop-grace-seconds | MVE_STOP_GRACE_S | 10.0 | 0-300 |
| log_level | --log-level | MVE_LOG_LEVEL | INFO | DEBUG, INFO, WARNING, ERROR |
| metrics_port | --metrics-port | MVE_CONTROL_PLANE_METRICS_PORT | 9465 | 0-65535 (0: a free port), -1: no Prometheus exporter |
| metrics_host | --metrics-host | MVE_CONTROL_PLANE_METRICS_HOST | (--host) | |
| http_port | --http-port | MVE_CONTROL_PLANE_HTTP_PORT | 7071 | 0-65535 (0: a free port), -1: no HTTP face (boto3's SageMaker, Application Auto Scaling, CloudWatch APIs; binds --host) |
| auth | --auth | MVE_AUTH | sigv4 | sigv4: the HTTP faces require AWS Signature Version 4 with an access key (`mve keys`); none: they accept unsigned calls (logged as a WARNING) |
| metrics_retention_days | --metrics-retention-days | MVE_METRICS_RETENTION_DAYS | 15 | 1-455: how long one-minute metric points are kept (one-second points: 3 hours) |
| alarm_interval_s | --alarm-interval | MVE_ALARM_INTERVAL_S | 1.0 | 0.1-60: how often every alarm is evaluated |
| utilization_interval_s | --utilization-interval | MVE_UTILIZATION_INTERVAL_S | 1.0 | 0.1-60: how often each model server's CPU and memory are sampled |
| autoscaling_interval_s | --autoscaling-interval | MVE_AUTOSCALING_INTERVAL_S | 5.0 | 0.1-300: how often every scaling policy is evaluated |
| autoscaling_window_s | --autoscaling-window | MVE_AUTOSCALING_WINDOW_S | 60 | 5-3600: the sliding window target tracking averages its metric over |
| capture_index_interval_s | --capture-index-interval | MVE_CAPTURE_INDEX_INTERVAL_S | 1.0 | 0.2-60: how often the capture files are read for new records |
| replace_ejected_after_s | --replace-ejected-after | MVE_REPLACE_EJECTED_AFTER_S | 60 | 5-3600, or 0: never: an instance the proxies report as an ejected outlier this long is replaced |
| tls_cert | --tls-cert | MVE_CONTROL_PLANE_TLS_CERT | (none: plaintext) | PEM certificate (chain) of the gRPC door, also served by the HTTP face (HTTPS) and presented as this control plane's client certificate; needs --tls-key |
| tls_key | --tls-key | MVE_CONTROL_PLANE_TLS_KEY | (none) | PEM private key of --tls-cert, mode 0600 |
| tls_ca | --tls-ca | MVE_CONTROL_PLANE_TLS_CA | (none) | PEM CA bundle: verifies callers' certificates under --tls-client-auth require, and model servers under --model-server-tls-* |
| tls_client_auth | --tls-client-auth | MVE_CONTROL_PLANE_TLS_CLIENT_AUTH | none | none, require: callers must present a certificate signed by --tls-ca (mutual TLS; its Common Name is the caller's role) |
| token_file | --token-file | MVE_CONTROL_PLANE_TOKEN_FILE | (none) | a 0600 file of bearer tokens, one a line: a call carrying one (`authorization: Bearer <token>`) is an administrator's |
| open_reads | --open-reads | MVE_OPEN_READS | false | 1/true, 0/false: Describe*, List* and Get* need no credential when authorization is on |
| model_server_tls_cert | --model-server-tls-cert | MVE_MODEL_SERVER_TLS_CERT | (none: plaintext) | PEM certificate model servers serve and present; they require mutual TLS; needs --model-server-tls-key and this control plane's --tls-cert, --tls-key, --tls-ca |
| model_server_tls_key | --model-server-tls-key | MVE_MODEL_SERVER_TLS_KEY | (none) | PEM private key of --model-server-tls-cert, mode 0600 |

Feedback and the capture index are kept as long as metrics (``--metrics-retention-days``).

gRPC authorization is on when ``--token-file`` is given or ``--tls-client-auth`` is require
(`ControlPlaneSettings.grpc_auth`): every call but health and reflection (and reads, with
``--open-reads``) then needs a bearer token or a client certificate (`mve.authn.ControlPlanePolicy`).
``--auth`` is another matter: the HTTP faces' SigV4. The TLS and token files are read and checked
at start by `mve.control.security`, not here.

``min_startup_timeout_s`` lowers SageMaker's 60 s floor of ContainerStartupHealthCheckTimeoutInSeconds,
for tests that need a startup timeout to fire quickly.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_METRICS_PORT = 9465
METRICS_OFF = -1
DEFAULT_HTTP_PORT = 7071
AUTH_MODES = ("sigv4", "none")
HTTP_OFF = -1
CLIENT_AUTH_MODES = ("none", "require")
_TRUE, _FALSE = ("1", "true"), ("0", "false")


class SettingsError(ValueError):
    """A flag or environment variable out of range (the message names it)."""


@dataclass(frozen=True)
class ControlPlaneSettings:
    """Everything the control plane is configured with."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7070
    default_startup_timeout_s: int = 600
    min_startup_timeout_s: int = 60
    max_instances_per_variant: int = 10
    model_server_prefix: tuple[str, ...] = ()
    drain_s: float = 1.0
    stop_grace_s: float = 10.0
    log_level: str = "INFO"
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_host: str = ""  # "": the --host the control plane binds
    http_port: int = DEFAULT_HTTP_PORT
    auth: str = "sigv4"
    metrics_retention_days: float = 15.0
    alarm_interval_s: float = 1.0
    utilization_interval_s: float = 1.0
    autoscaling_interval_s: float = 5.0
    autoscaling_window_s: float = 60.0
    capture_index_interval_s: float = 1.0
    replace_ejected_after_s: float = 60.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_client_auth: str = "none"
    token_file: Path | None = None
    open_reads: bool = False
    model_server_tls_cert: Path | None = None
    model_server_tls_key: Path | None = None

    @property
    def tls_enabled(self) -> bool:
        """Whether the gRPC door (and the HTTP face) serve TLS (``--tls-cert``)."""
        return self.tls_cert is not None

    @property
    def require_client_certificates(self) -> bool:
        """Whether callers must present a certificate signed by --tls-ca (``--tls-client-auth require``)."""
        return self.tls_client_auth == "require"

    @property
    def grpc_auth(self) -> bool:
        """Whether gRPC calls need a credential: a token file, or client certificates required."""
        return self.token_file is not None or self.require_client_certificates

    @property
    def model_server_tls(self) -> bool:
        """Whether model servers are started with TLS and mutual TLS (``--model-server-tls-cert``)."""
        return self.model_server_tls_cert is not None

    @property
    def metrics_enabled(self) -> bool:
        """Whether the Prometheus exporter runs (``--metrics-port`` is not -1)."""
        return self.metrics_port != METRICS_OFF

    @property
    def http_enabled(self) -> bool:
        """Whether the HTTP face for boto3 runs (``--http-port`` is not -1)."""
        return self.http_port != HTTP_OFF

    @property
    def auth_required(self) -> bool:
        """Whether the HTTP faces (this one's and the proxies') require SigV4 (``--auth sigv4``)."""
        return self.auth == "sigv4"

    @property
    def master_key_path(self) -> Path:
        """``<data-dir>/master.key``: the key the access keys' secrets are encrypted with (mode 0600)."""
        return self.data_dir / "master.key"

    @property
    def effective_metrics_host(self) -> str:
        """The address the exporter binds: ``--metrics-host``, else ``--host``."""
        return self.metrics_host.strip() or self.host

    @property
    def db_path(self) -> Path:
        """``<data-dir>/mve.db``."""
        return self.data_dir / "mve.db"

    @property
    def metrics_db_path(self) -> Path:
        """``<data-dir>/metrics.db``: metric points, alarms and their history."""
        return self.data_dir / "metrics.db"

    @property
    def experiments_db_path(self) -> Path:
        """``<data-dir>/experiments.db``: feedback, the capture index and bandit policies."""
        return self.data_dir / "experiments.db"

    @property
    def artifact_dir(self) -> Path:
        """``<data-dir>/artifacts``."""
        return self.data_dir / "artifacts"

    @property
    def log_dir(self) -> Path:
        """``<data-dir>/logs``: one log per model-server instance."""
        return self.data_dir / "logs"


# (field, env var, parser)
_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("data_dir", "MVE_DATA_DIR", Path),
    ("host", "MVE_CONTROL_PLANE_HOST", str),
    ("port", "MVE_CONTROL_PLANE_PORT", int),
    ("default_startup_timeout_s", "MVE_DEFAULT_STARTUP_TIMEOUT_S", int),
    ("min_startup_timeout_s", "MVE_MIN_STARTUP_TIMEOUT_S", int),
    ("max_instances_per_variant", "MVE_MAX_INSTANCES_PER_VARIANT", int),
    ("model_server_prefix", "MVE_MODEL_SERVER_PREFIX", lambda s: tuple(shlex.split(s))),
    ("drain_s", "MVE_DRAIN_S", float),
    ("stop_grace_s", "MVE_STOP_GRACE_S", float),
    ("log_level", "MVE_LOG_LEVEL", lambda s: s.upper()),
    ("metrics_port", "MVE_CONTROL_PLANE_METRICS_PORT", int),
    ("metrics_host", "MVE_CONTROL_PLANE_METRICS_HOST", str),
    ("http_port", "MVE_CONTROL_PLANE_HTTP_PORT", int),
    ("auth", "MVE_AUTH", lambda s: s.strip().lower()),
    ("metrics_retention_days", "MVE_METRICS_RETENTION_DAYS", float),
    ("alarm_interval_s", "MVE_ALARM_INTERVAL_S", float),
    ("utilization_interval_s", "MVE_UTILIZATION_INTERVAL_S", float),
    ("autoscaling_interval_s", "MVE_AUTOSCALING_INTERVAL_S", float),
    ("autoscaling_window_s", "MVE_AUTOSCALING_WINDOW_S", float),
    ("capture_index_interval_s", "MVE_CAPTURE_INDEX_INTERVAL_S", float),
    ("replace_ejected_after_s", "MVE_REPLACE_EJECTED_AFTER_S", float),
    ("tls_cert", "MVE_CONTROL_PLANE_TLS_CERT", Path),
    ("tls_key", "MVE_CONTROL_PLANE_TLS_KEY", Path),
    ("tls_ca", "MVE_CONTROL_PLANE_TLS_CA", Path),
    ("tls_client_auth", "MVE_CONTROL_PLANE_TLS_CLIENT_AUTH", lambda s: s.strip().lower()),
    ("token_file", "MVE_CONTROL_PLANE_TOKEN_FILE", Path),
    ("open_reads", "MVE_OPEN_READS", lambda s: _parse_bool(s, "MVE_OPEN_READS")),
    ("model_server_tls_cert", "MVE_MODEL_SERVER_TLS_CERT", Path),
    ("model_server_tls_key", "MVE_MODEL_SERVER_TLS_KEY", Path),
)
# Flags whose value argparse hands over as a string that still needs its parser.
_PARSED_FLAGS = frozenset(
    {"model_server_prefix", "log_level", "data_dir", "auth", "tls_cert", "tls_key", "tls_ca", "tls_client_auth",
     "token_file", "model_server_tls_cert", "model_server_tls_key"}
)


def _parse_bool(text: str, var: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{var} must be 1, true, 0 or false, got {text!r}")


def load_settings(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ControlPlaneSettings:
    """Settings from `flags` (None: not given), then `env`, then defaults; SettingsError if invalid."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, var, parse in _FIELDS:
        value = flags.get(name)
        if value is None and env.get(var):
            try:
                value = parse(env[var])
            except SettingsError:
                raise
            except ValueError:
                raise SettingsError(f"{var}={env[var]!r} is not a valid value") from None
        elif value is not None and name in _PARSED_FLAGS:
            value = parse(value) if isinstance(value, str) else value
        if value is not None:
            values[name] = value
    if "data_dir" not in values:
        raise SettingsError("--data-dir (or MVE_DATA_DIR) is required")
    settings = ControlPlaneSettings(**values)
    validate_settings(settings)
    return settings


def validate_settings(s: ControlPlaneSettings) -> None:
    """Every setting in range, or SettingsError naming the flag."""
    if not 0 <= s.port <= 65535:
        raise SettingsError(f"--port must be 0-65535, got {s.port}")
    if not s.host:
        raise SettingsError("--host must not be empty")
    if not 1 <= s.min_startup_timeout_s <= 60:
        raise SettingsError(f"--min-startup-timeout must be 1-60, got {s.min_startup_timeout_s}")
    if not s.min_startup_timeout_s <= s.default_startup_timeout_s <= 3600:
        raise SettingsError(
            f"--default-startup-timeout must be {s.min_startup_timeout_s}-3600, got {s.default_startup_timeout_s}"
        )
    if not 1 <= s.max_instances_per_variant <= 1000:
        raise SettingsError(f"--max-instances-per-variant must be 1-1000, got {s.max_instances_per_variant}")
    if not 0 <= s.drain_s <= 60:
        raise SettingsError(f"--drain-seconds must be 0-60, got {s.drain_s}")
    if not 0 <= s.stop_grace_s <= 300:
        raise SettingsError(f"--stop-grace-seconds must be 0-300, got {s.stop_grace_s}")
    if s.log_level not in LOG_LEVELS:
        raise SettingsError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {s.log_level}")
    if not METRICS_OFF <= s.metrics_port <= 65535:
        raise SettingsError(
            f"--metrics-port must be 0-65535 (0 picks a free port, -1 turns the exporter off), got {s.metrics_port}"
        )
    if s.metrics_port != 0 and s.metrics_port == s.port and s.effective_metrics_host == s.host:
        raise SettingsError(f"--metrics-port must differ from --port, both are {s.port}")
    if not HTTP_OFF <= s.http_port <= 65535:
        raise SettingsError(
            f"--http-port must be 0-65535 (0 picks a free port, -1 turns the HTTP face off), got {s.http_port}"
        )
    if s.http_port > 0 and s.http_port == s.port:
        raise SettingsError(f"--http-port must differ from --port, both are {s.port}")
    if s.http_port > 0 and s.http_port == s.metrics_port and s.effective_metrics_host == s.host:
        raise SettingsError(f"--http-port must differ from --metrics-port, both are {s.http_port}")
    if s.auth not in AUTH_MODES:
        raise SettingsError(f"--auth must be one of {', '.join(AUTH_MODES)}, got {s.auth!r}")
    if not 1 <= s.metrics_retention_days <= 455:
        raise SettingsError(f"--metrics-retention-days must be 1-455, got {s.metrics_retention_days}")
    if not 0.1 <= s.alarm_interval_s <= 60:
        raise SettingsError(f"--alarm-interval must be 0.1-60 seconds, got {s.alarm_interval_s}")
    if not 0.1 <= s.utilization_interval_s <= 60:
        raise SettingsError(f"--utilization-interval must be 0.1-60 seconds, got {s.utilization_interval_s}")
    if not 0.1 <= s.autoscaling_interval_s <= 300:
        raise SettingsError(f"--autoscaling-interval must be 0.1-300 seconds, got {s.autoscaling_interval_s}")
    if not 5 <= s.autoscaling_window_s <= 3600:
        raise SettingsError(f"--autoscaling-window must be 5-3600 seconds, got {s.autoscaling_window_s}")
    if not 0.2 <= s.capture_index_interval_s <= 60:
        raise SettingsError(f"--capture-index-interval must be 0.2-60 seconds, got {s.capture_index_interval_s}")
    if s.replace_ejected_after_s != 0 and not 5 <= s.replace_ejected_after_s <= 3600:
        raise SettingsError(
            f"--replace-ejected-after must be 5-3600 seconds, or 0 never to replace, got {s.replace_ejected_after_s}"
        )
    if s.data_dir.exists() and not s.data_dir.is_dir():
        raise SettingsError(f"--data-dir {s.data_dir} exists and is not a directory")
    validate_security(s)


def validate_security(s: ControlPlaneSettings) -> None:
    """The TLS and credential flags go together as they must (the files themselves are read at start)."""
    if s.tls_client_auth not in CLIENT_AUTH_MODES:
        raise SettingsError(f"--tls-client-auth must be one of {', '.join(CLIENT_AUTH_MODES)}, got {s.tls_client_auth!r}")
    if (s.tls_cert is None) != (s.tls_key is None):
        raise SettingsError("--tls-cert and --tls-key go together: give both or neither")
    if s.tls_ca is not None and s.tls_cert is None:
        raise SettingsError("--tls-ca without --tls-cert and --tls-key: the gRPC door needs its certificate and key")
    if s.require_client_certificates and (s.tls_cert is None or s.tls_ca is None):
        raise SettingsError(
            "--tls-client-auth require needs --tls-cert, --tls-key and --tls-ca (the CA that signs callers' certificates)"
        )
    if (s.model_server_tls_cert is None) != (s.model_server_tls_key is None):
        raise SettingsError("--model-server-tls-cert and --model-server-tls-key go together: give both or neither")
    if s.model_server_tls and (s.tls_cert is None or s.tls_ca is None):
        raise SettingsError(
            "--model-server-tls-cert needs this control plane's --tls-cert, --tls-key and --tls-ca: model servers "
            "trust --tls-ca, and the control plane dials them with its own certificate"
        )
