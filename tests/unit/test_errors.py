"""Domain errors travel over gRPC as a status with a SageMaker-style reason, and come back."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mve import errors


class _Health(health_pb2_grpc.HealthServicer):
    """A servicer that raises whatever the test asks for, by service name."""

    async def Check(self, request, context):
        if request.service == "validation":
            raise errors.ValidationError("weight must be >= 0", metadata={"field": "DesiredWeight"})
        if request.service == "exists":
            raise errors.ResourceAlreadyExists('Cannot create already existing endpoint "e".')
        if request.service == "bug":
            raise KeyError("secret internals")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Watch(self, request, context):
        if request.service == "missing":
            raise errors.ResourceNotFound('Could not find endpoint "x".')
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _call(service: str, stream: bool = False):
    server = grpc.aio.server(interceptors=[errors.ErrorInterceptor()])
    health_pb2_grpc.add_HealthServicer_to_server(_Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            if stream:
                return [r async for r in stub.Watch(request, timeout=5)]
            return await stub.Check(request, timeout=5)
    finally:
        await server.stop(None)


def _error_of(service: str, stream: bool = False) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        asyncio.run(_call(service, stream))
    return info.value


def test_validation_error_maps_to_invalid_argument_with_reason_and_metadata():
    error = _error_of("validation")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.reason_of(error) == "ValidationException"
    back = errors.from_rpc_error(error)
    assert isinstance(back, errors.ValidationError)
    assert back.message == "weight must be >= 0"
    assert back.metadata == {"field": "DesiredWeight"}


def test_already_exists_keeps_its_code_and_sagemaker_reason():
    error = _error_of("exists")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    back = errors.from_rpc_error(error)
    assert isinstance(back, errors.ResourceAlreadyExists)
    assert back.reason == "ValidationException"


def test_error_raised_in_a_stream_maps_too():
    error = _error_of("missing", stream=True)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert isinstance(errors.from_rpc_error(error), errors.ResourceNotFound)


def test_unexpected_exception_is_internal_failure_without_internals():
    error = _error_of("bug")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert errors.reason_of(error) == "InternalFailure"
    assert "secret internals" not in error.details()


def test_successful_call_passes_through():
    assert asyncio.run(_call("ok")).status == health_pb2.HealthCheckResponse.SERVING


class _EndedCall:
    """A servicer context whose call ended (deadline or cancel) before the status could be sent."""

    async def abort_with_status(self, status):
        raise RuntimeError('Failed "execute_batch"')


def test_an_error_for_a_call_that_already_ended_ends_the_handler_quietly_as_cancelled():
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(errors.abort_with_error(_EndedCall(), errors.ServiceUnavailable("timed out waiting for a batch")))


async def _call_raw(method: str, payload: bytes, stream: bool = False):
    """Send `payload` as the request bytes of `method` (no serializer: the bytes go as they are)."""
    server = grpc.aio.server(interceptors=[errors.ErrorInterceptor()])
    health_pb2_grpc.add_HealthServicer_to_server(_Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            if stream:
                call = channel.unary_stream(method)
                return [r async for r in call(payload, timeout=5)]
            return await channel.unary_unary(method)(payload, timeout=5)
    finally:
        await server.stop(None)


# 0x0a declares field 1 (length-delimited) then claims 100 bytes that are not there.
TRUNCATED = b"\x0a\x64abc"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "server-stream"])
def test_bytes_that_are_not_the_request_message_are_a_validation_error_naming_it(stream):
    method = "/grpc.health.v1.Health/" + ("Watch" if stream else "Check")
    with pytest.raises(grpc.RpcError) as info:
        asyncio.run(_call_raw(method, TRUNCATED, stream))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.reason_of(info.value) == "ValidationException"
    assert "grpc.health.v1.HealthCheckRequest" in info.value.details()


def test_valid_request_bytes_still_reach_the_handler():
    request = health_pb2.HealthCheckRequest(service="ok").SerializeToString()
    answer = asyncio.run(_call_raw("/grpc.health.v1.Health/Check", request))
    assert health_pb2.HealthCheckResponse.FromString(answer).status == health_pb2.HealthCheckResponse.SERVING


def test_a_method_the_servicer_does_not_implement_is_unimplemented_not_an_internal_failure():
    # _Health implements Check and Watch only; grpc.health.v1's List comes from the generated base class.
    with pytest.raises(grpc.RpcError) as info:
        asyncio.run(_call_raw("/grpc.health.v1.Health/List", b""))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- The one table: names and HTTP statuses per API, checked against botocore's own models. ---

import importlib  # noqa: E402
import pkgutil  # noqa: E402

import botocore.session  # noqa: E402

import mve  # noqa: E402

_BOTOCORE = botocore.session.get_session()


def _modeled_errors(service: str) -> dict[str, int | None]:
    """botocore's error code -> httpStatusCode (None when the model states none) for `service`."""
    model = _BOTOCORE.get_service_model(service)
    out = {}
    for shape in model.error_shapes:
        meta = shape.metadata.get("error", {})
        out[meta.get("code", shape.name)] = meta.get("httpStatusCode")
    return out


