"""`mve control-plane` as a real process, starting real model servers on the example models.

One control plane serves the whole module; each test makes its own endpoint unless it only reads
the shared two-variant one.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from control_plane_helpers import (
    RouteWatch,
    children_of,
    control_stub,
    create_model,
    describe,
    endpoint_route,
    infer,
    instance_pid,
    pid_alive,
    server_ready,
    variant,
    variant_addresses,
    variant_instances,
    wait_deleted,
    wait_status,
)
from mve._proto import control_pb2 as pb
from mve.errors import reason_of
from mve.examples import load_eval_data
from procs import start_service, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("control-plane")
    service = start_service(["control-plane", "--data-dir", str(data_dir), "--port", "0", "--drain-seconds", "0.2"])
    try:
        yield service, control_stub(service.address), data_dir
    finally:
        service.stop()


@pytest.fixture(scope="module")
def stub(plane):
    return plane[1]


@pytest.fixture(scope="module")
def data_dir(plane) -> Path:
    return plane[2]


@pytest.fixture(scope="module")
def models(stub, example_models):
    for name in ("cancer-weak", "cancer-strong", "mlp"):
        create_model(stub, name, example_models[name])
    return example_models


@pytest.fixture(scope="module")
def ab_endpoint(stub, models):
    """Endpoint "ab": variant A (cancer-weak, weight 1) and B (cancer-strong, weight 3), 1 instance each."""
    stub.CreateEndpointConfig(
        pb.CreateEndpointConfigRequest(
            endpoint_config_name="ab-config",
            production_variants=[variant("A", "cancer-weak", weight=1.0), variant("B", "cancer-strong", weight=3.0)],
        )
    )
    started = time.perf_counter()
    response = stub.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="ab", endpoint_config_name="ab-config"))
    assert response.endpoint_arn == "arn:mve:sagemaker:local:000000000000:endpoint/ab"
    assert describe(stub, "ab").endpoint_status == "Creating"
    described = wait_status(stub, "ab")
    elapsed = time.perf_counter() - started
    print(f"\nCreateEndpoint -> InService (2 variants x 1 instance): {elapsed:.2f} s")
    assert described.endpoint_status == "InService", described.failure_reason
    return described


def _code_and_reason(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), reason_of(caught.value), caught.value.details()


# ---------------------------------------------------------------- lifecycle


def test_describe_endpoint_reports_each_variants_weights_and_counts(stub, ab_endpoint):
    described = describe(stub, "ab")
    assert described.endpoint_status == "InService"
    assert described.endpoint_config_name == "ab-config"
    assert described.failure_reason == ""
    summaries = {v.variant_name: v for v in described.production_variants}
    assert (summaries["A"].current_weight, summaries["A"].desired_weight) == (1.0, 1.0)
    assert (summaries["B"].current_weight, summaries["B"].desired_weight) == (3.0, 3.0)
    for summary in summaries.values():
        assert (summary.current_instance_count, summary.desired_instance_count) == (1, 1)
        assert summary.deployed_images[0].specified_image == "onnxruntime"
    listed = stub.ListEndpoints(pb.ListEndpointsRequest(status_equals="InService"))
    assert "ab" in [e.endpoint_name for e in listed.endpoints]


def test_routing_table_lists_instances_that_answer_model_infer(stub, ab_endpoint):
    watch = RouteWatch(stub)
    try:
        table = watch.until(lambda t: endpoint_route(t, "ab") is not None)
    finally:
        watch.close()
    route = endpoint_route(table, "ab")
    assert [(v.variant_name, v.model_name, v.weight, v.routing_strategy) for v in route.variants] == [
        ("A", "cancer-weak", 1.0, "RANDOM"),
        ("B", "cancer-strong", 3.0, "RANDOM"),
    ]
    X, y = load_eval_data()
    for v in route.variants:
        assert [(t.name, t.datatype, list(t.shape)) for t in v.inputs] == [("input", "FP32", [-1, 30])]
        assert len(v.instances) == 1
        outputs = infer(v.instances[0].address, v.model_name, X[:8].astype(np.float32), "input")
        assert outputs["label"].shape == (8,)


def test_weight_update_is_a_new_table_version_on_the_same_instances(stub, ab_endpoint):
    watch = RouteWatch(stub)
    try:
        before = watch.until(lambda t: endpoint_route(t, "ab") is not None)
        addresses = {v: variant_addresses(before, "ab", v) for v in ("A", "B")}
        started = time.perf_counter()
        stub.UpdateEndpointWeightsAndCapacities(
            pb.UpdateEndpointWeightsAndCapacitiesRequest(
                endpoint_name="ab",
                desired_weights_and_capacities=[pb.DesiredWeightAndCapacity(variant_name="A", desired_weight=0.0)],
            )
        )
        after = watch.next()
        elapsed = time.perf_counter() - started
        print(f"\nUpdateEndpointWeightsAndCapacities -> new routing table on WatchRoutes: {elapsed * 1000:.1f} ms")
        assert after.version > before.version
        assert [(v.variant_name, v.weight) for v in endpoint_route(after, "ab").variants] == [("A", 0.0), ("B", 3.0)]
        assert {v: variant_addresses(after, "ab", v) for v in ("A", "B")} == addresses
        described = wait_status(stub, "ab", ("InService",))
        assert {v.variant_name: v.desired_weight for v in described.production_variants} == {"A": 0.0, "B": 3.0}
        stub.UpdateEndpointWeightsAndCapacities(
            pb.UpdateEndpointWeightsAndCapacitiesRequest(
                endpoint_name="ab",
                desired_weights_and_capacities=[pb.DesiredWeightAndCapacity(variant_name="A", desired_weight=1.0)],
            )
        )
        wait_status(stub, "ab", ("InService",))
    finally:
        watch.close()


def test_instance_count_goes_up_then_down_keeping_the_first_instance(stub, ab_endpoint):
    watch = RouteWatch(stub)
    try:
        first = variant_addresses(watch.until(lambda t: endpoint_route(t, "ab") is not None), "ab", "A")
        update = lambda count: stub.UpdateEndpointWeightsAndCapacities(  # noqa: E731
            pb.UpdateEndpointWeightsAndCapacitiesRequest(
                endpoint_name="ab",
                desired_weights_and_capacities=[
                    pb.DesiredWeightAndCapacity(variant_name="A", desired_instance_count=count)
                ],
            )
        )
        update(2)
        assert describe(stub, "ab").endpoint_status == "Updating"
        grown = watch.until(lambda t: len(variant_addresses(t, "ab", "A")) == 2)
        assert set(first) < set(variant_addresses(grown, "ab", "A"))
        described = wait_status(stub, "ab", ("InService",))
        a = next(v for v in described.production_variants if v.variant_name == "A")
        assert (a.current_instance_count, a.desired_instance_count) == (2, 2)
        [added] = set(variant_addresses(grown, "ab", "A")) - set(first)

        update(1)
        shrunk = watch.until(lambda t: len(variant_addresses(t, "ab", "A")) == 1)
        assert variant_addresses(shrunk, "ab", "A") == first
        wait_status(stub, "ab", ("InService",))
        wait_until(lambda: not server_ready(added), 15, what="the surplus instance to stop")
        assert server_ready(first[0])
    finally:
        watch.close()


def test_a_killed_model_server_is_taken_out_of_routing_and_replaced(stub, ab_endpoint, data_dir):
    watch = RouteWatch(stub)
    try:
        table = watch.until(lambda t: len(variant_instances(t, "ab", "B")) == 1)
        [victim] = variant_instances(table, "ab", "B")
        pid = instance_pid(data_dir, "ab", victim.instance_id)
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        without = watch.until(lambda t: victim.instance_id not in [i.instance_id for i in variant_instances(t, "ab", "B")])
        noticed = time.perf_counter() - killed
        assert without.version > table.version
        replaced = watch.until(lambda t: len(variant_instances(t, "ab", "B")) == 1)
        elapsed = time.perf_counter() - killed
        print(f"\nkilled model server: out of routing after {noticed:.2f} s, replaced after {elapsed:.2f} s")
        [replacement] = variant_instances(replaced, "ab", "B")
        assert replacement.instance_id != victim.instance_id and server_ready(replacement.address)
        described = describe(stub, "ab")
        assert described.endpoint_status == "InService"
        b = next(v for v in described.production_variants if v.variant_name == "B")
        assert b.current_instance_count == 1
    finally:
        watch.close()


def test_delete_endpoint_stops_its_model_servers_and_forgets_it(stub, models, data_dir):
    stub.CreateEndpointConfig(
        pb.CreateEndpointConfigRequest(endpoint_config_name="doomed-config", production_variants=[variant("only", "mlp")])
    )
    stub.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="doomed", endpoint_config_name="doomed-config"))
    assert wait_status(stub, "doomed").endpoint_status == "InService"
    watch = RouteWatch(stub)
    try:
        [instance] = variant_instances(watch.until(lambda t: endpoint_route(t, "doomed") is not None), "doomed", "only")
        pid = instance_pid(data_dir, "doomed", instance.instance_id)
        stub.DeleteEndpoint(pb.DeleteEndpointRequest(endpoint_name="doomed"))
        watch.until(lambda t: endpoint_route(t, "doomed") is None)
    finally:
        watch.close()
    wait_deleted(stub, "doomed")
    wait_until(lambda: not pid_alive(pid), 15, what="the model server to exit")
    code, reason, message = _code_and_reason(lambda: describe(stub, "doomed"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ValidationException")
    assert message == 'Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/doomed".'
    stub.DeleteEndpointConfig(pb.DeleteEndpointConfigRequest(endpoint_config_name="doomed-config"))


def test_a_gpu_endpoint_runs_on_cuda_or_fails_with_the_cuda_reason(plane, stub, models):
    """ml.gpu.* never falls back to the CPU: without a working GPU (this CI machine) the endpoint
    ends Failed with the model server's CUDA message, and nothing of it keeps running."""
    service = plane[0]
    stub.CreateEndpointConfig(
        pb.CreateEndpointConfigRequest(
            endpoint_config_name="gpu-config",
            production_variants=[variant("gpu", "mlp", instance_type="ml.gpu.small")],
        )
    )
    stub.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="gpu", endpoint_config_name="gpu-config"))
    described = wait_status(stub, "gpu")
    print(f"\nGPU endpoint: {described.endpoint_status} {described.failure_reason}")
    if described.endpoint_status == "InService":  # a machine with a working GPU
        assert described.production_variants[0].current_instance_count == 1
    else:
        assert described.endpoint_status == "Failed"
        assert "variant gpu instance" in described.failure_reason
        assert "CUDA is not available" in described.failure_reason
        assert not any("--device cuda" in _cmdline(pid) for pid in children_of(service.process.pid))
        code, reason, _ = _code_and_reason(
            lambda: stub.UpdateEndpointWeightsAndCapacities(
                pb.UpdateEndpointWeightsAndCapacitiesRequest(
                    endpoint_name="gpu",
                    desired_weights_and_capacities=[pb.DesiredWeightAndCapacity(variant_name="gpu", desired_weight=2)],
                )
            )
        )
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ValidationException")  # in-progress endpoint
    code, reason, _ = _code_and_reason(
        lambda: stub.DeleteEndpointConfig(pb.DeleteEndpointConfigRequest(endpoint_config_name="gpu-config"))
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ResourceInUse")
    stub.DeleteEndpoint(pb.DeleteEndpointRequest(endpoint_name="gpu"))
    wait_deleted(stub, "gpu")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ---------------------------------------------------------------- validation


def _config(name="bad-config", *variants_):
    return pb.CreateEndpointConfigRequest(endpoint_config_name=name, production_variants=list(variants_))


INVALID = grpc.StatusCode.INVALID_ARGUMENT
def _another_config(stub) -> str:
    """A config "ab-other" (made on first use) that endpoint "ab" could move to."""
    try:
        stub.CreateEndpointConfig(
            pb.CreateEndpointConfigRequest(endpoint_config_name="ab-other", production_variants=[variant("A", "cancer-weak")])
        )
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    return "ab-other"


CASES = {
    "endpoint name with underscore": (
        lambda s: s.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="bad_name", endpoint_config_name="ab-config")),
        INVALID, "ValidationException", "EndpointName",
    ),
    "endpoint name too long": (
        lambda s: s.CreateEndpoint(
            pb.CreateEndpointRequest(endpoint_name="x" * 64, endpoint_config_name="ab-config")
        ),
        INVALID, "ValidationException", "1-63 characters",
    ),
    "model name ending in a hyphen": (
        lambda s: s.CreateModel(pb.CreateModelRequest(model_name="m-", primary_container=pb.ContainerDefinition(model_data_url="/x"))),
        INVALID, "ValidationException", "ModelName",
    ),
    "no variants": (lambda s: s.CreateEndpointConfig(_config()), INVALID, "ValidationException", "at least 1"),
    "eleven variants": (
        lambda s: s.CreateEndpointConfig(_config("bad-config", *[variant(f"v{i}", "mlp") for i in range(11)])),
        INVALID, "ValidationException", "at most 10",
    ),
    "duplicate variant names": (
        lambda s: s.CreateEndpointConfig(_config("bad-config", variant("A", "mlp"), variant("A", "mlp"))),
        INVALID, "ValidationException", "more than once",
    ),
    "negative weight": (
        lambda s: s.CreateEndpointConfig(_config("bad-config", variant("A", "mlp", weight=-1))),
        INVALID, "ValidationException", "finite number >= 0",
    ),
    "infinite weight": (
        lambda s: s.CreateEndpointConfig(_config("bad-config", variant("A", "mlp", weight=float("inf")))),
        INVALID, "ValidationException", "finite number >= 0",
    ),
    "weights summing to zero": (
        lambda s: s.CreateEndpointConfig(_config("bad-config", variant("A", "mlp", weight=0), variant("B", "mlp", weight=0))),
        INVALID, "ValidationException", "greater than 0",
    ),
    "zero instances": (
        lambda s: s.CreateEndpointConfig(_config("bad-config", variant("A", "mlp", count=0))),
        INVALID, "ValidationException", ">= 1",
    ),
    "too many instances": (
        lambda s: s.CreateEndpointConfig(_config("bad-config", variant("A", "mlp", count=11))),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "ResourceLimitExceeded", "limit of 10",
    ),
    "unknown instance type": (
        lambda s: s.CreateEndpointConfig(_config("bad-config", variant("A", "mlp", instance_type="ml.z9.large"))),
        INVALID, "ValidationException", "ml.cpu.<size> or ml.gpu.<size>",
    ),
    "unknown routing strategy": (
        lambda s: s.CreateEndpointConfig(
            _config("bad-config", variant("A", "mlp", routing_config=pb.RoutingConfig(routing_strategy="FASTEST")))
        ),
        INVALID, "ValidationException", "LEAST_OUTSTANDING_REQUESTS, RANDOM",
    ),
    "startup timeout below 60 s": (
        lambda s: s.CreateEndpointConfig(
            _config("bad-config", variant("A", "mlp", container_startup_health_check_timeout_in_seconds=30))
        ),
        INVALID, "ValidationException", "60-3600",
    ),
    "batch size above 1024": (
        lambda s: s.CreateEndpointConfig(
            _config("bad-config", variant("A", "mlp", batching=pb.BatchingConfig(max_batch_size=1025)))
        ),
        INVALID, "ValidationException", "MaxBatchSize",
    ),
    "batch delay above 1 s": (
        lambda s: s.CreateEndpointConfig(
            _config("bad-config", variant("A", "mlp", batching=pb.BatchingConfig(max_batch_size=8, max_delay_us=1_000_001)))
        ),
        INVALID, "ValidationException", "MaxDelayMicroseconds",
    ),
    "unknown model in a config": (
        lambda s: s.CreateEndpointConfig(_config("bad-config", variant("A", "no-such-model"))),
        grpc.StatusCode.NOT_FOUND, "ValidationException", 'Could not find model "arn:mve:sagemaker:local:000000000000:model/no-such-model"',
    ),
    "unknown endpoint config": (
        lambda s: s.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="orphan", endpoint_config_name="no-such-config")),
        grpc.StatusCode.NOT_FOUND, "ValidationException", "Could not find endpoint configuration",
    ),
    "unknown endpoint": (
        lambda s: s.DescribeEndpoint(pb.DescribeEndpointRequest(endpoint_name="no-such-endpoint")),
        grpc.StatusCode.NOT_FOUND, "ValidationException", 'Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/no-such-endpoint".',
    ),
    "delete of an unknown endpoint": (
        lambda s: s.DeleteEndpoint(pb.DeleteEndpointRequest(endpoint_name="no-such-endpoint")),
        grpc.StatusCode.NOT_FOUND, "ValidationException", 'Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/no-such-endpoint".',
    ),
    "weights of an unknown endpoint": (
        lambda s: s.UpdateEndpointWeightsAndCapacities(pb.UpdateEndpointWeightsAndCapacitiesRequest(
            endpoint_name="no-such-endpoint",
            desired_weights_and_capacities=[pb.DesiredWeightAndCapacity(variant_name="A", desired_weight=1)])),
        grpc.StatusCode.NOT_FOUND, "ValidationException", 'Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/no-such-endpoint".',
    ),
    "unknown model": (
        lambda s: s.DescribeModel(pb.DescribeModelRequest(model_name="no-such-model")),
        grpc.StatusCode.NOT_FOUND, "ValidationException", 'Could not find model "arn:mve:sagemaker:local:000000000000:model/no-such-model".',
    ),
    "delete of an unknown model": (
        lambda s: s.DeleteModel(pb.DeleteModelRequest(model_name="no-such-model")),
        grpc.StatusCode.NOT_FOUND, "ValidationException", 'Could not find model "arn:mve:sagemaker:local:000000000000:model/no-such-model".',
    ),
    "unknown endpoint config on describe": (
        lambda s: s.DescribeEndpointConfig(pb.DescribeEndpointConfigRequest(endpoint_config_name="no-such-config")),
        grpc.StatusCode.NOT_FOUND, "ValidationException",
        'Could not find endpoint configuration "arn:mve:sagemaker:local:000000000000:endpoint-config/no-such-config".',
    ),
    "delete of an unknown endpoint config": (
        lambda s: s.DeleteEndpointConfig(pb.DeleteEndpointConfigRequest(endpoint_config_name="no-such-config")),
        grpc.StatusCode.NOT_FOUND, "ValidationException",
        'Could not find endpoint configuration "arn:mve:sagemaker:local:000000000000:endpoint-config/no-such-config".',
    ),
    "model name taken": (
        lambda s: s.CreateModel(pb.CreateModelRequest(model_name="mlp", primary_container=pb.ContainerDefinition(model_data_url="/x"))),
        grpc.StatusCode.ALREADY_EXISTS, "ValidationException", "Cannot create already existing model",
    ),
    "endpoint config name taken": (
        lambda s: s.CreateEndpointConfig(_config("ab-config", variant("A", "mlp"))),
        grpc.StatusCode.ALREADY_EXISTS, "ValidationException", "Cannot create already existing endpoint configuration",
    ),
    "endpoint name taken": (
        lambda s: s.CreateEndpoint(pb.CreateEndpointRequest(endpoint_name="ab", endpoint_config_name="ab-config")),
        grpc.StatusCode.ALREADY_EXISTS, "ValidationException", "Cannot create already existing endpoint",
    ),
    "model used by a config": (
        lambda s: s.DeleteModel(pb.DeleteModelRequest(model_name="cancer-weak")),
        grpc.StatusCode.FAILED_PRECONDITION, "ResourceInUse", "ab-config",
    ),
    "config used by an endpoint": (
        lambda s: s.DeleteEndpointConfig(pb.DeleteEndpointConfigRequest(endpoint_config_name="ab-config")),
        grpc.StatusCode.FAILED_PRECONDITION, "ResourceInUse", "ab",
    ),
    "model file missing": (
        lambda s: s.CreateModel(pb.CreateModelRequest(model_name="ghost", primary_container=pb.ContainerDefinition(model_data_url="/nonexistent/m.onnx"))),
        INVALID, "ValidationException", "does not exist",
    ),
    "unsupported image": (
        lambda s: s.CreateModel(pb.CreateModelRequest(model_name="torch", primary_container=pb.ContainerDefinition(image="pytorch", model_data_url="/x"))),
        INVALID, "ValidationException", "not supported",
    ),
    "update of an unknown variant": (
        lambda s: s.UpdateEndpointWeightsAndCapacities(
            pb.UpdateEndpointWeightsAndCapacitiesRequest(
                endpoint_name="ab", desired_weights_and_capacities=[pb.DesiredWeightAndCapacity(variant_name="Z", desired_weight=1)]
            )
        ),
        INVALID, "ValidationException", "not present",
    ),
    "update to all-zero weights": (
        lambda s: s.UpdateEndpointWeightsAndCapacities(
            pb.UpdateEndpointWeightsAndCapacitiesRequest(
                endpoint_name="ab",
                desired_weights_and_capacities=[
                    pb.DesiredWeightAndCapacity(variant_name="A", desired_weight=0),
                    pb.DesiredWeightAndCapacity(variant_name="B", desired_weight=0),
                ],
            )
        ),
        INVALID, "ValidationException", "greater than 0",
    ),
    "update to too many instances": (
        lambda s: s.UpdateEndpointWeightsAndCapacities(
            pb.UpdateEndpointWeightsAndCapacitiesRequest(
                endpoint_name="ab", desired_weights_and_capacities=[pb.DesiredWeightAndCapacity(variant_name="A", desired_instance_count=11)]
            )
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "ResourceLimitExceeded", "limit of 10",
    ),
    "list with max_results 101": (
        lambda s: s.ListEndpoints(pb.ListEndpointsRequest(max_results=101)), INVALID, "ValidationException", "MaxResults"
    ),
    "list sorted by an unknown field": (
        lambda s: s.ListModels(pb.ListModelsRequest(sort_by="Size")), INVALID, "ValidationException", "SortBy"
    ),
    "data capture to S3": (
        lambda s: s.CreateEndpointConfig(
            pb.CreateEndpointConfigRequest(
                endpoint_config_name="capture-config",
                production_variants=[variant("A", "mlp")],
                data_capture_config=pb.DataCaptureConfig(
                    enable_capture=True, initial_sampling_percentage=10, destination_s3_uri="s3://bucket/capture"
                ),
            )
        ),
        INVALID, "ValidationException", "DataCaptureConfig.DestinationS3Uri 's3://bucket/capture' is not supported",
    ),
    "update endpoint to the config it runs": (
        lambda s: s.UpdateEndpoint(pb.UpdateEndpointRequest(endpoint_name="ab", endpoint_config_name="ab-config")),
        INVALID, "ValidationException", "already runs endpoint config ab-config",
    ),
    "update endpoint to a missing config": (
        lambda s: s.UpdateEndpoint(pb.UpdateEndpointRequest(endpoint_name="ab", endpoint_config_name="nope")),
        grpc.StatusCode.NOT_FOUND, "ValidationException", "Could not find endpoint configuration",
    ),
    "update endpoint with both policies": (
        lambda s: s.UpdateEndpoint(pb.UpdateEndpointRequest(
            endpoint_name="ab", endpoint_config_name=_another_config(s),
            deployment_config=pb.DeploymentConfig(
                blue_green_update_policy=pb.BlueGreenUpdatePolicy(
                    traffic_routing_configuration=pb.TrafficRoutingConfig(type="ALL_AT_ONCE")),
                rolling_update_policy=pb.RollingUpdatePolicy(
                    maximum_batch_size=pb.CapacitySize(type="INSTANCE_COUNT", value=1)),
            ),
        )),
        INVALID, "ValidationException", "not both",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_invalid_requests_are_refused_with_sagemakers_error(stub, ab_endpoint, case):
    call, code, reason, fragment = CASES[case]
    got_code, got_reason, message = _code_and_reason(lambda: call(stub))
    assert (got_code, got_reason) == (code, reason), message
    assert fragment in message
    assert describe(stub, "ab").endpoint_status == "InService"  # nothing was disturbed


# ---------------------------------------------------------------- server plumbing


def test_health_and_reflection_are_served(plane):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(plane[0].address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="mve.v1.EndpointControl"))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name for s in next(responses).list_services_response.service]
        assert "mve.v1.EndpointControl" in names


