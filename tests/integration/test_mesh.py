"""``mve up`` and the `Mesh` supervisor with the real control plane and proxy."""

from __future__ import annotations

import io
import os
import signal
import socket
import time

import numpy as np
import pytest

import mve
from mve.sdk import ClientError
from mve.examples import load_eval_data
from mve.mesh import Mesh
from procs import run_mve, start_service, wait_until

pytestmark = pytest.mark.integration

FAST = {"Delay": 0.2, "MaxAttempts": 600}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_mve_up_runs_until_sigterm_and_leaves_nothing(tmp_path):
    service = start_service(["up", "--data-dir", str(tmp_path), "--control-plane-port", "0", "--proxy-port", "0"])
    try:
        assert service.ready["service"] == "mesh"
        children = service.ready["children"]
        assert set(children) == {"control-plane", "proxy"}
        with mve.client("sagemaker", address=service.ready["control_plane"]) as sm:
            assert sm.list_endpoints()["Endpoints"] == []
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(30) == 0
        wait_until(lambda: all(_gone(pid) for pid in children.values()), 10, what="the children to exit")
    finally:
        service.stop()


def test_mve_up_on_a_busy_port_exits_1_and_says_why(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_mve(["up", "--data-dir", str(tmp_path), "--control-plane-port", str(port), "--proxy-port", "0"])
    assert result.returncode == 1
    assert "mve up: control-plane exited with code" in result.stderr
    assert "Traceback" not in result.stderr


def test_mesh_restarts_a_crashed_proxy_on_the_same_port(tmp_path):
    with Mesh(tmp_path, log_path=tmp_path / "mesh.log") as mesh:
        proxy_address = mesh.proxy_address
        old_pid = mesh.child_pids()["proxy"]
        os.kill(old_pid, signal.SIGKILL)
        wait_until(lambda: mesh.child_pids().get("proxy") not in (None, old_pid), 30, what="a new proxy")
        assert mesh.proxy_address == proxy_address
        with mve.client("sagemaker-runtime", address=proxy_address) as smr:
            # The restarted proxy answers: an unknown endpoint is the service's error, not a connection error.
            with pytest.raises(ClientError):
                smr.invoke_endpoint(EndpointName="nothing-here", Body=b"1", ContentType="text/csv")
        pids = list(mesh.child_pids().values())
    assert all(_gone(pid) for pid in pids)


def test_a_crashed_control_plane_comes_back_and_the_endpoint_keeps_serving(tmp_path, example_models):
    X, _ = load_eval_data()
    body = io.BytesIO()
    np.save(body, X[:2])
    with Mesh(tmp_path, log_path=tmp_path / "mesh.log") as mesh:
        sm = mve.client("sagemaker", address=mesh.control_plane_address)
        smr = mve.client("sagemaker-runtime", address=mesh.proxy_address)
        sm.create_model(ModelName="m", PrimaryContainer={"Image": "onnxruntime",
                                                         "ModelDataUrl": str(example_models["cancer-strong"])})
        sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small"}])
        sm.create_endpoint(EndpointName="e", EndpointConfigName="c")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="e", WaiterConfig=FAST)
        old_pid = mesh.child_pids()["control-plane"]

        os.kill(old_pid, signal.SIGKILL)
        # The proxy serves on its last routing table while the control plane is away.
        answer = smr.invoke_endpoint(EndpointName="e", Body=body.getvalue(), ContentType="application/x-npy")
        assert answer["InvokedProductionVariant"] == "AllTraffic"
        new_pid = wait_until(lambda: mesh.child_pids().get("control-plane") not in (None, old_pid)
                            and mesh.child_pids()["control-plane"], 30, what="a new control plane")
        sm.close()
        with mve.client("sagemaker", address=mesh.control_plane_address) as sm:
            sm.get_waiter("endpoint_in_service").wait(EndpointName="e", WaiterConfig=FAST)
        answer = smr.invoke_endpoint(EndpointName="e", Body=body.getvalue(), ContentType="application/x-npy")
        assert answer["InvokedProductionVariant"] == "AllTraffic"
        smr.close()
    # Stopping the mesh leaves nothing of either control plane's process group (model servers included).
    assert _group_members(old_pid) == [] and _group_members(new_pid) == []
