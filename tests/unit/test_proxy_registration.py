"""The proxy's gRPC services reach grpc.aio as one generic handler, never as registered methods.

A grpc.aio server keeps one pending request-call per registered method and waits on all of them for
every incoming call; the proxy's registry (`ErrorMappingServer`) serves what grpc's generated code
registers through its one generic handler instead.
"""

from __future__ import annotations

import asyncio
import types

import grpc
import pytest

from mve.proxy import server as proxy_server
from mve.proxy.settings import ProxySettings
from mve.proxy.transport.grpc_registry import ErrorMappingServer

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
INVOKE = "/mve.v1.EndpointRuntime/InvokeEndpoint"
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def test_a_started_proxy_registers_no_method_and_one_generic_handler_serves_every_service(monkeypatch):
    registered, generic = [], []
    real_registered = grpc.aio._server.Server.add_registered_method_handlers
    real_generic = grpc.aio._server.Server.add_generic_rpc_handlers

    def record_registered(self, service, handlers):
        registered.append(service)
        return real_registered(self, service, handlers)

    def record_generic(self, handlers):
        generic.extend(handlers)
        return real_generic(self, handlers)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", record_registered)
    monkeypatch.setattr(grpc.aio._server.Server, "add_generic_rpc_handlers", record_generic)

    async def main():
        settings = ProxySettings(
            host="127.0.0.1", port=0, http_port=-1, metrics_port=-1, control_plane="127.0.0.1:1", drain_s=0,
        ).validate()
        proxy = proxy_server.ProxyServer(settings)
        await proxy.start()
        try:
            assert registered == []
            (handler,) = generic
            for method in (MODEL_INFER, INVOKE, HEALTH, REFLECTION, "/inference.GRPCInferenceService/ServerLive"):
                assert handler.service(types.SimpleNamespace(method=method)) is not None, method
            assert handler.service(types.SimpleNamespace(method="/no.Such/Method")) is None
            # Served over the wire by that handler: health and ServerLive answer.
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            from mve._proto import grpc_predict_v2_pb2 as pb
            from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc

            async with grpc.aio.insecure_channel(proxy.address) as channel:
                status = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert status.status == health_pb2.HealthCheckResponse.SERVING
                live = await pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
                assert live.live
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await channel.unary_unary("/no.Such/Method")(b"", timeout=5)
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await proxy.stop()

    asyncio.run(main())


class RecordingServer:
    def __init__(self):
        self.generic = []
        self.registered = []

    def add_generic_rpc_handlers(self, handlers):
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers):
        self.registered.append(service)


def unary(value):
    async def behaviour(request, context):
        return value

    return grpc.unary_unary_rpc_method_handler(behaviour)


def test_registered_handlers_given_to_the_registry_are_served_first_by_its_generic_handler():
    server = RecordingServer()
    registry = ErrorMappingServer(server)
    registry.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("s.S", {"A": unary("generic")}),))
    registry.add_registered_method_handlers("s.S", {"A": unary("registered"), "B": unary("b")})
    assert server.registered == []
    (handler,) = server.generic

    async def call(method):
        found = handler.service(types.SimpleNamespace(method=method))
        return await found.unary_unary(None, None)

    async def main():
        assert await call("/s.S/A") == "registered"
        assert await call("/s.S/B") == "b"

    asyncio.run(main())
    assert handler.service(types.SimpleNamespace(method="/s.S/C")) is None
    # A service added later is found for a method that was unknown before.
    registry.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("s.S", {"C": unary("c")}),))
    assert handler.service(types.SimpleNamespace(method="/s.S/C")) is not None
