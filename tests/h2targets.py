"""Servers for tests/integration/test_fuzz_native_framing.py to attack, and what it checks on them.

A `Target` is a running server process that serves ModelInfer: where it listens, its request and a
valid gRPC call that must keep working, what it accepts, and the checks every raw answer must pass.
`TARGETS` starts each kind: the native no-op server, a native server answered by Python, and the proxy
on --transport native.
"""

from __future__ import annotations

import collections
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from h2frames import Outcome, Peer, error_name
from procs import Service

from mve._proto import grpc_predict_v2_pb2 as oip

ROOT = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 6 * 1024 * 1024          # the transport's default max_message_bytes, the proxy's body limit
VALID_CALL_TIMEOUT_S = 5.0


@dataclass
class Target:
    """A server under attack: where it listens, its process, and a valid call that must keep working."""

    name: str
    host: str
    port: int
    service: Service
    path: str                           # a unary method answered OK
    request: bytes                      # a request message it answers OK
    valid_call: Callable[[], None]      # a fresh channel and one call; raises unless the answer is right
    echo_path: str | None = None        # a streaming method that sends each message back, if the target has one
    other_paths: tuple[str, ...] = ()   # more methods to send `request` to (any clear answer will do)
    hands_to_python: bool = False       # `path` is answered by Python (the loop hands requests over)
    any_message: bool = True            # `path` answers OK to any message bytes (a no-op), not only `request`
    fast_answers: bool = True           # answered in-process: 100,000 calls take seconds
    max_message: int = MAX_MESSAGE      # the transport's max_message_bytes: over it, RESOURCE_EXHAUSTED
    deadline_codes: tuple[int, ...] = (4,)  # the grpc-status of a call whose grpc-timeout passed: DEADLINE_EXCEEDED
    rss_start_mb: float = 0.0
    conversations: int = 0              # raw connections judged by `record`
    tally: dict[str, collections.Counter] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        """The methods the fuzzer calls: the unary one first, the echo stream, the others."""
        return [self.path] + ([self.echo_path] if self.echo_path else []) + list(self.other_paths)

    def converse(self, payload: bytes, until_streams: tuple[int, ...] = (), idle: float = 0.1,
                 handshake: bool = False, chunks: list[bytes] = ()) -> Outcome:
        """One raw connection: send `payload`, then `chunks` one by one, read, close. With `handshake`
        (preface, SETTINGS, the server's acknowledged) the chunks must be whole frames, and DATA waits for
        the server's flow-control windows, as a real client's does."""
        with Peer(self.host, self.port) as peer:
            if handshake:
                peer.handshake()
            peer.send(payload)
            if handshake:
                peer.send_within_windows(chunks)
            else:
                for chunk in chunks:
                    if not peer.send(chunk):
                        break
            return peer.read(until_streams, idle=idle)

    def record(self, case: str, outcome: Outcome) -> None:
        """Count this outcome's labels under `case`, and check what every answer must be."""
        self.conversations += 1
        self.tally.setdefault(case, collections.Counter()).update(outcome.labels())
        for stream_id, answer in outcome.streams.items():
            assert stream_id % 2 == 1, f"the server sent on stream {stream_id}, which no client opens: {outcome}"
            if answer.grpc_status is not None:
                assert answer.field(":status") == "200" and answer.field("content-type") == "application/grpc", answer
                assert answer.grpc_status != 2, f"UNKNOWN, an unclear error, on stream {stream_id}: {answer}"
            if answer.grpc_status == 0:
                assert grpc_messages(bytes(answer.data)) is not None, f"badly framed answer on stream {stream_id}"
        if outcome.goaway not in (None, 0):
            assert outcome.closed, f"GOAWAY {error_name(outcome.goaway)} but the connection stayed open"

    def check_healthy(self) -> None:
        """The process is alive and a fresh valid call answers correctly within 5 s."""
        assert self.service.alive(), (f"{self.name} died, exit status {self.service.process.returncode}:\n"
                                      + "".join(self.service.output[-40:]))
        self.valid_call()


def grpc_messages(body: bytes) -> list[bytes] | None:
    """The messages of a gRPC body (uncompressed, each with its 5-byte prefix); None if it is not one."""
    messages, at = [], 0
    while at < len(body):
        if len(body) - at < 5 or body[at] != 0:
            return None
        size = int.from_bytes(body[at + 1:at + 5], "big")
        if at + 5 + size > len(body):
            return None
        messages.append(body[at + 5:at + 5 + size])
        at += 5 + size
    return messages


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def held_connections(port: int) -> int:
    """TCP connections a server still holds on its local `port`: every state but LISTEN and TIME_WAIT
    (CLOSE_WAIT is a connection its peer closed and the server did not)."""
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                held += int(local.rsplit(":", 1)[1], 16) == port and state not in ("0A", "06")
    return held


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_script(script: Path, *args: str, timeout: float = 30.0) -> Service:
    """Run a Python script that prints a ready line (mve.ready) and wait for it."""
    process = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    ready: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in iter(process.stdout.readline, ""):
            lines.append(line)
            if '"ready"' in line:
                ready.put(line)
        ready.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        line = ready.get(timeout=timeout)
    except queue.Empty:
        line = None
    if not line:
        process.kill()
        process.wait(5)
        raise RuntimeError(f"{script.name} did not become ready:\n{''.join(lines)}")
    address = re.search(r'"address": "([^"]+)"', line).group(1)
    return Service(process=process, address=address, ready={}, output=lines)


INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
INFER_REQUEST = oip.ModelInferRequest(model_name="mlp", inputs=[oip.ModelInferRequest.InferInputTensor(
    name="input", datatype="FP32", shape=[1, 16])], raw_input_contents=[bytes(64)]).SerializeToString()


def _model_infer_target(name: str, service: Service, echo_path: str | None = None,
                        hands_to_python: bool = False) -> Target:
    """A target whose ModelInfer answers every request with noop_server.py's canned ModelInferResponse."""
    def valid_call() -> None:
        with grpc.insecure_channel(service.address) as channel:
            reply = channel.unary_unary(INFER_PATH)(INFER_REQUEST, timeout=VALID_CALL_TIMEOUT_S)
        answer = oip.ModelInferResponse.FromString(reply)
        assert answer.model_name == "mlp" and answer.outputs[0].name == "output", answer

    host, port = service.address.rsplit(":", 1)
    return Target(name, host, int(port), service, INFER_PATH, INFER_REQUEST, valid_call, echo_path=echo_path,
                  hands_to_python=hands_to_python)


def native_noop_target(request) -> Target:
    """benchmarks/noop_h2_server.py: every ModelInfer gets one canned answer, from C (add_canned)."""
    return _model_infer_target("native noop server", start_script(ROOT / "benchmarks" / "noop_h2_server.py"))


def native_answerer_target(request) -> Target:
    """tests/native_answerer.py: ModelInfer handed to Python whole (add_unary), other paths as streams
    (forward_others), /fuzz.Echo/Stream echoing each message."""
    return _model_infer_target("native server answered by Python", start_script(ROOT / "tests" / "native_answerer.py"),
                               echo_path="/fuzz.Echo/Stream", hands_to_python=True)


PROXY_ENDPOINT = "fuzz-native-7f3a9c"


def proxy_native_target(request) -> Target:
    """The proxy's gRPC door on the native transport (--transport native) before a control plane and one
    instance of the tiny "plus" model (y = x + 1): ModelInfer with model_name the endpoint's name."""
    from tiny_models import build_model

    import mve

    services = request.getfixturevalue("module_services")
    root = request.getfixturevalue("tmp_path_factory").mktemp("fuzz-native-proxy")
    build_model(root / "plus.onnx", "plus")
    control = services(["control-plane", "--data-dir", str(root / "cp"), "--port", "0"])
    proxy = services(["proxy", "--control-plane", control.address, "--port", "0", "--transport", "native"])
    with mve.client("sagemaker", address=control.address) as sm:
        sm.create_model(ModelName=PROXY_ENDPOINT, PrimaryContainer={"Image": "onnxruntime",
                                                                    "ModelDataUrl": str(root / "plus.onnx")})
        sm.create_endpoint_config(EndpointConfigName=PROXY_ENDPOINT, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": PROXY_ENDPOINT, "InitialInstanceCount": 1,
            "InstanceType": "ml.cpu.small"}])
        sm.create_endpoint(EndpointName=PROXY_ENDPOINT, EndpointConfigName=PROXY_ENDPOINT)
        sm.get_waiter("endpoint_in_service").wait(EndpointName=PROXY_ENDPOINT,
                                                  WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    infer = oip.ModelInferRequest(model_name=PROXY_ENDPOINT, inputs=[oip.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1, 2])], raw_input_contents=[b"\x00\x00\x80\x3f" * 2]).SerializeToString()

    def valid_call() -> None:
        with grpc.insecure_channel(proxy.address) as channel:
            reply = channel.unary_unary(INFER_PATH)(infer, timeout=VALID_CALL_TIMEOUT_S)
        answer = oip.ModelInferResponse.FromString(reply)
        assert answer.outputs[0].name == "y" and answer.raw_output_contents[0] == b"\x00\x00\x00\x40" * 2, answer

    deadline = time.monotonic() + 30
    while True:     # the proxy learns the route from the control plane's watch
        try:
            valid_call()
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    host, port = proxy.address.rsplit(":", 1)
    # The door takes messages up to 32 MB, as the grpc.aio door does; the data plane refuses bodies over
    # 6 MB. A deadline that passes inside the proxy is answered by whichever comes first: the loop's
    # DEADLINE_EXCEEDED, or the data plane's own (the batcher: ServiceUnavailable while queued,
    # ModelError 504 = INTERNAL after dispatch).
    return Target("proxy on the native transport", host, int(port), proxy, INFER_PATH, infer, valid_call,
                  hands_to_python=True, any_message=False, fast_answers=False, max_message=32 * 1024 * 1024,
                  deadline_codes=(4, 13, 14), other_paths=(  # the other unary path, and one forwarded to grpc.aio
                      "/mve.v1.EndpointRuntime/InvokeEndpoint", "/grpc.health.v1.Health/Check"))


TARGETS = {"native-noop": native_noop_target, "native-answerer": native_answerer_target,
           "proxy-native": proxy_native_target}
