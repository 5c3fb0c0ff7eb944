"""Runs the control plane: the store, the reconciler and the gRPC server, until SIGTERM.

On SIGTERM (or SIGINT) the server stops taking calls, every model server is stopped gracefully,
and the process exits 0. After a crash (SIGKILL) the model servers keep running; the next control
plane on the same data dir adopts them.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mve._proto import (
    autoscaling_pb2,
    autoscaling_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
)
from mve.control.access_keys import AccessKeyStore, MasterKeyError, keep_window_current
from mve.control.alarms import AlarmBook
from mve.control.artifacts import ArtifactStore
from mve.control.autoscaler import Autoscaler
from mve.control.autoscaling import AutoscalingStore
from mve.control.autoscaling_servicer import ApplicationAutoScalingServicer
from mve.control.cloudwatch import CloudWatchService
from mve.control.cloudwatch_servicer import CloudWatchServicer
from mve.control.deployments import DeploymentRunner
from mve.control.experiments import Experiments
from mve.control.experiments_servicer import ExperimentsServicer
from mve.control.http_face import HttpFace, sigv4_authenticator
from mve.control.instances import LocalInstanceProvider
from mve.control.keys_servicer import AccessKeysServicer
from mve.control.metric_store import MetricStore
from mve.control.prometheus import ControlPlaneCollector
from mve.control.reconciler import Reconciler
from mve.control.routes import RoutePublisher
from mve.control.service import ControlService
from mve.control.servicer import EndpointControlServicer
from mve.control.settings import ControlPlaneSettings
from mve.control.store import SqliteStore
from mve.control.utilization import UtilizationSampler
from mve.control.validation import Limits
from mve.errors import ErrorInterceptor
from mve.prometheus import MetricsServer, loop_reader
from mve.ready import announce_ready
from mve.tracing import setup_tracing

log = logging.getLogger(__name__)

SERVICE_NAME = control_pb2.DESCRIPTOR.services_by_name["EndpointControl"].full_name
CLOUDWATCH_NAME = metrics_pb2.DESCRIPTOR.services_by_name["CloudWatch"].full_name
AUTOSCALING_NAME = autoscaling_pb2.DESCRIPTOR.services_by_name["ApplicationAutoScaling"].full_name
EXPERIMENTS_NAME = experiments_pb2.DESCRIPTOR.services_by_name["Experiments"].full_name
KEYS_NAME = keys_pb2.DESCRIPTOR.services_by_name["AccessKeys"].full_name
AUTH_OFF_WARNING = (
    "AUTH IS OFF (--auth none): THE HTTP FACES (SAGEMAKER, APPLICATION AUTO SCALING, CLOUDWATCH, AND THE "
    "PROXIES' INVOKEENDPOINT) ACCEPT UNSIGNED CALLS FROM ANYONE WHO CAN REACH THEM"
)
COMPACT_INTERVAL_S = 60.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def build_service(settings: ControlPlaneSettings, tracer=None) -> ControlService:
    """The control plane's parts, wired together on the settings' data dir."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(settings.db_path)
    access_keys = AccessKeyStore(settings.db_path, settings.master_key_path)
    routes = RoutePublisher(store, access_keys.signing_keys if settings.auth_required else None)
    provider = LocalInstanceProvider(
        settings.log_dir, command_prefix=settings.model_server_prefix, stop_grace_s=settings.stop_grace_s
    )
    reconciler = Reconciler(
        store, provider, routes, drain_s=settings.drain_s, tracer=tracer,
        replace_ejected_after_s=settings.replace_ejected_after_s,
    )
    limits = Limits(
        max_instances_per_variant=settings.max_instances_per_variant,
        min_startup_timeout_s=settings.min_startup_timeout_s,
        default_startup_timeout_s=settings.default_startup_timeout_s,
    )
    metrics = MetricStore(settings.metrics_db_path, retention_s=settings.metrics_retention_days * 86400)
    alarms = AlarmBook(metrics)
    deployments = DeploymentRunner(
        store, routes, reconciler.launch_instances, reconciler.stop_instances, lambda name: _alarm_state(alarms, name)
    )
    service = ControlService(
        store, ArtifactStore(settings.artifact_dir), routes, reconciler, limits,
        metrics=metrics, alarms=alarms, deployments=deployments,
    )
    service.autoscaler = Autoscaler(
        AutoscalingStore(settings.db_path), service, metrics, alarms, window_s=settings.autoscaling_window_s
    )
    service.experiments = Experiments(
        service, settings.experiments_db_path, settings.metrics_db_path,
        retention_s=settings.metrics_retention_days * 86400,
    )
    service.access_keys = access_keys
    return service


def _alarm_state(alarms: AlarmBook, name: str) -> str | None:
    alarm = alarms.get(name)
    return alarm.state.value if alarm is not None else None


def _running_instances(provider: LocalInstanceProvider):
    """(endpoint, variant, pid) of every model server the provider runs now."""
    return [
        (p.spec.endpoint_name, p.spec.variant_name, p.pid)
        for p in provider.processes()
        if p.returncode is None and not p.stopping
    ]


