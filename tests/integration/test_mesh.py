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
from test_prometheus_scrape import sample, scrape

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


def test_mve_up_announces_its_metrics_addresses_runs_until_sigterm_and_leaves_nothing(tmp_path):
    # One `mve up` for both checks (it was two tests, each starting its own mesh): the Prometheus
    # addresses it prints and announces (the proxy's on a free port, the control plane's off with -1),
    # then SIGTERM ends it with 0 and no child left.
    service = start_service(["up", "--data-dir", str(tmp_path), "--control-plane-port", "0", "--proxy-port", "0",
                             "--proxy-metrics-port", "0", "--control-plane-metrics-port", "-1"])
    try:
        assert service.ready["service"] == "mesh"
        children = service.ready["children"]
        assert set(children) == {"control-plane", "proxy"}
        assert service.ready["control_plane_metrics"] == ""
        assert sample(scrape(service.ready["proxy_metrics"]), "mve_proxy_routing_table_version") is not None
        wait_until(lambda: any(f"http://{service.ready['proxy_metrics']}/metrics" in line for line in service.output),
                   what="mve up to print the proxy's metrics URL")
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


def test_mesh_restarts_a_crashed_proxy_on_the_same_ports_and_surfaces_both_metrics_addresses(tmp_path):
    # One Mesh for both checks (it was two tests, each starting the same mesh and killing its proxy):
    # the restarted proxy keeps its gRPC port and its metrics port, and answers on both.
    with Mesh(tmp_path, log_path=tmp_path / "mesh.log") as mesh:
        assert sample(scrape(mesh.control_plane_metrics_address), "mve_routing_table_version") >= 1
        metrics_address = mesh.proxy_metrics_address
        assert sample(scrape(metrics_address), "mve_proxy_routing_table_version") is not None
        proxy_address = mesh.proxy_address
        old_pid = mesh.child_pids()["proxy"]
        os.kill(old_pid, signal.SIGKILL)
        wait_until(lambda: mesh.child_pids().get("proxy") not in (None, old_pid), 30, what="a new proxy")
        assert mesh.proxy_address == proxy_address
        assert mesh.proxy_metrics_address == metrics_address
        assert sample(scrape(metrics_address), "mve_proxy_routing_table_version") is not None
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
