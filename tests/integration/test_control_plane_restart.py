"""Control plane restarts (SIGKILL: model servers survive and are adopted; SIGTERM: they are
stopped and replaced at the next start) and startup failures that end an endpoint Failed."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest

from control_plane_helpers import (
    RouteWatch,
    children_of,
    control_stub,
    create_model,
    describe,
    instance_pid,
    pid_alive,
    server_ready,
    variant,
    variant_instances,
    wait_status,
)
from mve._proto import control_pb2 as pb
from mve.errors import reason_of
from procs import wait_until

pytestmark = pytest.mark.integration


def _start(services, data_dir, *extra):
    service = services(["control-plane", "--data-dir", str(data_dir), "--port", "0", *extra])
    return service, control_stub(service.address)


def _deploy_mlp(stub, example_models) -> pb.DescribeEndpointResponse:
    create_model(stub, "mlp", example_models["mlp"])
    stub.CreateEndpointConfig(
        pb.CreateEndpointConfigRequest(endpoint_config_name="cfg", production_variants=[variant("main", "mlp")])
    )
    stub.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="ep", endpoint_config_name="cfg"))
    described = wait_status(stub, "ep")
    assert described.endpoint_status == "InService", described.failure_reason
    return described


def _instances(stub) -> list[pb.InstanceRoute]:
    watch = RouteWatch(stub)
    try:
        return variant_instances(watch.until(lambda t: len(variant_instances(t, "ep", "main")) == 1), "ep", "main")
    finally:
        watch.close()


def _assert_every_record_is_served(stub) -> None:
    assert stub.DescribeModel(pb.DescribeModelRequest(model_name="mlp")).artifact_sha256
    config = stub.DescribeEndpointConfig(pb.DescribeEndpointConfigRequest(endpoint_config_name="cfg"))
    assert [v.variant_name for v in config.production_variants] == ["main"]
    assert [m.model_name for m in stub.ListModels(pb.ListModelsRequest()).models] == ["mlp"]
    assert [e.endpoint_name for e in stub.ListEndpoints(pb.ListEndpointsRequest()).endpoints] == ["ep"]


def test_after_a_crash_the_next_control_plane_adopts_the_running_model_servers(services, tmp_path, example_models):
    first, stub = _start(services, tmp_path)
    _deploy_mlp(stub, example_models)
    [instance] = _instances(stub)
    pid = instance_pid(tmp_path, "ep", instance.instance_id)

    first.kill()  # SIGKILL: the model server lives on
    assert pid_alive(pid) and server_ready(instance.address)

    _, stub = _start(services, tmp_path)
    _assert_every_record_is_served(stub)
    described = describe(stub, "ep")
    assert described.endpoint_status == "InService"
    assert described.production_variants[0].current_instance_count == 1
    [adopted] = _instances(stub)
    assert (adopted.instance_id, adopted.address) == (instance.instance_id, instance.address)
    assert pid_alive(pid)

    # an adopted server is not a child: its death is noticed by polling, and it is replaced too
    os.kill(pid, signal.SIGKILL)
    [replacement] = wait_until(
        lambda: [i for i in _instances(stub) if i.instance_id != instance.instance_id], 30, what="a replacement"
    )
    assert server_ready(replacement.address)


def test_sigterm_stops_model_servers_and_the_next_start_replaces_them(services, tmp_path, example_models):
    first, stub = _start(services, tmp_path)
    _deploy_mlp(stub, example_models)
    [instance] = _instances(stub)
    pid = instance_pid(tmp_path, "ep", instance.instance_id)

    assert first.stop() == 0
    assert not pid_alive(pid)

    _, stub = _start(services, tmp_path)
    _assert_every_record_is_served(stub)
    assert describe(stub, "ep").endpoint_status == "InService"
    [replacement] = _instances(stub)
    assert replacement.instance_id != instance.instance_id and server_ready(replacement.address)
    wait_until(lambda: describe(stub, "ep").production_variants[0].current_instance_count == 1, 30)


def test_an_instance_missing_its_startup_health_check_fails_the_endpoint_and_is_stopped(
    services, tmp_path, example_models
):
    # The prefix stands in for a model server that never becomes ready.
    service, stub = _start(
        services, tmp_path, "--min-startup-timeout", "1", "--model-server-prefix", "sh -c 'exec sleep 60' sh"
    )
    create_model(stub, "mlp", example_models["mlp"])
    stub.CreateEndpointConfig(
        pb.CreateEndpointConfigRequest(
            endpoint_config_name="slow-cfg",
            production_variants=[variant("slow", "mlp", count=2, container_startup_health_check_timeout_in_seconds=2)],
        )
    )
    started = time.perf_counter()
    stub.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="slow", endpoint_config_name="slow-cfg"))
    wait_until(lambda: len(children_of(service.process.pid)) >= 2, 10, what="the instances to start")
    described = wait_status(stub, "slow", timeout=30)
    print(f"\nstartup timeout of 2 s -> Failed after {time.perf_counter() - started:.2f} s: {described.failure_reason}")
    assert described.endpoint_status == "Failed"
    assert "did not pass its health check (ServerReady and ModelReady) within 2 s" in described.failure_reason
    assert children_of(service.process.pid) == []  # every instance was stopped
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateEndpointWeightsAndCapacities(
            pb.UpdateEndpointWeightsAndCapacitiesRequest(
                endpoint_name="slow",
                desired_weights_and_capacities=[pb.DesiredWeightAndCapacity(variant_name="slow", desired_weight=2)],
            )
        )
    # SageMaker's answer for an endpoint not InService: ValidationException "Cannot update in-progress endpoint".
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "ValidationException"
    assert "Cannot update in-progress endpoint" in caught.value.details()
