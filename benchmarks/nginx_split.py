"""nginx as the baseline traffic splitter: ``split_clients`` + ``grpc_pass`` over two model servers.

`NginxSplit` writes a config into a temp prefix that sends each gRPC request (``$request_id`` is
random per request) to one of the upstreams by weight, keeps HTTP/2 connections to them open
(``keepalive``), and runs ``nginx -g 'daemon off;'`` in the foreground until `stop`.

`find_nginx` returns the binary; `ensure_nginx` installs the Debian package with apt-get when it
is missing and this process runs as root, else raises with the command to run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from peer_process import PeerProcess

INSTALL_HINT = "sudo apt-get update && sudo apt-get install -y nginx"


def find_nginx() -> str | None:
    """Path of the nginx binary, or None."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def ensure_nginx() -> str:
    """The nginx binary; installs it (apt-get, as root) when missing, else RuntimeError with the hint."""
    found = find_nginx()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"nginx is not installed; install it with: {INSTALL_HINT}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True, env=env, timeout=600)
    found = find_nginx()
    if not found:
        raise RuntimeError(f"apt-get installed nginx but no binary was found; try: {INSTALL_HINT}")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_config(port: int, upstreams: list[tuple[str, float]], prefix: Path, workers: int) -> str:
    """nginx.conf text: listen on 127.0.0.1:`port` (HTTP/2), split by weight over `upstreams`."""
    total = sum(weight for _, weight in upstreams)
    lines = []
    for index, (_, weight) in enumerate(upstreams[:-1]):
        lines.append(f"        {100.0 * weight / total:.2f}% u{index};")
    lines.append(f"        * u{len(upstreams) - 1};")
    blocks = "\n".join(
        f"    upstream u{index} {{\n        server {address};\n        keepalive 128;\n    }}"
        for index, (address, _) in enumerate(upstreams)
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{blocks}
    split_clients "$request_id" $variant {{
{chr(10).join(lines)}
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        http2_max_concurrent_streams 1024;
        keepalive_requests 1000000;
        location / {{
            grpc_pass grpc://$variant;
        }}
    }}
}}
"""


class NginxSplit(PeerProcess):
    """A foreground nginx splitting gRPC traffic over `upstreams` ([(address, weight)])."""

    name = "nginx"

    def __init__(self, upstreams: list[tuple[str, float]], *, workers: int = 1):
        if not upstreams or any(weight < 0 for _, weight in upstreams) or sum(w for _, w in upstreams) <= 0:
            raise ValueError("nginx needs at least one upstream and a positive total weight")
        self.binary = ensure_nginx()
        self.upstreams = upstreams
        self.workers = workers
        self._dir = tempfile.TemporaryDirectory(prefix="mve-nginx-")
        self.process: subprocess.Popen | None = None
        self.address = ""

    def start(self, timeout: float = 10.0) -> str:
        """Write the config, start nginx and wait until its port accepts connections."""
        prefix = Path(self._dir.name)
        port = _free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(render_config(port, self.upstreams, prefix, self.workers))
        subprocess.run([self.binary, "-t", "-q", "-p", str(prefix), "-c", str(conf)], check=True, timeout=30)
        self.process = subprocess.Popen(
            [self.binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        return self._wait_listening(
            port, timeout, lambda: f"nginx exited with {self.process.returncode}; see {prefix}/error.log"
        )
