"""The same closed-loop ModelInfer load as loadgen.py, driven by nghttp2's ``h2load`` (C, far less CPU).

gRPC is HTTP/2 with prior knowledge: h2load POSTs a prepared body (the 5-byte gRPC message frame
and the serialised ``ModelInferRequest``) with ``content-type: application/grpc`` and
``te: trailers``, `concurrency` streams over ``min(4, concurrency // 16)`` connections (at least
one), for `seconds` after a warm-up. h2load judges an answer by its HTTP status only, and gRPC
errors come as HTTP 200 with a grpc-status trailer and no message, so the caller checks one answer
with a gRPC client first (`check_answer`) and `run_h2load` counts as errors the answers missing
from h2load's data bytes (every good answer carries one message of known size).

Returns the dict loadgen.py prints (requests, errors, seconds, throughput_rps, p50/p99/mean ms from
h2load's per-request log), with ``answers_total`` (every answer, warm-up included, from the data
bytes: what a CPU-per-request figure divides by) and ``_latencies_ms`` (the measured latencies, a
numpy array, for merging cells; not JSON).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import grpc
import numpy as np

from loadgen import METHOD, infer_request
from mve._proto import grpc_predict_v2_pb2 as pb

H2LOAD = "h2load"


def available() -> bool:
    """Whether the h2load binary is on PATH (Debian: nghttp2-client)."""
    return shutil.which(H2LOAD) is not None


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of `value`."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def check_answer(target: str, body: bytes, timeout: float = 30.0, samples: int = 16) -> tuple[int, int]:
    """Send `body` `samples` times at once with a gRPC client; the smallest and largest good answer frame
    (message + 5 bytes). Answers can differ in size (a proxy's batched answer may carry an ``id``), so
    the smallest counts each answer without its id.

    Raises RuntimeError if an answer is an error or carries no output.
    """
    from concurrent.futures import ThreadPoolExecutor

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        try:
            answers = [call(body, timeout=timeout)]  # one first: the connection, and a clear error
            with ThreadPoolExecutor(samples) as pool:
                answers += list(pool.map(lambda _: call(body, timeout=timeout), range(samples - 1)))
        except grpc.RpcError as error:
            raise RuntimeError(f"{target} answered {error.code().name}: {error.details()}") from None
    sizes = []
    for answer in answers:
        response = pb.ModelInferResponse.FromString(answer)
        if not response.outputs or len(response.raw_output_contents) != len(response.outputs):
            raise RuntimeError(f"{target} answered without raw outputs: {response}")
        sizes.append(len(answer) + 5)
        # Answers differ in their ids (the mve proxy appends its fields to the model server's answer, whose
        # id is the batch's or the caller's): the smallest good answer is counted without its id, a lower
        # bound, so that a shortfall is never a false error (and the error count a lower bound too).
        if response.id:
            length = len(response.id.encode())
            sizes.append(len(answer) + 5 - (1 + len(_varint(length)) + length))
    return min(sizes), max(sizes)


def run_h2load(target: str, model: str, *, concurrency: int, rows: int, seconds: float, warmup: float,
               features: int = 16) -> dict:
    """One closed-loop cell with h2load; the summary dict of loadgen.py."""
    body = infer_request(model, rows, features)
    frame_min, frame_max = check_answer(target, body)
    connections = max(1, min(4, concurrency // 16))
    streams = -(-concurrency // connections)
    with tempfile.TemporaryDirectory(prefix="mve-h2load-") as tmp:
        data_file, log_file = Path(tmp) / "body", Path(tmp) / "log"
        data_file.write_bytes(b"\x00" + struct.pack(">I", len(body)) + body)
        command = [
            H2LOAD, "-D", f"{max(int(seconds * 1000), 1)}ms", "--warm-up-time", f"{max(int(warmup * 1000), 1)}ms",
            "-c", str(connections), "-m", str(streams), "-t", "1", "-d", str(data_file),
            "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(log_file),
            f"http://{target}{METHOD}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup + 60)
        if done.returncode != 0:
            raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr[-2000:]}{done.stdout[-2000:]}")
        log = np.loadtxt(log_file, dtype=np.int64, ndmin=2) if log_file.stat().st_size else np.zeros((0, 3))
    out = done.stdout
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", out)
    if counts is None:
        raise RuntimeError(f"cannot read h2load's summary:\n{out[-2000:]}")
    succeeded, failed, errored, timed_out = (int(counts.group(i)) for i in (3, 4, 5, 6))
    data = re.search(r"\((\d+)\) data", out)
    data_bytes = int(data.group(1)) if data else 0
    # Data bytes also count the warm-up's answers: only a shortfall below the measured ones is an error.
    # With answers of several sizes the smallest gives the most answers the bytes can hold (a lower
    # bound on the errors), and every answer (warm-up included) is estimated from the time instead.
    missing = max(0, succeeded - data_bytes // frame_min)
    if frame_min == frame_max:
        answers_total = data_bytes // frame_min
    else:
        answers_total = round(succeeded * (seconds + warmup) / seconds)
    ok = log[log[:, 1] == 200] if len(log) else log
    latencies_ms = ok[:, 2] / 1e3 if len(ok) else np.zeros(0)
    measured = float(seconds)
    good = max(0, succeeded - missing)
    return {
        "requests": good,
        "errors": failed + errored + timed_out + missing,
        "error_codes": {"h2load_failed": failed, "errored": errored, "timeout": timed_out, "no_message": missing},
        "seconds": measured,
        "throughput_rps": good / measured,
        "p50_ms": float(np.percentile(latencies_ms, 50)) if len(latencies_ms) else None,
        "p99_ms": float(np.percentile(latencies_ms, 99)) if len(latencies_ms) else None,
        "mean_ms": float(latencies_ms.mean()) if len(latencies_ms) else None,
        "answers_total": answers_total,
        "answer_frame_bytes": [frame_min, frame_max],
        "_latencies_ms": latencies_ms,
        "variants": {},
        "loadgen": "h2load",
        "connections": connections,
        "concurrency": concurrency,
        "rows": rows,
    }


INSTALL_HINT = "sudo apt-get update && sudo apt-get install -y nghttp2-client"


def ensure_h2load() -> str:
    """The h2load binary; installs nghttp2-client (apt-get, as root) when missing, else RuntimeError."""
    found = shutil.which(H2LOAD)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"h2load is not installed; try: {INSTALL_HINT}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=True, env=env, timeout=600)
    found = shutil.which(H2LOAD)
    if not found:
        raise RuntimeError(f"apt-get installed nghttp2-client but no h2load was found; try: {INSTALL_HINT}")
    return found
