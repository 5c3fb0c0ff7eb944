"""The local instance provider: each instance is a ``mve model-server`` child process.

A model server writes stdout and stderr to ``<data-dir>/logs/<endpoint>/<instance>.log`` rather than
to pipes: a file never fills up and blocks the child, keeps the output for the operator, and stays
writable after a control plane crash (a pipe to a dead parent would break the servers we want to
adopt). The ready line (``{"event": "ready", "address": ...}``) is read from that file, then the
server must answer ServerReady and ModelReady, all within the variant's startup timeout.

With TLS (``--model-server-tls-*``) each server is started with its certificate and mutual TLS
required (`tls_flags`), and every call the control plane makes to one, readiness checks included
(adopted servers too), is dialled with `credentials`: TLS, verified against the control plane's
CA, presenting its own certificate.

Children stay in the control plane's process group (no new session), so whoever kills that group
kills them too. Their exit is watched; adopted servers (started by an earlier control plane) are
polled by pid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc

from mve._proto import grpc_predict_v2_pb2 as v2
from mve._proto import grpc_predict_v2_pb2_grpc as v2_grpc

log = logging.getLogger(__name__)

TAIL_LINES = 6
MAX_REASON_CHARS = 1024


# Model servers trace a request only when its caller's trace is sampled (the proxy decides, and
# sends no header for a request it does not sample); they never start a trace of their own.
# A model's own environment (CreateModel's Environment) may say otherwise.
MODEL_SERVER_TRACING = {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}


def model_server_env(base: dict, model_environment: dict) -> dict:
    """A model server's environment: the control plane's, its model's, and its tracing sampler."""
    env = {**base, **MODEL_SERVER_TRACING, **model_environment, "PYTHONUNBUFFERED": "1"}
    if env.get("OTEL_TRACES_EXPORTER", "none") == "none" and "OTEL_TRACES_SAMPLER" not in model_environment:
        del env["OTEL_TRACES_SAMPLER"]  # tracing off: leave no OTEL_* behind that was not there
        if "OTEL_TRACES_SAMPLER" in base:
            env["OTEL_TRACES_SAMPLER"] = base["OTEL_TRACES_SAMPLER"]
    return env


class InstanceStartError(Exception):
    """An instance did not become ready; the message says why, for FailureReason."""


