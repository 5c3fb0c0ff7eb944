"""Shared fixtures: services started as real processes and stopped at teardown."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The tests are hermetic: a developer's MVE_* settings (a token, TLS files, addresses, ports) would
# reach every client and every process the tests start. Tests that want one set it themselves.
# Kept: the knobs of the tests themselves (MVE_FUZZ_EXAMPLES for a longer fuzz run, MVE_PROXY_TRANSPORT
# for the proxies they start: `make test` runs the gRPC door's tests again on grpc-aio).
_TEST_KNOBS = {"MVE_FUZZ_EXAMPLES", "MVE_PROXY_TRANSPORT"}
for _name in [name for name in os.environ if name.startswith("MVE_") and name not in _TEST_KNOBS]:
    del os.environ[_name]

from procs import Service, start_service  # noqa: E402


def _service_starter():
    started: list[Service] = []

    def start(args: list[str], **kwargs) -> Service:
        service = start_service(args, **kwargs)
        started.append(service)
        return service

    def stop_all() -> None:
        # SIGTERM to all, newest first, then wait for each: they stop side by side (a control plane's
        # shutdown no longer waits for its proxies' to finish first).
        for service in reversed(started):
            service.terminate()
        for service in reversed(started):
            service.stop()

    return start, stop_all


@pytest.fixture
def services():
    """Start services with ``services(args)``; every one is stopped at teardown."""
    start, stop_all = _service_starter()
    yield start
    stop_all()


@pytest.fixture(scope="module")
def module_services():
    """Like `services`, for services shared by the tests of one module."""
    start, stop_all = _service_starter()
    yield start
    stop_all()


@pytest.fixture(scope="session")
def example_models(tmp_path_factory):
    """The example ONNX models, built once per session: ``{"cancer-weak", "cancer-strong", "mlp": Path}``."""
    from mve.examples import build_example_models

    return build_example_models(tmp_path_factory.mktemp("example-models"))


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """CLI output as on a wide terminal: rich cuts table cells at the terminal's width ($COLUMNS),
    and the tests read whole cells. A test that wants another width sets COLUMNS itself."""
    monkeypatch.setenv("COLUMNS", "250")
