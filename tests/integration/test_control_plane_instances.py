"""The local instance provider on stand-in processes (sh), and reading model-server logs."""

from __future__ import annotations

import asyncio

import pytest

from mve.control.instances import (
    InstanceStartError,
    LaunchSpec,
    LocalInstanceProvider,
    _read_ready_line,
    failure_summary,
)

pytestmark = pytest.mark.integration

SPEC = LaunchSpec("ep", "A", "A-1", "/nonexistent.onnx", "m", "cpu", 1)


def test_failure_summary_picks_the_error_line_and_drops_colours(tmp_path):
    log = tmp_path / "x.log"
    log.write_text(
        "INFO loading\n\x1b[0;93mW: Failed to create CUDAExecutionProvider. Require cuDNN\x1b[m\n"
        "mve model-server: error: CUDA is not available for device cuda:0\n\n"
    )
    assert failure_summary(log) == f"mve model-server: error: CUDA is not available for device cuda:0 (log: {log})"


def test_the_ready_line_is_found_only_once_complete(tmp_path):
    log = tmp_path / "x.log"
    log.write_text('noise\n{"event": "ready", "address": "127.0.0.1:5')
    event, offset = _read_ready_line(log, 0)
    assert event is None and offset == len("noise\n")
    with log.open("a") as f:
        f.write('1"}\n')
    event, _ = _read_ready_line(log, offset)
    assert event["address"] == "127.0.0.1:51"


def _provider(tmp_path, script: str, exits: list) -> LocalInstanceProvider:
    return LocalInstanceProvider(
        tmp_path / "logs", command_prefix=("sh", "-c", script, "sh"), on_exit=exits.append, stop_grace_s=1.0
    )


def test_an_instance_that_exits_reports_its_code_and_last_error(tmp_path):
    async def scenario():
        exits: list = []
        provider = _provider(tmp_path, "echo starting; echo 'fatal error: no model' >&2; exit 3", exits)
        handle = await provider.spawn(SPEC)
        with pytest.raises(InstanceStartError, match=r"variant A instance A-1 exited with code 3 .*fatal error: no model"):
            await provider.wait_ready(handle, 10)
        assert provider.processes() == [] and exits == []  # never ready: not reported as a crash

    asyncio.run(scenario())


def test_an_instance_that_never_gets_ready_times_out_and_can_be_stopped(tmp_path):
    async def scenario():
        provider = _provider(tmp_path, "exec sleep 30", [])
        handle = await provider.spawn(SPEC)
        with pytest.raises(InstanceStartError, match="within 0.3 s"):
            await provider.wait_ready(handle, 0.3)
        await provider.stop(handle)
        assert handle.exited.is_set() and handle.returncode is not None
        assert provider.processes() == []

    asyncio.run(scenario())


def test_a_ready_instance_that_dies_is_reported(tmp_path):
    async def scenario():
        exits: list = []
        provider = _provider(tmp_path, "exec sleep 30", exits)
        handle = await provider.spawn(SPEC)
        handle.ready = True  # as if it had passed its health check
        import os
        import signal

        os.kill(handle.pid, signal.SIGKILL)
        await asyncio.wait_for(handle.exited.wait(), 5)
        assert exits == [handle] and handle.returncode == -signal.SIGKILL

    asyncio.run(scenario())