def test_report_stats_is_accepted_and_checked(stub):
    def report(**fields):
        request = pb.ReportStatsRequest(
            proxy_id="proxy-1", incarnation="i-1", sequence=1,
            variants=[pb.VariantStats(endpoint_name="ab", variant_name="A", invocations=5)],
        )
        for name, value in fields.items():
            setattr(request, name, value)
        return lambda: stub.ReportStats(request)

    report()()
    report()()  # the same report again: accepted, counted once (tests/unit/test_metric_store.py)
    for bad in ({"proxy_id": ""}, {"incarnation": ""}, {"sequence": 0}):
        code, reason, _ = _code_and_reason(report(**bad))
        assert (code, reason) == (INVALID, "ValidationException"), bad
    lying = pb.ReportStatsRequest(
        proxy_id="p", incarnation="i-2", sequence=1,
        variants=[pb.VariantStats(endpoint_name="ab", variant_name="A", invocations=1, invocation_5xx_errors=3)],
    )
    code, reason, message = _code_and_reason(lambda: stub.ReportStats(lying))
    assert (code, reason) == (INVALID, "ValidationException") and "above invocations" in message


def test_bad_flags_are_refused_with_the_flag_named(tmp_path):
    from procs import run_mve

    result = run_mve(["control-plane", "--data-dir", str(tmp_path), "--port", "70000"])
    assert result.returncode == 2 and "--port must be 0-65535" in result.stderr
    result = run_mve(["control-plane", "--port", "0"], env={"MVE_DATA_DIR": ""})
    assert result.returncode == 2 and "--data-dir (or MVE_DATA_DIR) is required" in result.stderr
