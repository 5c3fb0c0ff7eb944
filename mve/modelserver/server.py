"""Start the model server, announce it, and stop it gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve.authn import AuthInterceptor, Gatekeeper, ModelServerPolicy
from mve.errors import ErrorInterceptor
from mve.modelserver.runtime import ModelLoadError, OnnxModel
from mve.modelserver.servicer import InferenceServicer
from mve.modelserver.settings import ModelServerSettings
from mve.ready import announce_ready
from mve.tracing import setup_tracing

log = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Above the 6 MB payload limit, so that an oversized request meets our clear message, not gRPC's.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
INFERENCE_WORKERS = 1
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def serve(settings: ModelServerSettings) -> int:
    """Load the model and serve until SIGTERM/SIGINT. Returns the process exit code."""
    try:
        model = OnnxModel(settings.model, device=settings.device, threads=settings.threads)
    except ModelLoadError as error:
        print(f"mve model-server: error: {error}", file=sys.stderr)
        return 1
    log.info(
        "event=model_loaded model=%s path=%s providers=%s inputs=%s outputs=%s",
        settings.model_name,
        settings.model,
        ",".join(model.providers),
        ",".join(f"{s.name}:{s.datatype}{list(s.shape)}" for s in model.inputs),
        ",".join(f"{s.name}:{s.datatype}{list(s.shape)}" for s in model.outputs),
    )
    # One inference worker: the session runs one request (a whole batch, when the proxy batches) at
    # a time on its --threads intra-op threads. Concurrent runs would each take --threads threads and
    # oversubscribe the cores the control plane gave this process (docs/batching.md).
    executor = ThreadPoolExecutor(max_workers=INFERENCE_WORKERS, thread_name_prefix="ort-run")
    try:
        return asyncio.run(_serve(settings, model, executor))
    finally:
        model.cancel_all()
        executor.shutdown(wait=True, cancel_futures=True)


async def _serve(settings: ModelServerSettings, model: OnnxModel, executor: ThreadPoolExecutor) -> int:
    server = grpc.aio.server(
        interceptors=_interceptors(settings),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
    )
    tracing = setup_tracing("mve-model-server")
    servicer = InferenceServicer(model, settings.model_name, executor, tracer=tracing.tracer if tracing else None)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [INFERENCE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    try:
        if settings.tls is not None:
            credentials = settings.tls.server_credentials(require_client_auth=settings.require_client_auth)
            port = server.add_secure_port(settings.bind_address, credentials)
        else:
            port = server.add_insecure_port(settings.bind_address)
    except RuntimeError as error:
        port, reason = 0, str(error)
    else:
        reason = "address in use or not available"
    if port == 0:
        print(f"mve model-server: error: cannot bind {settings.bind_address}: {reason}", file=sys.stderr)
        return 1
    for service in ("", INFERENCE_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    await server.start()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    host = "127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    servicer.address = (host, port)
    log.info("event=serving model=%s address=%s device=%s threads=%d tls=%s", settings.model_name, address,
             ":".join(map(str, settings.device)), settings.threads, _tls_mode(settings))
    announce_ready("model-server", address)

    await stopping.wait()
    log.info("event=stopping model=%s grace_period_s=%g", settings.model_name, settings.grace_period_s)
    servicer.ready = False
    await health_servicer.enter_graceful_shutdown()
    # When the grace period is over, ask ONNX Runtime to stop the runs still going, so the
    # process does not wait on a long inference nobody will read.
    cancel = loop.call_later(settings.grace_period_s, _grace_period_over, model, settings.model_name)
    await server.stop(settings.grace_period_s)
    cancel.cancel()
    if tracing is not None:
        await asyncio.to_thread(tracing.shutdown)  # flush the spans still queued
    log.info("event=stopped model=%s", settings.model_name)
    return 0


def _interceptors(settings: ModelServerSettings) -> list:
    """The server's interceptors; under mutual TLS the gatekeeper comes first (outermost), so a
    caller that is not the control plane or a proxy is refused before anything else runs."""
    interceptors: list = [ErrorInterceptor()]
    if settings.require_client_auth:
        interceptors.insert(0, AuthInterceptor(Gatekeeper(ModelServerPolicy())))
    return interceptors


def _tls_mode(settings: ModelServerSettings) -> str:
    if settings.tls is None:
        return "off"
    return "mutual" if settings.require_client_auth else "on"


def _grace_period_over(model: OnnxModel, model_name: str) -> None:
    cancelled = model.cancel_all()
    log.info("event=grace_period_over model=%s cancelled_runs=%d", model_name, cancelled)
