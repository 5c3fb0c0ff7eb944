"""The proxy's gRPC servicers: protobuf in, one `DataPlane` call, protobuf out.

``mve.v1.EndpointRuntime`` (InvokeEndpoint) and ``inference.GRPCInferenceService`` (the Open
Inference Protocol, where model_name is the endpoint name). Errors are domain exceptions mapped to
gRPC status by the wrapper `mve.proxy.transport.grpc_registry` puts around each handler at registration.

ModelInfer is registered on serialised bytes (`RawModelInfer`), so that the data plane can forward
a request's tensor bytes without decoding and re-encoding them (`DataPlane.model_infer_bytes`).
"""

from __future__ import annotations

import grpc

from mve import __version__
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve._proto import runtime_pb2, runtime_pb2_grpc
from mve.errors import RUNTIME, abort_with_error
from mve.proxy.dataplane import DataPlane, InvokeRequest

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
RUNTIME_SERVICE = runtime_pb2.DESCRIPTOR.services_by_name["EndpointRuntime"].full_name


def server_span(dataplane: DataPlane, service: str, method: str, context):
    """The call's SERVER span (tracing on only), joined to the caller's ``traceparent``."""
    return _spans().server_span(dataplane.tracer, service, method, context, dataplane.address)


def invoke_request(message) -> InvokeRequest:
    """The data plane's `InvokeRequest` from an ``mve.v1.InvokeEndpointRequest``."""
    return InvokeRequest(
        endpoint_name=message.endpoint_name,
        body=message.body,
        content_type=message.content_type,
        accept=message.accept,
        target_variant=message.target_variant,
        inference_id=message.inference_id,
        custom_attributes=message.custom_attributes,
        routing_key=message.routing_key,
    )


def invoke_response(result) -> runtime_pb2.InvokeEndpointResponse:
    """An ``mve.v1.InvokeEndpointResponse`` from the data plane's `InvokeResult`."""
    return runtime_pb2.InvokeEndpointResponse(
        body=result.body,
        content_type=result.content_type,
        invoked_production_variant=result.invoked_production_variant,
        custom_attributes=result.custom_attributes,
        inference_id=result.inference_id,
    )


def _spans():
    global _SPANS
    if _SPANS is None:  # imported on first use: with tracing off, OpenTelemetry is never imported
        from mve.proxy import spans

        _SPANS = spans
    return _SPANS


_SPANS = None


class EndpointRuntimeServicer(runtime_pb2_grpc.EndpointRuntimeServicer):
    """SageMaker's InvokeEndpoint."""

    def __init__(self, dataplane: DataPlane):
        self._dataplane = dataplane

    async def InvokeEndpoint(self, request, context):
        """Invoke an endpoint with a body in application/x-npy, application/json or text/csv.

        The answer carries the invocation's inference id: the caller's InferenceId, or one the proxy made.
        """
        invoke = self._dataplane.invoke_endpoint(
            invoke_request(request),
            context.time_remaining(),
        )
        if self._dataplane.tracer is None:
            result = await invoke
        else:
            with server_span(self._dataplane, RUNTIME_SERVICE, "InvokeEndpoint", context):
                result = await invoke
        return invoke_response(result)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol with endpoints as models."""

    def __init__(self, dataplane: DataPlane):
        self._dataplane = dataplane

    async def ServerLive(self, request, context):
        """Always live while the process serves."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        """Ready once a routing table has arrived."""
        return pb.ServerReadyResponse(ready=self._dataplane.server_ready)

    async def ModelReady(self, request, context):
        """Ready when the endpoint is routable with at least one instance."""
        return pb.ModelReadyResponse(ready=self._dataplane.model_ready(request.name))

    async def ServerMetadata(self, request, context):
        """The proxy's name and version."""
        return pb.ServerMetadataResponse(name="mve-proxy", version=__version__, extensions=[])

    async def ModelMetadata(self, request, context):
        """The endpoint's first variant's model inputs and outputs."""
        return await self._dataplane.model_metadata(request.name, context.time_remaining())

    async def ModelInfer(self, request, context):
        """Run the request on a variant of the endpoint named by model_name."""
        dataplane = self._dataplane
        if dataplane.tracer is not None:
            with server_span(dataplane, INFERENCE_SERVICE, "ModelInfer", context):
                return await dataplane.model_infer(request, context.time_remaining())
        return await dataplane.model_infer(request, context.time_remaining())


class RawModelInfer:
    """ModelInfer as a unary-unary behaviour on serialised bytes (`DataPlane.model_infer_bytes`).

    It maps errors to a gRPC status itself (as `mve.errors.ErrorInterceptor` would), so that the
    hot path runs without an interceptor or a wrapper coroutine (`mve.proxy.transport.grpc_registry`).
    """

    maps_errors = True

    def __init__(self, dataplane: DataPlane):
        self._dataplane = dataplane
        self._model_infer_bytes = dataplane.model_infer_bytes

    async def __call__(self, data: bytes, context) -> bytes:
        try:
            if self._dataplane.tracer is not None:
                with server_span(self._dataplane, INFERENCE_SERVICE, "ModelInfer", context):
                    return await self._model_infer_bytes(data, context.time_remaining())
            return await self._model_infer_bytes(data, context.time_remaining())
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as error:  # noqa: BLE001 - the last line of defence: report, don't crash
            await abort_with_error(context, error, "ModelInfer", RUNTIME)


def add_inference_service(servicer: InferenceServicer, model_infer: RawModelInfer, server) -> None:
    """Register the Open Inference Protocol on `server`, with ModelInfer on raw bytes."""

    def handler(method, request_type, response_type):
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        )

    handlers = {
        "ServerLive": handler(servicer.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": handler(servicer.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": handler(servicer.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": handler(servicer.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": handler(servicer.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        # The bound method: grpc.aio awaits a handler only when it is a coroutine function.
        "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer.__call__),
    }
    # A generic handler only: registered methods cost a grpc.aio server on every call (`mve.proxy.transport.grpc_registry`).
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(INFERENCE_SERVICE, handlers),))