@pytest.mark.parametrize("service", [errors.RUNTIME, errors.CLOUDWATCH, errors.IAM, errors.AUTOSCALING])
def test_every_name_of_an_aws_api_is_a_modeled_error_of_it_with_the_same_http_status(service):
    modeled = _modeled_errors(service)
    rows = [row for row in errors.ERRORS if row.service == service]
    assert rows
    for row in rows:
        assert row.name in modeled, f"{service} has no error {row.name}"
        # A JSON 1.1 model states no status for a client fault: 400, or 500 for the service's own fault.
        expected = modeled[row.name] or (500 if row.name == "InternalServiceException" else 400)
        assert row.http_status == expected, row


def test_sagemaker_control_names_are_its_modeled_shapes_or_its_unmodeled_validation_exception():
    modeled = _modeled_errors(errors.SAGEMAKER)
    for row in (r for r in errors.ERRORS if r.service == errors.SAGEMAKER):
        assert row.name in modeled or row.name == "ValidationException", row
        assert row.http_status == 400


def test_the_runtime_rows_cover_every_error_botocore_models_for_invoke_endpoint():
    operation = _BOTOCORE.get_service_model(errors.RUNTIME).operation_model("InvokeEndpoint")
    for shape in operation.error_shapes:
        assert errors.http_status(shape.name, errors.RUNTIME) == shape.metadata["error"]["httpStatusCode"]


def test_one_name_has_one_http_status_within_an_api():
    seen: dict[tuple[str, str], int] = {}
    for row in errors.ERRORS:
        assert seen.setdefault((row.service, row.name), row.http_status) == row.http_status, row


def test_a_missing_endpoint_is_validation_exception_on_the_control_api_and_validation_error_on_the_runtime():
    missing = errors.NotFound('Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/x".')
    assert errors.error_name(missing) == errors.error_name(missing, errors.SAGEMAKER) == "ValidationException"
    assert errors.error_name(missing, errors.RUNTIME) == "ValidationError"
    assert errors.error_name(missing, errors.IAM) == "NoSuchEntity"
    assert errors.http_status(missing, errors.SAGEMAKER) == errors.http_status(missing, errors.RUNTIME) == 400
    assert errors.http_status(missing, errors.IAM) == 404
    assert missing.code == grpc.StatusCode.NOT_FOUND and isinstance(missing, errors.ValidationError)


@pytest.mark.parametrize(
    ("error", "service", "name", "status"),
    [
        (errors.ValidationError("bad"), errors.SAGEMAKER, "ValidationException", 400),
        (errors.ValidationError("bad"), errors.RUNTIME, "ValidationError", 400),
        (errors.ValidationError("bad"), errors.CLOUDWATCH, "ValidationError", 400),
        (errors.ValidationError("bad"), errors.AUTOSCALING, "ValidationException", 400),
        (errors.ValidationError("bad"), "experiments", "ValidationException", 400),
        (errors.ResourceAlreadyExists("exists"), errors.SAGEMAKER, "ValidationException", 400),
        (errors.ResourceNotFound("no policy"), errors.SAGEMAKER, "ResourceNotFound", 400),
        (errors.ResourceNotFound("no alarm"), errors.CLOUDWATCH, "ResourceNotFound", 404),
        (errors.ResourceInUse("used"), errors.SAGEMAKER, "ResourceInUse", 400),
        (errors.ResourceLimitExceeded("many"), errors.SAGEMAKER, "ResourceLimitExceeded", 400),
        (errors.ModelError("boom", original_status_code=500), errors.RUNTIME, "ModelError", 424),
        (errors.ModelNotReady("busy"), errors.RUNTIME, "ModelNotReadyException", 429),
        (errors.ServiceUnavailable("later"), errors.RUNTIME, "ServiceUnavailable", 503),
        (errors.ServiceUnavailable("later"), errors.SAGEMAKER, "ServiceUnavailable", 503),
        (errors.InternalFailure("bug"), errors.SAGEMAKER, "InternalFailure", 500),
        (errors.InternalFailure("bug"), errors.RUNTIME, "InternalFailure", 500),
        (errors.InternalFailure("bug"), errors.AUTOSCALING, "InternalServiceException", 500),
        (errors.InternalFailure("bug"), errors.CLOUDWATCH, "InternalServiceError", 500),
    ],
)
def test_each_domain_error_has_its_apis_name_and_http_status(error, service, name, status):
    assert (errors.error_name(error, service), errors.http_status(error, service)) == (name, status)


