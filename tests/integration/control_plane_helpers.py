"""Helpers for the control-plane integration tests: stubs, waits, instance pids, child processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import numpy as np

from mve._proto import control_pb2 as pb
from mve._proto import control_pb2_grpc as pb_grpc
from mve._proto import grpc_predict_v2_pb2 as v2
from mve._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from mve.tensors import numpy_to_raw, raw_to_numpy
from procs import wait_until


def control_stub(address: str) -> pb_grpc.EndpointControlStub:
    """A stub on a fresh channel to the control plane."""
    return pb_grpc.EndpointControlStub(grpc.insecure_channel(address))


def create_model(stub, name: str, path: Path) -> None:
    stub.CreateModel(
        pb.CreateModelRequest(model_name=name, primary_container=pb.ContainerDefinition(model_data_url=str(path)))
    )


def variant(name: str, model: str, count: int = 1, weight: float = 1.0, instance_type: str = "ml.cpu.small", **kw):
    return pb.ProductionVariant(
        variant_name=name,
        model_name=model,
        initial_instance_count=count,
        initial_variant_weight=weight,
        instance_type=instance_type,
        **kw,
    )


def describe(stub, name: str) -> pb.DescribeEndpointResponse:
    return stub.DescribeEndpoint(pb.DescribeEndpointRequest(endpoint_name=name), timeout=10)


def wait_status(stub, name: str, statuses=("InService", "Failed"), timeout: float = 60.0) -> pb.DescribeEndpointResponse:
    """Poll DescribeEndpoint until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        response = describe(stub, name)
        if response.endpoint_status in statuses:
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"endpoint {name} still {response.endpoint_status} after {timeout} s")
        time.sleep(0.05)


def wait_deleted(stub, name: str, timeout: float = 30.0) -> None:
    def gone():
        try:
            describe(stub, name)
        except grpc.RpcError as error:
            return error.code() == grpc.StatusCode.NOT_FOUND
        return False

    wait_until(gone, timeout, what=f"endpoint {name} to be deleted")


class RouteWatch:
    """A WatchRoutes stream read one table at a time."""

    def __init__(self, stub, proxy_id: str = "test"):
        self._stream = stub.WatchRoutes(pb.WatchRoutesRequest(proxy_id=proxy_id))
        self.latest: pb.RoutingTable | None = None

    def next(self) -> pb.RoutingTable:
        self.latest = next(self._stream)
        return self.latest

    def until(self, predicate, limit: int = 100) -> pb.RoutingTable:
        """Read tables until one satisfies `predicate` (the current one counts)."""
        if self.latest is not None and predicate(self.latest):
            return self.latest
        for _ in range(limit):
            table = self.next()
            if predicate(table):
                return table
        raise AssertionError("no routing table satisfied the predicate")

    def close(self) -> None:
        self._stream.cancel()


def endpoint_route(table: pb.RoutingTable, name: str) -> pb.EndpointRoute | None:
    return next((e for e in table.endpoints if e.endpoint_name == name), None)


def variant_addresses(table: pb.RoutingTable, endpoint: str, variant_name: str) -> list[str]:
    route = endpoint_route(table, endpoint)
    if route is None:
        return []
    return [i.address for v in route.variants if v.variant_name == variant_name for i in v.instances]


def variant_instances(table: pb.RoutingTable, endpoint: str, variant_name: str) -> list[pb.InstanceRoute]:
    route = endpoint_route(table, endpoint)
    return [] if route is None else [i for v in route.variants if v.variant_name == variant_name for i in v.instances]


def instance_pid(data_dir: Path, endpoint: str, instance_id: str) -> int:
    """The model server's pid, from the ready line in its log."""
    for line in (data_dir / "logs" / endpoint / f"{instance_id}.log").read_text().splitlines():
        if line.startswith("{") and '"ready"' in line:
            return int(json.loads(line)["pid"])
    raise AssertionError(f"no ready line in the log of {instance_id}")


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def infer(address: str, model_name: str, array: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
    """One ModelInfer call straight to a model server; outputs by name."""
    with grpc.insecure_channel(address) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        request = v2.ModelInferRequest(
            model_name=model_name,
            inputs=[v2.ModelInferRequest.InferInputTensor(name=input_name, datatype="FP32", shape=list(array.shape))],
            raw_input_contents=[numpy_to_raw(array)],
        )
        response = stub.ModelInfer(request, timeout=10)
    return {
        out.name: raw_to_numpy(raw, out.datatype, out.shape, out.name)
        for out, raw in zip(response.outputs, response.raw_output_contents)
    }


def server_ready(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            return v2_grpc.GRPCInferenceServiceStub(channel).ServerReady(v2.ServerReadyRequest(), timeout=2).ready
        except grpc.RpcError:
            return False
