"""A second control plane on a port another one holds fails to bind, instead of sharing it.

gRPC turns SO_REUSEPORT on by default: without ``grpc.so_reuseport=0`` a second control plane
(on another data dir, say) would bind the taken port silently and take some of the connections.
"""

from __future__ import annotations

from procs import run_mve, start_service


def _plane_args(data_dir, port: int = 0) -> list[str]:
    return ["control-plane", "--data-dir", str(data_dir), "--port", str(port), "--metrics-port", "-1",
            "--http-port", "-1"]


def test_a_second_control_plane_on_a_taken_port_exits_saying_so(tmp_path):
    first = start_service(_plane_args(tmp_path / "a"))
    try:
        second = run_mve(_plane_args(tmp_path / "b", first.port), timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "event=bind_failed" in second.stdout + second.stderr
        assert first.alive()
    finally:
        assert first.stop() == 0
