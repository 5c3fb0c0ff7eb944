"""The proxy's gRPC servicers: protobuf in, one `DataPlane` call, protobuf out.

``mve.v1.EndpointRuntime`` (InvokeEndpoint) and ``inference.GRPCInferenceService`` (the Open
Inference Protocol, where model_name is the endpoint name). Errors are domain exceptions mapped to
gRPC status by `mve.errors.ErrorInterceptor`.
"""

from __future__ import annotations

from mve import __version__
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve._proto import runtime_pb2, runtime_pb2_grpc
from mve.proxy.dataplane import DataPlane, InvokeRequest


class EndpointRuntimeServicer(runtime_pb2_grpc.EndpointRuntimeServicer):
    """SageMaker's InvokeEndpoint."""

    def __init__(self, dataplane: DataPlane):
        self._dataplane = dataplane

    async def InvokeEndpoint(self, request, context):
        """Invoke an endpoint with a body in application/x-npy, application/json or text/csv."""
        result = await self._dataplane.invoke_endpoint(
            InvokeRequest(
                endpoint_name=request.endpoint_name,
                body=request.body,
                content_type=request.content_type,
                accept=request.accept,
                target_variant=request.target_variant,
                inference_id=request.inference_id,
                custom_attributes=request.custom_attributes,
                routing_key=request.routing_key,
            ),
            context.time_remaining(),
        )
        return runtime_pb2.InvokeEndpointResponse(
            body=result.body,
            content_type=result.content_type,
            invoked_production_variant=result.invoked_production_variant,
            custom_attributes=result.custom_attributes,
        )


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
        return await self._dataplane.model_infer(request, context.time_remaining())
