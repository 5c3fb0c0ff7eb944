"""The proxy's settings: one dataclass filled from flags and ``MVE_*`` environment variables."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cached_property

from mve.errors import ValidationError
from mve.proxy.routing.outliers import OutlierPolicy

DEFAULT_CONTROL_PLANE = "127.0.0.1:7070"
DEFAULT_METRICS_PORT = 9464
METRICS_OFF = -1  # --metrics-port -1: no Prometheus exporter
DEFAULT_HTTP_PORT = 8081
HTTP_OFF = -1  # --http-port -1: no SageMaker Runtime HTTP door
MAX_WORKERS = 64
WORKER_SUFFIX = "-w{index}"  # a worker's proxy id: the parent's, then this
TRANSPORTS = ("auto", "native", "grpc-aio")


def native_transport_available() -> bool:
    """Whether the native HTTP/2 transport was built (libnghttp2's headers were there at build time)."""
    try:
        import mve._h2transport  # noqa: F401
    except ImportError:
        return False
    return True


def parse_address(value: str, *, what: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``HOST:PORT`` and check the port range; ValidationError naming `what` otherwise."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValidationError(f"{what} must be HOST:PORT, got '{value}'")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValidationError(f"{what} port must be {low}-65535, got {port}")
    return host.strip("[]"), port


@dataclass(frozen=True)
class ProxySettings:
    """Everything `mve proxy` needs, validated once at start by `validate`."""

    control_plane: str = DEFAULT_CONTROL_PLANE
    host: str = "127.0.0.1"
    port: int = 8080
    proxy_id: str = ""
    # A model must answer within this many seconds (SageMaker: 60 s); a caller's shorter deadline wins.
    model_timeout_s: float = 60.0
    stats_interval_s: float = 1.0
    resubscribe_min_s: float = 0.1
    resubscribe_max_s: float = 2.0
    grace_s: float = 5.0
    # On SIGTERM: health says NOT_SERVING this long while requests are still served, so that
    # clients and load balancers that watch health move away before the server stops taking calls.
    drain_s: float = 1.0
    # Requests in flight to model servers, unbatched path: past either bound a request is refused at
    # once with ModelNotReadyException instead of queueing without limit (batched variants have their
    # own bounds: MaxBatchesInFlightPerInstance and MaxQueueRows).
    max_in_flight_per_instance: int = 64
    max_in_flight: int = 4096
    # Data capture (an endpoint's DataCaptureConfig): records wait for the writer thread in a queue
    # bounded in records and in megabytes (past either, dropped and counted); a capture file is
    # rotated every hour and past --capture-file-max-mb; lines are flushed at least this often.
    capture_queue_records: int = 10_000
    capture_queue_mb: int = 64
    capture_file_max_mb: int = 64
    capture_flush_interval_s: float = 1.0
    # Shadow variants: copies of requests in flight to shadows at once, per proxy; past it, dropped and counted.
    shadow_max_in_flight: int = 256
    # Prometheus text on http://METRICS_HOST:METRICS_PORT/metrics; 0 picks a free port, -1 turns it off.
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_host: str = ""  # "": the --host the proxy binds
    # SageMaker Runtime's HTTP face (boto3's sagemaker-runtime) on http://HOST:HTTP_PORT, the same
    # host as the gRPC port; 0 picks a free port, -1 turns it off.
    http_port: int = DEFAULT_HTTP_PORT
    # Outlier ejection (`mve.proxy.routing.outliers`): an instance with this many failures in a row (timeouts,
    # UNAVAILABLE, 5xx-class), or whose latency EWMA is this factor above its siblings' median, leaves
    # the variant's rotation for --outlier-ejection-s x its ejections in a row (at most 10x), then is
    # probed; at most --outlier-max-ejection-percent of a variant's instances are out at once.
    # 0 turns the failure rule or the latency rule off.
    outlier_consecutive_failures: int = 5
    outlier_latency_factor: float = 5.0
    outlier_ejection_s: float = 10.0
    outlier_max_ejection_percent: float = 50.0
    # TLS (`mve.tls`): one identity (--tls-cert/--tls-key), the proxy's gRPC door's certificate (and
    # its HTTP door's) and the client certificate it presents to the control plane and model
    # servers; --tls-ca verifies the servers it dials and, with --tls-client-auth require, its callers.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_client_auth: str = "none"
    # Invocation auth (`mve.authn.RuntimePolicy`): a bearer token from this file, or a client certificate.
    invoke_token_file: str = ""
    # The token sent on WatchRoutes and ReportStats (the file's first), and how the control plane is dialled.
    control_plane_token_file: str = ""
    control_plane_tls: str = "auto"
    # --workers N (`mve.proxy.workers`): N proxy processes share --port and --http-port through
    # SO_REUSEPORT; 1 is one process and no parent. The kernel balances connections, not requests.
    workers: int = 1
    # Bind both doors with SO_REUSEPORT: set by the workers' parent on each worker, never by hand;
    # off, a port some other process holds is refused (gRPC's own default would share it silently).
    reuse_port: bool = False
    # The gRPC door's transport (docs/transport.md): "native" (mve._h2transport, plaintext HTTP/2),
    # "grpc-aio", or "auto": native where it was built and the door has no TLS, else grpc-aio.
    transport: str = "auto"

    def validate(self) -> "ProxySettings":
        """Return self, or raise ValidationError with a message naming the bad setting."""
        parse_address(self.control_plane, what="--control-plane")
        if not self.host.strip():
            raise ValidationError("--host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValidationError(f"--port must be 0-65535 (0 picks a free port), got {self.port}")
        if len(self.proxy_id) > 128:
            raise ValidationError("--proxy-id must be at most 128 characters")
        _check_range("--model-timeout", self.model_timeout_s, 0.001, 3600.0)
        _check_range("--stats-interval", self.stats_interval_s, 0.05, 3600.0)
        _check_range("resubscribe_min_s", self.resubscribe_min_s, 0.001, 60.0)
        _check_range("resubscribe_max_s", self.resubscribe_max_s, self.resubscribe_min_s, 600.0)
        _check_range("--grace", self.grace_s, 0.0, 600.0)
        _check_range("--drain-seconds", self.drain_s, 0.0, 600.0)
        _check_range("--max-in-flight-per-instance", self.max_in_flight_per_instance, 1, 100_000)
        _check_range("--max-in-flight", self.max_in_flight, 1, 1_000_000)
        _check_range("--capture-queue-records", self.capture_queue_records, 1, 10_000_000)
        _check_range("--capture-queue-mb", self.capture_queue_mb, 1, 65_536)
        _check_range("--capture-file-max-mb", self.capture_file_max_mb, 1, 65_536)
        _check_range("--capture-flush-interval", self.capture_flush_interval_s, 0.01, 60.0)
        _check_range("--shadow-max-in-flight", self.shadow_max_in_flight, 1, 100_000)
        if self.outlier_consecutive_failures != 0:
            _check_range("--outlier-consecutive-failures (0: off)", self.outlier_consecutive_failures, 1, 1000)
        if self.outlier_latency_factor != 0:
            _check_range("--outlier-latency-factor (0: off)", self.outlier_latency_factor, 1.5, 1000.0)
        _check_range("--outlier-ejection-s", self.outlier_ejection_s, 0.1, 3600.0)
        _check_range("--outlier-max-ejection-percent", self.outlier_max_ejection_percent, 0.0, 100.0)
        if not METRICS_OFF <= self.metrics_port <= 65535:
            raise ValidationError(
                f"--metrics-port must be 0-65535 (0 picks a free port, -1 turns the exporter off), got {self.metrics_port}"
            )
        if self.metrics_port != 0 and self.metrics_port == self.port and self.effective_metrics_host == self.host:
            raise ValidationError(f"--metrics-port must differ from --port, both are {self.port}")
        if not HTTP_OFF <= self.http_port <= 65535:
            raise ValidationError(
                f"--http-port must be 0-65535 (0 picks a free port, -1 turns the HTTP door off), got {self.http_port}"
            )
        if self.http_port > 0:
            if self.http_port == self.port:
                raise ValidationError(f"--http-port must differ from --port, both are {self.port}")
            if self.http_port == self.metrics_port and self.effective_metrics_host == self.host:
                raise ValidationError(f"--http-port must differ from --metrics-port, both are {self.http_port}")
        _check_range("--workers", self.workers, 1, MAX_WORKERS)
        if self.workers > 1:
            self._validate_workers()
        if self.transport not in TRANSPORTS:
            raise ValidationError(f"--transport must be one of {', '.join(TRANSPORTS)}, got '{self.transport}'")
        if self.transport == "native":
            if self.tls_cert:
                raise ValidationError(
                    "--transport native serves plaintext HTTP/2 only; a door with --tls-cert runs on grpc-aio "
                    "(--transport grpc-aio, or auto)"
                )
            if not native_transport_available():
                raise ValidationError(
                    "--transport native needs mve._h2transport, which was not built: libnghttp2's headers were "
                    "missing (sudo apt-get install libnghttp2-dev, then make build); or --transport auto"
                )
        self.security  # noqa: B018 - reads and checks the TLS and token files now, once
        return self

    @property
    def effective_transport(self) -> str:
        """The gRPC door's transport: "native" or "grpc-aio" (auto resolved)."""
        if self.transport == "auto":
            return "native" if not self.tls_cert and native_transport_available() else "grpc-aio"
        return self.transport

    def _validate_workers(self) -> None:
        """What --workers N adds: room for the workers' suffix in --proxy-id, and N metrics ports."""
        longest = len(WORKER_SUFFIX.format(index=self.workers - 1))
        if len(self.proxy_id) > 128 - longest:
            raise ValidationError(
                f"--proxy-id must be at most {128 - longest} characters with --workers {self.workers} "
                f"(each worker adds '{WORKER_SUFFIX.format(index=self.workers - 1)}')"
            )
        if self.metrics_port > 0:
            last = self.metrics_port + self.workers - 1
            if last > 65535:
                raise ValidationError(
                    f"--metrics-port {self.metrics_port} with --workers {self.workers} needs ports up to {last}, "
                    "past 65535; give a lower one, 0 for free ports or -1 to turn the exporters off"
                )
            if self.effective_metrics_host == self.host:
                for flag, port in (("--port", self.port), ("--http-port", self.http_port)):
                    if self.metrics_port <= port <= last:
                        raise ValidationError(
                            f"{flag} {port} is among the workers' metrics ports {self.metrics_port}-{last} "
                            f"(--metrics-port {self.metrics_port} + one per worker)"
                        )

    def worker_proxy_id(self, index: int, parent_pid: int) -> str:
        """Worker `index`'s stats identity: ``--proxy-id`` (else ``proxy-<host>-<parent pid>``) + ``-w<index>``."""
        base = self.proxy_id or f"proxy-{socket.gethostname()}-{parent_pid}"
        return base + WORKER_SUFFIX.format(index=index)

    def worker_metrics_port(self, index: int) -> int:
        """Worker `index`'s ``--metrics-port``: base + index, a free one each for 0, off for all for -1."""
        return self.metrics_port + index if self.metrics_port > 0 else self.metrics_port

    @cached_property
    def security(self) -> "ProxySecurity":
        """The TLS files and tokens the flags name, read and checked (ValidationError naming the flag)."""
        from mve.proxy.security import load_security

        return load_security(self)

    @property
    def outlier_policy(self) -> OutlierPolicy:
        """The ``--outlier-*`` settings as the routers' `OutlierPolicy`."""
        return OutlierPolicy(
            consecutive_failures=self.outlier_consecutive_failures,
            latency_factor=self.outlier_latency_factor,
            ejection_s=self.outlier_ejection_s,
            max_ejection_percent=self.outlier_max_ejection_percent,
        )

    @property
    def http_enabled(self) -> bool:
        """Whether the SageMaker Runtime HTTP door runs (``--http-port`` is not -1)."""
        return self.http_port != HTTP_OFF

    @property
    def metrics_enabled(self) -> bool:
        """Whether the Prometheus exporter runs (``--metrics-port`` is not -1)."""
        return self.metrics_port != METRICS_OFF

    @property
    def effective_metrics_host(self) -> str:
        """The address the exporter binds: ``--metrics-host``, else ``--host``."""
        return self.metrics_host.strip() or self.host

    @property
    def effective_proxy_id(self) -> str:
        """The id sent with WatchRoutes and ReportStats: the flag, else ``proxy-<host>-<pid>``."""
        return self.proxy_id or f"proxy-{socket.gethostname()}-{os.getpid()}"


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low} and {high}, got {value}")


def env_default(name: str, default):
    """``MVE_<name>`` from the environment converted to the type of `default`, else `default`."""
    raw = os.environ.get(f"MVE_{name}")
    if raw is None or raw == "":
        return default
    try:
        return type(default)(raw)
    except ValueError:
        raise ValidationError(f"environment variable MVE_{name}={raw!r} is not a valid {type(default).__name__}") from None
