"""``mve up``: the control plane and a proxy as supervised child processes, and the `Mesh` class behind it.

    with Mesh("./.mve") as mesh:            # ports 0: free ports, read back from the ready lines
        sm = mve.client("sagemaker", address=mesh.control_plane_address)
        smr = mve.client("sagemaker-runtime", address=mesh.proxy_address)

One supervisor thread owns the children: it starts them, restarts a crashed one on the same port
with exponential backoff (at most `max_restarts` times in a row; a child that stays up for a
minute earns its count back), and stops them (proxy first, SIGTERM, SIGKILL after `grace_s`).
Children run in their own process group, so whatever they start (model servers) is stopped with
them, and on Linux they get SIGTERM if the supervisor dies without stopping them. The model servers
of a crashed control plane are left running for its successor to adopt; the mesh kills whatever
is left of them when it stops. The per-process work is in `mve.supervise`.

``mve up --auth sigv4`` (the default) makes the data dir's first access key once and keeps it in
``<data-dir>/credentials`` for boto3 (`mve.first_key`; a Mesh in a test gets one the same way with
``ensure_first_key(mesh.data_dir, mesh.control_plane_address)``); ``--auth none`` is passed to the
control plane and said loudly.

``mve up --secure`` (``Mesh(..., secure=True)``) puts TLS and credentials on every door: a local CA,
certificates and a token in ``<data-dir>/tls/`` and ``<data-dir>/token``, made on the first run
(`mve.mesh_security`). A data dir that has ``tls/ca.crt`` is secure on every later run, flag or not.
``mesh.client(service)`` gives an SDK client with the data dir's admin credentials.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from mve.supervise import Child, MeshError

# The file whose presence makes a data dir secure (`mve up --secure` made it; mve.sdk.security reads it).
SECURE_MARKER = Path("tls") / "ca.crt"

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = ".mve"
STABLE_AFTER_S = 60.0
MAX_BACKOFF_S = 10.0


def is_secure_data_dir(data_dir) -> bool:
    """Whether `data_dir` has ``tls/ca.crt``, left by ``mve up --secure`` (then every run is secure)."""
    return (Path(data_dir) / SECURE_MARKER).is_file()


def default_data_dir() -> Path:
    """$MVE_DATA_DIR, else ``./.mve`` (gitignored in this repository); the SDK looks there too."""
    from mve.sdk.security import data_dir_path

    return data_dir_path()


class Mesh:
    """Control plane + proxy as supervised child processes on `data_dir` (see the module docstring).

    Ports 0 pick free ports; the addresses are read from the children's ready lines. `log_path`
    sends the children's output to a file instead of this process's stderr. `secure` makes the data
    dir secure (TLS and credentials, see the module docstring); one that is already stays so.
    """

    def __init__(
        self,
        data_dir=None,
        *,
        host: str = "127.0.0.1",
        control_plane_port: int = 0,
        proxy_port: int = 0,
        control_plane_metrics_port: int = 0,
        proxy_metrics_port: int = 0,
        proxy_http_port: int = 0,
        control_plane_http_port: int = 0,
        max_restarts: int = 5,
        ready_timeout_s: float = 60.0,
        grace_s: float = 10.0,
        log_path=None,
        control_plane_args: tuple[str, ...] = (),
        proxy_args: tuple[str, ...] = (),
        env: dict | None = None,
        secure: bool = False,
    ):
        for name, port in (("control_plane_port", control_plane_port), ("proxy_port", proxy_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be 0-65535 (0 picks a free port), got {port}")
        for name, port in (("control_plane_metrics_port", control_plane_metrics_port),
                           ("proxy_metrics_port", proxy_metrics_port), ("proxy_http_port", proxy_http_port),
                           ("control_plane_http_port", control_plane_http_port)):
            if not -1 <= port <= 65535:
                raise ValueError(f"{name} must be 0-65535 (0 picks a free port, -1 turns it off), got {port}")
        if not 0 <= max_restarts <= 100:
            raise ValueError(f"max_restarts must be 0-100, got {max_restarts}")
        if not 0 < grace_s <= 600 or not 0 < ready_timeout_s <= 600:
            raise ValueError("grace_s and ready_timeout_s must be in (0, 600] seconds")
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        # Secure when asked, or when an earlier `mve up --secure` left the data dir's CA there.
        self.secure = bool(secure) or is_secure_data_dir(self.data_dir)
        self.security = None  # mve.mesh_security.MeshSecurity once started secure
        self.host = host
        self.max_restarts = max_restarts
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.log_path = Path(log_path) if log_path is not None else None
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._control_plane_port = control_plane_port
        self._proxy_port = proxy_port
        self._metrics_ports = {"control-plane": control_plane_metrics_port, "proxy": proxy_metrics_port}
        self._http_ports = {"control-plane": control_plane_http_port, "proxy": proxy_http_port}
        self._control_plane_args = tuple(control_plane_args)
        self._proxy_args = tuple(proxy_args)
        self._children: list[Child] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self.done = threading.Event()
        self.failure: str | None = None
        self._log_file = None

    @property
    def control_plane_address(self) -> str:
        """HOST:PORT of the control plane (mve.v1.EndpointControl)."""
        return self._children[0].address if self._children else ""

    @property
    def proxy_address(self) -> str:
        """HOST:PORT of the proxy (mve.v1.EndpointRuntime and the Open Inference Protocol)."""
        return self._children[1].address if len(self._children) > 1 else ""

    @property
    def control_plane_metrics_address(self) -> str:
        """HOST:PORT of the control plane's Prometheus /metrics ("" when off)."""
        return self._children[0].ready_event.get("metrics_address", "") if self._children else ""

    @property
    def proxy_metrics_address(self) -> str:
        """HOST:PORT of the proxy's Prometheus /metrics ("" when off)."""
        return self._children[1].ready_event.get("metrics_address", "") if len(self._children) > 1 else ""

    @property
    def proxy_http_address(self) -> str:
        """HOST:PORT of the proxy's SageMaker Runtime HTTP door, for boto3 ("" when off)."""
        return self._children[1].ready_event.get("http_address", "") if len(self._children) > 1 else ""

    @property
    def control_plane_http_address(self) -> str:
        """HOST:PORT of the control plane's HTTP face (SageMaker, Application Auto Scaling and
        CloudWatch for boto3; "" when off)."""
        return self._children[0].ready_event.get("http_address", "") if self._children else ""

    def _http_args(self, child: Child) -> list[str]:
        # A restarted child keeps the HTTP port it had bound, as it keeps its gRPC port.
        bound = child.ready_event.get("http_address", "")
        return ["--http-port", bound.rsplit(":", 1)[1] if bound else str(self._http_ports[child.name])]

    def _metrics_args(self, child: Child) -> list[str]:
        # A restarted child keeps the metrics port it had bound, as it keeps its gRPC port.
        bound = child.ready_event.get("metrics_address", "")
        port = int(bound.rsplit(":", 1)[1]) if bound else self._metrics_ports[child.name]
        return ["--metrics-port", str(port)]

    def client(self, service_name: str, *, timeout: float | None = None):
        """An SDK client of this mesh (control plane, or the proxy for sagemaker-runtime) as its
        administrator: the data dir's CA, admin certificate and token when the mesh is secure, else
        plaintext; never the environment's (`mve.client` with keywords for anything else)."""
        from mve.sdk.factory import client_with_security
        from mve.sdk.security import PLAINTEXT, data_dir_security

        address = self.proxy_address if service_name == "sagemaker-runtime" else self.control_plane_address
        security = data_dir_security(self.data_dir) if self.secure else PLAINTEXT
        return client_with_security(service_name, address, security, timeout=timeout)

    def child_pids(self) -> dict[str, int]:
        """Process id of each running and ready child, by name ("control-plane", "proxy")."""
        return {c.name: c.process.pid for c in self._children if c.alive() and c.ready}

    def start(self) -> "Mesh":
        """Start both children and return once both are ready (MeshError if they cannot start)."""
        if self._thread is not None:
            raise MeshError("this Mesh was started already")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            self.security = self._prepare_security()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "a", buffering=1)  # noqa: SIM115 - closed in _supervise
        self._thread = threading.Thread(target=self._supervise, name="mve-mesh", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.failure is not None:
            self._thread.join()
            raise MeshError(self.failure)
        return self

    def _prepare_security(self):
        from mve.authn import TokenFileError
        from mve.mesh_security import host_missing_from_certificates, prepare_secure_data_dir

        try:
            security = prepare_secure_data_dir(self.data_dir, self.host)
        except (OSError, TokenFileError) as error:
            raise MeshError(f"cannot make the data dir secure: {error}") from None
        if host_missing_from_certificates(security, self.host):
            log.warning("event=certificates_miss_host host=%s tls_dir=%s: certificates made for another --host; "
                        "clients dialling %s will fail to verify them. Remove %s and start again to remake them",
                        self.host, security.pki.directory, self.host, security.pki.directory)
        return security

    def _child(self, name: str, make_args, port: int) -> Child:
        stream = self._log_file if self._log_file is not None else None
        return Child(name, make_args, port, stream, self._env)

    def _supervise(self) -> None:
        secure_control_plane = self.security.control_plane_args() if self.security is not None else []
        secure_proxy = self.security.proxy_args() if self.security is not None else []
        control_plane = self._child(
            "control-plane",
            lambda port: ["control-plane", "--data-dir", str(self.data_dir), "--host", self.host,
                          "--port", str(port), *self._metrics_args(control_plane), *self._http_args(control_plane),
                          *secure_control_plane, *self._control_plane_args],
            self._control_plane_port,
        )
        proxy = self._child(
            "proxy",
            lambda port: ["proxy", "--control-plane", control_plane.address, "--host", self.host,
                          "--port", str(port), *self._metrics_args(proxy), *self._http_args(proxy),
                          *secure_proxy, *self._proxy_args],
            self._proxy_port,
        )
        try:
            for child in (control_plane, proxy):
                self._children.append(child)
                child.start(self.ready_timeout_s)
        except MeshError as error:
            self.failure = str(error)
        self._ready.set()
        try:
            if self.failure is None:
                self._watch()
        finally:
            for child in reversed(self._children):
                child.stop(self.grace_s)
            if self._log_file is not None:
                self._log_file.close()
            self.done.set()

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            for child in self._children:
                if child.alive():
                    if child.restarts and time.monotonic() - child.started_at > STABLE_AFTER_S:
                        child.restarts = 0
                    continue
                if not self._restart(child):
                    return

    def _restart(self, child: Child) -> bool:
        code = child.process.returncode if child.process else None
        while child.restarts < self.max_restarts:
            child.restarts += 1
            backoff = min(0.5 * 2 ** (child.restarts - 1), MAX_BACKOFF_S)
            log.warning("event=child_exited child=%s code=%s restart=%d backoff_s=%g",
                        child.name, code, child.restarts, backoff)
            child.reap()
            if self._stopping.wait(backoff):
                return False
            try:
                child.start(self.ready_timeout_s)
                return True
            except MeshError as error:
                code = str(error)
        self.failure = f"{child.name} exited (last: {code}) and was restarted {self.max_restarts} times; giving up"
        log.error("event=mesh_failed reason=%r", self.failure)
        return False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the mesh stops (or fails); True if it did within `timeout`."""
        return self.done.wait(timeout)

    def stop(self) -> None:
        """Stop both children (proxy first) and the supervisor; safe to call twice."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "Mesh":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_up(args) -> int:
    """``mve up``: start the mesh, print its addresses and ready line, run until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    from mve.ready import announce_ready

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    secure_already = is_secure_data_dir(data_dir)
    mesh = Mesh(data_dir, host=args.host, control_plane_port=args.control_plane_port,
                proxy_port=args.proxy_port, control_plane_metrics_port=args.control_plane_metrics_port,
                proxy_metrics_port=args.proxy_metrics_port, proxy_http_port=args.proxy_http_port,
                control_plane_http_port=args.control_plane_http_port,
                max_restarts=args.max_restarts, control_plane_args=("--auth", args.auth), secure=args.secure)
    try:
        mesh.start()
    except MeshError as error:
        print(f"mve up: {error}", file=sys.stderr)
        return 1
    first_key = _first_key(mesh, args.auth)
    scheme = "https" if mesh.secure else "http"
    tls = "   TLS" if mesh.secure else ""
    print(f"control plane  {mesh.control_plane_address}   (MVE_CONTROL_PLANE){tls}", file=sys.stderr)
    print(f"  metrics      {_metrics_url(mesh.control_plane_metrics_address)}", file=sys.stderr)
    print(f"  http         {_control_url(mesh.control_plane_http_address, scheme)}", file=sys.stderr)
    print(f"proxy          {mesh.proxy_address}   (MVE_ENDPOINT){tls}", file=sys.stderr)
    print(f"  metrics      {_metrics_url(mesh.proxy_metrics_address)}", file=sys.stderr)
    print(f"  http         {_runtime_url(mesh.proxy_http_address, scheme)}", file=sys.stderr)
    print(f"data dir       {mesh.data_dir.resolve()}", file=sys.stderr)
    if mesh.security is not None:
        if secure_already and not args.secure:
            print(f"secure: {mesh.security.pki.ca_cert} exists (made by mve up --secure), so this data dir stays "
                  f"secure. To go back to plaintext, stop mve and remove {mesh.security.pki.directory}", file=sys.stderr)
        print(mesh.security.usage(), file=sys.stderr)
    if first_key is not None:
        print(first_key.usage(), file=sys.stderr)
    elif args.auth == "none":
        print(f"WARNING: {AUTH_OFF}", file=sys.stderr)
    announce_ready("mesh", mesh.proxy_address, control_plane=mesh.control_plane_address,
                   control_plane_metrics=mesh.control_plane_metrics_address, proxy_metrics=mesh.proxy_metrics_address,
                   proxy_http=mesh.proxy_http_address, control_plane_http=mesh.control_plane_http_address,
                   data_dir=str(mesh.data_dir.resolve()), children=mesh.child_pids(), auth=args.auth,
                   secure=mesh.secure,
                   credentials=str(first_key.path.resolve()) if first_key is not None else "")
    while not stop.wait(0.2):
        if mesh.done.is_set():
            break
    mesh.stop()
    if mesh.failure is not None:
        print(f"mve up: {mesh.failure}", file=sys.stderr)
        return 1
    return 0


AUTH_OFF = ("AUTH IS OFF (--auth none): THE HTTP FACES ACCEPT UNSIGNED CALLS FROM ANYONE WHO CAN REACH THEM. "
            "Use it for local play only.")


def _first_key(mesh: Mesh, auth: str):
    """With --auth sigv4, the data dir's access key (made on the first run; `mve.first_key`); else None."""
    if auth != "sigv4":
        return None
    from mve.first_key import ensure_first_key
    from mve.sdk.exceptions import ClientError, SDKError

    try:
        # Under --secure the key is made with the data dir's own admin credentials (ensure_first_key reads them).
        first_key = ensure_first_key(mesh.data_dir, mesh.control_plane_address)
    except (ClientError, SDKError, OSError, ValueError) as error:
        print(f"mve up: could not make the first access key ({error}); make one with `mve keys create`",
              file=sys.stderr)
        return None
    if first_key.created:
        log.info("event=first_access_key access_key_id=%s path=%s", first_key.access_key_id, first_key.path)
    return first_key


def _auth_mode(text: str) -> str:
    import argparse

    mode = text.strip().lower()
    if mode not in ("sigv4", "none"):
        raise argparse.ArgumentTypeError(f"--auth must be sigv4 or none, got {text!r}")
    return mode


def register(subparsers) -> None:
    """Add ``mve up``."""
    parser = subparsers.add_parser(
        "up",
        help="run the control plane and a proxy (supervised) until Ctrl-C",
        description="Start the control plane and a proxy as supervised child processes on a data dir. "
        "Prints their addresses and one JSON ready line; Ctrl-C or SIGTERM stops everything.",
    )
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"where models, the store and logs live (default $MVE_DATA_DIR or ./{DEFAULT_DATA_DIR})")
    parser.add_argument("--host", default="127.0.0.1", help="interface both services bind (default 127.0.0.1)")
    parser.add_argument("--control-plane-port", type=_port, default=7070, help="control plane port (default 7070; 0 = free)")
    parser.add_argument("--proxy-port", type=_port, default=8080, help="proxy port (default 8080; 0 = free)")
    parser.add_argument("--control-plane-metrics-port", type=_metrics_port,
                        default=_env_port("MVE_CONTROL_PLANE_METRICS_PORT", 9465),
                        help="control plane Prometheus port (default $MVE_CONTROL_PLANE_METRICS_PORT or 9465; "
                        "0 = free, -1 = off)")
    parser.add_argument("--proxy-metrics-port", type=_metrics_port, default=_env_port("MVE_PROXY_METRICS_PORT", 9464),
                        help="proxy Prometheus port (default $MVE_PROXY_METRICS_PORT or 9464; 0 = free, -1 = off)")
    parser.add_argument("--control-plane-http-port", type=_http_port,
                        default=_env_port("MVE_CONTROL_PLANE_HTTP_PORT", 7071),
                        help="the control plane's HTTP face for boto3's sagemaker, application-autoscaling and "
                        "cloudwatch clients (default $MVE_CONTROL_PLANE_HTTP_PORT or 7071; 0 = free, -1 = off)")
    parser.add_argument("--proxy-http-port", type=_http_port, default=_env_port("MVE_PROXY_HTTP_PORT", 8081),
                        help="the proxy's SageMaker Runtime HTTP door for boto3 (default $MVE_PROXY_HTTP_PORT or "
                        "8081; 0 = free, -1 = off)")
    parser.add_argument("--auth", type=_auth_mode, default=os.environ.get("MVE_AUTH") or "sigv4",
                        metavar="{sigv4,none}",
                        help="sigv4: the HTTP faces require AWS Signature Version 4; the first run makes an access "
                        "key in DATA_DIR/credentials (profile mve, mode 0600). none: they accept unsigned calls from "
                        "anyone who can reach them, for local play (default $MVE_AUTH or sigv4)")
    parser.add_argument("--secure", action="store_true",
                        help="TLS and credentials on every door: the first run makes a local CA, certificates and a "
                        "token in DATA_DIR/tls and DATA_DIR/token (0600); the SDK and CLI find them with "
                        "MVE_DATA_DIR=DATA_DIR. A data dir that has tls/ca.crt stays secure on later runs (remove "
                        "DATA_DIR/tls to go back to plaintext). See docs/security.md")
    parser.add_argument("--max-restarts", type=int, default=5, choices=range(0, 101), metavar="0-100",
                        help="restarts of a crashing child before giving up (default 5)")
    parser.set_defaults(func=run_up)


def _port(text: str) -> int:
    import argparse

    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def _metrics_url(address: str) -> str:
    return f"http://{address}/metrics   (Prometheus)" if address else "off"


def _http_port(text: str) -> int:
    import argparse

    try:
        return _metrics_port(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"HTTP port must be 0-65535 or -1 (off), got {text!r}") from None


def _control_url(address: str, scheme: str = "http") -> str:
    return f"{scheme}://{address}   (boto3 sagemaker, application-autoscaling, cloudwatch endpoint_url)" if address else "off"


def _runtime_url(address: str, scheme: str = "http") -> str:
    return f"{scheme}://{address}   (boto3 sagemaker-runtime endpoint_url)" if address else "off"


def _metrics_port(text: str) -> int:
    import argparse

    if text.strip() == "-1":
        return -1
    try:
        return _port(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"metrics port must be 0-65535 or -1 (off), got {text!r}") from None


def _env_port(name: str, default: int) -> int:
    """The metrics port default: $name when it is an integer, else `default` (the child validates)."""
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        return default