def _loopback_address(host: str, port: int) -> str:
    """HOST:PORT the control plane's own clients dial: the wildcard addresses through loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


async def _compact_forever(metrics: MetricStore) -> None:
    while True:
        await asyncio.sleep(COMPACT_INTERVAL_S)
        try:
            metrics.compact()
        except Exception:  # noqa: BLE001 - compaction is retried next time; the error is logged
            log.exception("event=metrics_compact_failed")


def _background_tasks(service: ControlService, settings: ControlPlaneSettings) -> list[asyncio.Task]:
    """Alarm evaluation, utilisation sampling and metric compaction, running until cancelled."""
    sampler = UtilizationSampler(service.metrics, lambda: _running_instances(service.reconciler.provider))
    return [
        asyncio.create_task(service.alarms.run_forever(settings.alarm_interval_s), name="alarms"),
        asyncio.create_task(sampler.run_forever(settings.utilization_interval_s), name="utilization"),
        asyncio.create_task(_compact_forever(service.metrics), name="metrics-compact"),
        asyncio.create_task(service.autoscaler.run_forever(settings.autoscaling_interval_s), name="autoscaling"),
        *service.experiments.background_tasks(settings.capture_index_interval_s),
        # The routing table's date keys follow the UTC day (yesterday, today, tomorrow).
        asyncio.create_task(keep_window_current(service.access_keys, service.routes.publish), name="signing-keys"),
    ]


async def serve(settings: ControlPlaneSettings) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    tracing = setup_tracing("mve-control-plane")
    interceptors = [ErrorInterceptor()]
    if tracing is not None:
        from mve.control.tracing import TracingInterceptor

        interceptors.append(TracingInterceptor(tracing.tracer))  # inside: it sees the domain errors
    if not settings.auth_required:
        log.warning("event=auth_off message=%r", AUTH_OFF_WARNING)
    try:
        service = build_service(settings, tracing.tracer if tracing is not None else None)
    except MasterKeyError as error:
        log.error("event=master_key_refused error=%r", str(error))
        return 1
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    control_pb2_grpc.add_EndpointControlServicer_to_server(EndpointControlServicer(service), server)
    metrics_pb2_grpc.add_CloudWatchServicer_to_server(
        CloudWatchServicer(
            CloudWatchService(service.metrics, service.alarms, action_exists=service.autoscaler.policy_exists)
        ),
        server,
    )
    autoscaling_pb2_grpc.add_ApplicationAutoScalingServicer_to_server(
        ApplicationAutoScalingServicer(service.autoscaler), server
    )
    experiments_pb2_grpc.add_ExperimentsServicer_to_server(ExperimentsServicer(service.experiments), server)
    keys_pb2_grpc.add_AccessKeysServicer_to_server(
        AccessKeysServicer(service.access_keys, service.routes.publish), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, CLOUDWATCH_NAME, AUTOSCALING_NAME, EXPERIMENTS_NAME, KEYS_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError as error:
        log.error("event=bind_failed host=%s port=%d error=%r", settings.host, settings.port, str(error))
        return 1
    if port == 0:
        log.error("event=bind_failed host=%s port=%d", settings.host, settings.port)
        return 1
    await server.start()
    # Before recover() starts any model server, so that a busy metrics port fails fast with nothing to undo.
    exporter = None
    if settings.metrics_enabled:
        collector = ControlPlaneCollector(
            service.store, service.routes, getattr(service, "alarms", None), read=loop_reader(asyncio.get_running_loop())
        )
        exporter = MetricsServer(collector, "control-plane")
        try:
            exporter.start(settings.effective_metrics_host, settings.metrics_port)
        except OSError as error:
            log.error("event=bind_failed what=metrics error=%r", str(error))
            await server.stop(grace=0)
            service.store.close()
            service.metrics.close()
            service.experiments.close()
            return 1
    http_face = None
    if settings.http_enabled:
        # Each call checks the published table's keys: with --auth none it requires no signature.
        http_face = HttpFace(
            _loopback_address(settings.host, port),
            authenticate=sigv4_authenticator(lambda: service.routes.signing_keys),
        )
        try:
            await http_face.start(settings.host, settings.http_port)
        except OSError as error:
            log.error("event=bind_failed what=http host=%s port=%d error=%r", settings.host, settings.http_port, str(error))
            if exporter is not None:
                await asyncio.to_thread(exporter.stop)
            await server.stop(grace=0)
            service.store.close()
            service.metrics.close()
            service.experiments.close()
            return 1
    service.deployments.recover()  # updates cut short by a restart go back to their old config
    await service.reconciler.recover()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{settings.host}:{port}"
    log.info("event=control_plane_ready address=%s data_dir=%s", address, settings.data_dir)
    announce_ready(
        "control-plane",
        address,
        metrics_address=exporter.address if exporter else "",
        http_address=http_face.address if http_face else "",
    )
    tasks = _background_tasks(service, settings)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("event=control_plane_stopping")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if http_face is not None:
        await http_face.stop()  # before the gRPC server: its calls go through it
    if exporter is not None:
        await asyncio.to_thread(exporter.stop)
    await server.stop(grace=1.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await service.deployments.shutdown()
    await service.reconciler.shutdown(settings.stop_grace_s)
    service.store.close()
    service.metrics.close()
    service.autoscaler.store.close()
    service.access_keys.close()
    await asyncio.to_thread(service.experiments.close)  # after the index's pass in progress
    if tracing is not None:
        await asyncio.to_thread(tracing.shutdown)  # flush the spans still queued
    log.info("event=control_plane_stopped")
    return 0