@dataclass(frozen=True)
class LaunchSpec:
    """What to run for one instance."""

    endpoint_name: str
    variant_name: str
    instance_id: str
    artifact_path: str
    model_name: str
    device: str
    threads: int
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class ModelServerProcess:
    """A running (or adopted) model server."""

    spec: LaunchSpec
    pid: int
    log_path: Path
    adopted: bool = False
    address: str = ""
    ready: bool = False
    stopping: bool = False
    returncode: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    process: asyncio.subprocess.Process | None = None

    @property
    def label(self) -> str:
        """``variant X instance Y`` for messages."""
        return f"variant {self.spec.variant_name} instance {self.spec.instance_id}"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def tail_of(path: Path, lines: int = TAIL_LINES) -> str:
    """The last non-empty lines of a log (without the ready line and terminal colours)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [
        _ANSI.sub("", line).rstrip()
        for line in text.splitlines()
        if _ANSI.sub("", line).strip() and '"event": "ready"' not in line
    ]
    return "\n".join(kept[-lines:])


def failure_summary(path: Path) -> str:
    """The line of a model server's output that best says why it failed, for a FailureReason.

    The last line that reads like an error (``error:``, ``Error``, ``Exception``) wins, since a
    failing server's last words are its reason; otherwise the last line. The full output stays in
    the log, whose path is added.
    """
    lines = tail_of(path, lines=40).splitlines()
    errors = [line for line in lines if re.search(r"error:|Error|Exception", line)]
    chosen = (errors or lines or ["(no output)"])[-1].strip()
    return f"{chosen[-MAX_REASON_CHARS:]} (log: {path})"


def _read_ready_line(path: Path, offset: int) -> tuple[dict | None, int]:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return None, offset
    end = chunk.rfind(b"\n") + 1
    for raw in chunk[:end].splitlines():
        text = raw.decode("utf-8", "replace").strip()
        if text.startswith("{") and '"ready"' in text:
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "ready" and event.get("address"):
                return event, offset + end
    return None, offset + end


def pid_is_model_server(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) ``mve model-server`` process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"model-server" in cmdline


def model_server_channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """A channel to a model server: TLS with `credentials`, else plaintext."""
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, credentials)


async def check_ready(
    address: str, model_name: str | None, timeout_s: float, credentials: grpc.ChannelCredentials | None = None
) -> bool:
    """True when the server at `address` answers ServerReady (and ModelReady for `model_name`);
    dialled with TLS when `credentials` are given."""
    async with model_server_channel(address, credentials) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        try:
            server = await stub.ServerReady(v2.ServerReadyRequest(), timeout=timeout_s)
            if not server.ready:
                return False
            if model_name is None:
                return True
            model = await stub.ModelReady(v2.ModelReadyRequest(name=model_name), timeout=timeout_s)
            return bool(model.ready)
        except grpc.aio.AioRpcError:
            return False


class LocalInstanceProvider:
    """Starts, watches, adopts and stops model-server processes on this machine."""

    def __init__(
        self,
        log_dir: Path,
        *,
        on_exit: Callable[[ModelServerProcess], None] | None = None,
        command_prefix: tuple[str, ...] = (),
        stop_grace_s: float = 10.0,
        poll_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        tls_flags: tuple[str, ...] = (),
        credentials: grpc.ChannelCredentials | None = None,
    ):
        if bool(tls_flags) != (credentials is not None):
            raise ValueError("tls_flags and credentials go together: model servers on TLS are dialled with TLS")
        self.log_dir = Path(log_dir)
        #: The TLS flags model servers are started with, and the credentials they are dialled with.
        self.tls_flags = tuple(tls_flags)
        self.credentials = credentials
        #: Called (on the event loop) when a ready process exits without being asked to.
        self.on_exit = on_exit
        self._prefix = tuple(command_prefix)
        self._stop_grace_s = stop_grace_s
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._processes: dict[str, ModelServerProcess] = {}
        self._watchers: set[asyncio.Task] = set()

    def command(self, spec: LaunchSpec) -> list[str]:
        """The argv of a model server for `spec`."""
        return [
            *self._prefix,
            sys.executable,
            "-m",
            "mve",
            "model-server",
            "--model",
            spec.artifact_path,
            "--model-name",
            spec.model_name,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--device",
            spec.device,
            "--threads",
            str(spec.threads),
            *self.tls_flags,
        ]

    def processes(self, endpoint_name: str | None = None) -> list[ModelServerProcess]:
        """The processes this provider runs, for one endpoint or all."""
        return [p for p in self._processes.values() if endpoint_name is None or p.spec.endpoint_name == endpoint_name]

    def get(self, instance_id: str) -> ModelServerProcess | None:
        """The process of an instance, or None."""
        return self._processes.get(instance_id)

    async def spawn(self, spec: LaunchSpec) -> ModelServerProcess:
        """Start a model server; returns at once (see `wait_ready`)."""
        log_path = self.log_dir / spec.endpoint_name / f"{spec.instance_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = model_server_env(os.environ, spec.environment)
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *self.command(spec),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        handle = ModelServerProcess(spec=spec, pid=process.pid, log_path=log_path, process=process)
        self._processes[spec.instance_id] = handle
        self._watch(self._wait_child(handle))
        log.info(
            "event=instance_spawned endpoint=%s variant=%s instance=%s pid=%d device=%s threads=%d",
            spec.endpoint_name, spec.variant_name, spec.instance_id, process.pid, spec.device, spec.threads,
        )
        return handle

    async def wait_ready(self, handle: ModelServerProcess, timeout_s: float) -> str:
        """Wait for the ready line, then ServerReady and ModelReady; the address, or InstanceStartError."""
        deadline = self._clock() + timeout_s
        offset = 0
        while not handle.address:
            event, offset = _read_ready_line(handle.log_path, offset)
            if event is not None:
                handle.address = str(event["address"])
                break
            self._raise_if_exited(handle)
            if self._clock() >= deadline:
                raise self._timeout(handle, timeout_s)
            await asyncio.sleep(0.05)
        while True:
            self._raise_if_exited(handle)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._timeout(handle, timeout_s)
            if await check_ready(handle.address, handle.spec.model_name, min(remaining, 5.0), self.credentials):
                handle.ready = True
                return handle.address
            await asyncio.sleep(0.1)

    def _raise_if_exited(self, handle: ModelServerProcess) -> None:
        if handle.exited.is_set():
            raise InstanceStartError(
                f"{handle.label} exited with code {handle.returncode} before it was ready: "
                f"{failure_summary(handle.log_path)}"
            )

    def _timeout(self, handle: ModelServerProcess, timeout_s: float) -> InstanceStartError:
        return InstanceStartError(
            f"{handle.label} did not pass its health check (ServerReady and ModelReady) within "
            f"{timeout_s:g} s (ContainerStartupHealthCheckTimeoutInSeconds); last output: "
            f"{failure_summary(handle.log_path)}"
        )

    async def adopt(self, spec: LaunchSpec, pid: int, address: str, log_path: str) -> ModelServerProcess | None:
        """Take over a model server an earlier control plane started, if it is alive and ready."""
        if not address or not pid_is_model_server(pid):
            return None
        if not await check_ready(address, spec.model_name, 2.0, self.credentials):
            return None
        handle = ModelServerProcess(
            spec=spec, pid=pid, log_path=Path(log_path), adopted=True, address=address, ready=True
        )
        self._processes[spec.instance_id] = handle
        self._watch(self._poll_adopted(handle))
        log.info(
            "event=instance_adopted endpoint=%s variant=%s instance=%s pid=%d address=%s",
            spec.endpoint_name, spec.variant_name, spec.instance_id, pid, address,
        )
        return handle

    def _watch(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _wait_child(self, handle: ModelServerProcess) -> None:
        assert handle.process is not None
        handle.returncode = await handle.process.wait()
        self._exited(handle)

    async def _poll_adopted(self, handle: ModelServerProcess) -> None:
        while pid_is_model_server(handle.pid):
            await asyncio.sleep(self._poll_interval_s)
        self._exited(handle)

    def _exited(self, handle: ModelServerProcess) -> None:
        handle.exited.set()
        if self._processes.get(handle.spec.instance_id) is handle:
            del self._processes[handle.spec.instance_id]
        if not handle.stopping:
            log.warning(
                "event=instance_exited endpoint=%s variant=%s instance=%s pid=%d code=%s",
                handle.spec.endpoint_name, handle.spec.variant_name, handle.spec.instance_id,
                handle.pid, handle.returncode,
            )
            if self.on_exit is not None and handle.ready:
                self.on_exit(handle)

    async def stop(self, handle: ModelServerProcess, grace_s: float | None = None) -> None:
        """SIGTERM, wait up to the grace period, then SIGKILL; returns when the process is gone."""
        grace = self._stop_grace_s if grace_s is None else grace_s
        handle.stopping = True
        if handle.exited.is_set():
            return
        self._signal(handle, signal.SIGTERM)
        try:
            await asyncio.wait_for(handle.exited.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("event=instance_kill instance=%s pid=%d grace_s=%g", handle.spec.instance_id, handle.pid, grace)
            self._signal(handle, signal.SIGKILL)
            try:
                await asyncio.wait_for(handle.exited.wait(), 5.0)
            except asyncio.TimeoutError:
                log.error("event=instance_unkillable instance=%s pid=%d", handle.spec.instance_id, handle.pid)
        log.info(
            "event=instance_stopped endpoint=%s variant=%s instance=%s pid=%d",
            handle.spec.endpoint_name, handle.spec.variant_name, handle.spec.instance_id, handle.pid,
        )

    def _signal(self, handle: ModelServerProcess, signum: int) -> None:
        if handle.adopted and not pid_is_model_server(handle.pid):
            return
        try:
            os.kill(handle.pid, signum)
        except ProcessLookupError:
            pass

    async def stop_all(self, endpoint_name: str | None = None, grace_s: float | None = None) -> None:
        """Stop every process (of one endpoint, or all) concurrently."""
        await asyncio.gather(*(self.stop(p, grace_s) for p in self.processes(endpoint_name)))