def _mve_error_classes() -> set[type]:
    for info in pkgutil.walk_packages(mve.__path__, "mve."):
        if not info.name.startswith(("mve._proto", "mve.__main__")):
            try:
                importlib.import_module(info.name)
            except ImportError:  # an optional dependency (e.g. onnx of the examples) is absent
                continue
    found, todo = set(), [errors.MveError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return found


def test_every_error_class_in_mve_has_its_name_in_the_table():
    names = {row.name for row in errors.ERRORS}
    for cls in _mve_error_classes():
        if cls.__module__.startswith("tests"):
            continue
        assert errors.error_name(cls("x")) in names, f"{cls.__module__}.{cls.__qualname__} is not in mve.errors.ERRORS"


def test_a_model_error_carries_an_http_integer_original_status_code_and_message():
    error = errors.ModelError("Received server error (500) from model m", original_status_code=500,
                              original_message="onnxruntime exploded")
    assert error.metadata == {"OriginalStatusCode": "500", "OriginalMessage": "onnxruntime exploded"}
    assert error.original_status_code == 500
    assert errors.error_members(error, errors.RUNTIME) == {"OriginalStatusCode": 500, "OriginalMessage": "onnxruntime exploded"}
    assert errors.error_members(errors.ValidationError("bad"), errors.RUNTIME) == {}


@pytest.mark.parametrize(
    ("code", "status"),
    [(grpc.StatusCode.INTERNAL, 500), (grpc.StatusCode.INVALID_ARGUMENT, 400), (grpc.StatusCode.UNKNOWN, 500),
     (grpc.StatusCode.DEADLINE_EXCEEDED, 504), (grpc.StatusCode.RESOURCE_EXHAUSTED, 429), (grpc.StatusCode.OK, 200),
     (grpc.StatusCode.UNIMPLEMENTED, 501)],
)
def test_a_model_servers_grpc_status_is_the_http_status_google_rpc_code_maps_it_to(code, status):
    assert errors.http_status_of_grpc_code(code) == status


async def _call_named(service: str | None, raised: errors.MveError):
    """Serve Health.Check raising `raised`, its errors named for `service`; return the RpcError."""

    class Raising(health_pb2_grpc.HealthServicer):
        async def Check(self, request, context):
            raise raised

    server = grpc.aio.server(interceptors=[errors.ErrorInterceptor(service)])
    health_pb2_grpc.add_HealthServicer_to_server(Raising(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as error:
        return error
    finally:
        await server.stop(None)
    raise AssertionError("the call succeeded")


def test_the_runtime_door_names_a_missing_endpoint_validation_error_and_it_comes_back_as_not_found():
    error = asyncio.run(_call_named(errors.RUNTIME, errors.NotFound("Endpoint x of account 000000000000 not found.")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and errors.reason_of(error) == "ValidationError"
    back = errors.from_rpc_error(error)
    assert type(back) is errors.NotFound and errors.error_name(back, errors.SAGEMAKER) == "ValidationError"


def test_the_control_door_names_it_validation_exception():
    error = asyncio.run(_call_named(None, errors.NotFound('Could not find model "arn:x".')))
    assert (error.code(), errors.reason_of(error)) == (grpc.StatusCode.NOT_FOUND, "ValidationException")
    assert type(errors.from_rpc_error(error)) is errors.NotFound


def test_a_model_errors_original_status_code_travels_as_metadata():
    raised = errors.ModelError("Received server error (500)", original_status_code=500, original_message="boom")
    back = errors.from_rpc_error(asyncio.run(_call_named(errors.RUNTIME, raised)))
    assert type(back) is errors.ModelError and back.original_status_code == 500 and back.original_message == "boom"


def test_without_a_service_the_interceptor_names_errors_as_the_called_grpc_services_api():
    assert errors.api_of_method("/mve.v1.CloudWatch/DeleteAlarms") == errors.CLOUDWATCH
    assert errors.api_of_method("/mve.v1.EndpointControl/DescribeEndpoint") == errors.SAGEMAKER
    assert errors.api_of_method("/mve.v1.EndpointRuntime/InvokeEndpoint") == errors.RUNTIME
    assert errors.api_of_method("/mve.v1.ApplicationAutoScaling/PutScalingPolicy") == errors.AUTOSCALING
    assert errors.api_of_method("/grpc.health.v1.Health/Check") == errors.SAGEMAKER
