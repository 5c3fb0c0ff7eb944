"""The Open Inference Protocol servicer: converts protobuf to numpy and calls the one model."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

from mve import __version__
from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve.errors import ResourceNotFound
from mve.modelserver.infer import decode_inputs, encode_response, requested_outputs
from mve.modelserver.runtime import MODEL_VERSION, PLATFORM, OnnxModel

log = logging.getLogger(__name__)

SERVER_NAME = "mve-model-server"
INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves one `OnnxModel` under `model_name`; inference runs on `executor`, off the event loop.

    With a `tracer` (tracing on), each ModelInfer runs in a SERVER span joined to the caller's
    W3C ``traceparent`` metadata (the proxy's span, or a batch's); without one, ModelInfer is the
    plain method and no span is ever made.
    """

    def __init__(self, model: OnnxModel, model_name: str, executor: Executor, *, tracer=None):
        self.model = model
        self.model_name = model_name
        self.executor = executor
        self.ready = True
        self.tracer = tracer
        self.address: tuple[str, int] | None = None  # (host, port) once bound, for the spans
        if tracer is not None:
            # Registration reads the bound method, so the untraced path has no extra check or frame.
            self.ModelInfer = self._traced_model_infer

    def _check_model(self, name: str, version: str, *, allow_empty: bool = False) -> None:
        if name != self.model_name and not (allow_empty and name == ""):
            raise ResourceNotFound(f"model '{name}' is not served here; this server serves '{self.model_name}'")
        if version not in ("", MODEL_VERSION):
            raise ResourceNotFound(f"model '{self.model_name}' has no version '{version}'; versions: {MODEL_VERSION}")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request, context):
        self._check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    async def ModelMetadata(self, request, context):
        self._check_model(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.model_name,
            versions=[MODEL_VERSION],
            platform=PLATFORM,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in self.model.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in self.model.outputs],
        )

    async def ModelInfer(self, request, context):
        self._check_model(request.model_name, request.model_version, allow_empty=True)
        feeds = decode_inputs(request, self.model.inputs)
        names = requested_outputs(request, self.model.outputs)
        started = time.perf_counter()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event=infer_start model=%s id=%s outputs=%s", self.model_name, request.id, ",".join(names))
        loop = asyncio.get_running_loop()
        arrays = await loop.run_in_executor(self.executor, self.model.run, names, feeds)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event=infer model=%s id=%s model_latency_us=%d",
                self.model_name,
                request.id,
                (time.perf_counter() - started) * 1e6,
            )
        return encode_response(request, self.model_name, MODEL_VERSION, names, arrays)

    async def _traced_model_infer(self, request, context):
        from mve.tracing import ServerSpan

        attributes = {
            "rpc.system": "grpc",
            "rpc.service": INFERENCE_SERVICE,
            "rpc.method": "ModelInfer",
            "mve.model": self.model_name,
        }
        if self.address is not None:
            attributes["server.address"], attributes["server.port"] = self.address
        name = f"{INFERENCE_SERVICE}/ModelInfer"
        with ServerSpan(self.tracer, name, context.invocation_metadata(), attributes) as span:
            if span.is_recording():
                shapes = [f"{t.name}{list(t.shape)}".replace(" ", "") for t in request.inputs]
                span.set_attribute("mve.input_shapes", shapes)
                if request.inputs and request.inputs[0].shape:
                    span.set_attribute("mve.batch_size", int(request.inputs[0].shape[0]))
                if request.id:
                    span.set_attribute("mve.inference_id", request.id)
            started = time.perf_counter()
            response = await InferenceServicer.ModelInfer(self, request, context)
            if span.is_recording():
                span.set_attribute("mve.model_latency_us", int((time.perf_counter() - started) * 1e6))
            return response
