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
