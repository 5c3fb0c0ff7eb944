"""Runs the control plane: the store, the reconciler and the gRPC server, until SIGTERM.

With TLS (``--tls-cert``) the gRPC door is a TLS port, the HTTP face serves HTTPS with the same
certificate, and its internal calls dial the door with TLS. With authorization on (``--token-file``
or ``--tls-client-auth require``) a gatekeeper runs before every method (`mve.control.security`);
the HTTP face's internal calls carry the in-memory internal token.

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
from mve.control.security import ControlPlaneSecurity, internal_address, is_loopback, load_security
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
GRPC_OPEN_WARNING = (
    "NO CREDENTIAL IS REQUIRED ON THE gRPC DOOR AND IT LISTENS BEYOND LOOPBACK: ANYONE WHO CAN REACH IT MAY "
    "CREATE, CHANGE AND DELETE MODELS AND ENDPOINTS (give --token-file and/or --tls-client-auth require)"
)
CLEAR_TOKEN_WARNING = (
    "BEARER TOKENS TRAVEL IN CLEAR TEXT: the gRPC door listens beyond loopback without TLS (give --tls-cert and --tls-key)"
)
SELF_CHECK_TIMEOUT_S = 5.0
COMPACT_INTERVAL_S = 60.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def build_service(
    settings: ControlPlaneSettings, tracer=None, security: ControlPlaneSecurity | None = None
) -> ControlService:
    """The control plane's parts, wired together on the settings' data dir."""
    security = security if security is not None else ControlPlaneSecurity()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(settings.db_path)
    access_keys = AccessKeyStore(settings.db_path, settings.master_key_path)
    model_server_tls = security.model_servers
    routes = RoutePublisher(
        store, access_keys.signing_keys if settings.auth_required else None, upstream_tls=model_server_tls is not None
    )
    provider = LocalInstanceProvider(
        settings.log_dir,
        command_prefix=settings.model_server_prefix,
        stop_grace_s=settings.stop_grace_s,
        tls_flags=tuple(model_server_tls.flags()) if model_server_tls is not None else (),
        credentials=model_server_tls.channel_credentials() if model_server_tls is not None else None,
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


def _warn_about_exposure(settings: ControlPlaneSettings, security: ControlPlaneSecurity) -> None:
    """WARNINGs for a gRPC door beyond loopback that anyone may call, or that takes tokens in clear text."""
    if is_loopback(settings.host):
        return
    if not security.auth_on:
        log.warning("event=grpc_auth_off host=%s message=%r", settings.host, GRPC_OPEN_WARNING)
    elif security.token_file and security.tls is None:
        log.warning("event=tokens_in_clear host=%s message=%r", settings.host, CLEAR_TOKEN_WARNING)


async def _abandon_start(server: grpc.aio.Server, service: ControlService, exporter=None) -> None:
    """Undo a start that failed before any model server ran: ports closed, stores closed."""
    if exporter is not None:
        await asyncio.to_thread(exporter.stop)
    await server.stop(grace=0)
    service.store.close()
    service.metrics.close()
    service.experiments.close()


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


async def serve(settings: ControlPlaneSettings, security: ControlPlaneSecurity | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code. `security`: the TLS files and credentials
    (`load_security`; read from the settings when not given)."""
    security = security if security is not None else load_security(settings)
    tracing = setup_tracing("mve-control-plane")
    # The gatekeeper first (outermost): a refused caller reaches no handler and no other interceptor.
    interceptors = [*security.interceptors(), ErrorInterceptor()]
    if tracing is not None:
        from mve.control.tracing import TracingInterceptor

        interceptors.append(TracingInterceptor(tracing.tracer))  # inside: it sees the domain errors
    if not settings.auth_required:
        log.warning("event=auth_off message=%r", AUTH_OFF_WARNING)
    _warn_about_exposure(settings, security)
    try:
        service = build_service(settings, tracing.tracer if tracing is not None else None, security)
    except MasterKeyError as error:
        log.error("event=master_key_refused error=%r", str(error))
        return 1
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # gRPC defaults to SO_REUSEPORT: a second control plane on a taken port would bind
            # silently and take half the connections. It must fail to bind instead.
            ("grpc.so_reuseport", 0),
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
        port = security.add_port(server, f"{settings.host}:{settings.port}")
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
            await _abandon_start(server, service)
            return 1
    http_face = None
    if settings.http_enabled:
        # Each call checks the published table's keys: with --auth none it requires no signature.
        http_face = HttpFace(
            internal_address(settings.host, port, security.tls),
            authenticate=sigv4_authenticator(lambda: service.routes.signing_keys),
            ssl_context=security.http_ssl_context(),
            security=security.internal_client(),
        )
        try:
            await http_face.start(settings.host, settings.http_port)
        except OSError as error:
            log.error("event=bind_failed what=http host=%s port=%d error=%r", settings.host, settings.http_port, str(error))
            await _abandon_start(server, service, exporter)
            return 1
        problem = await http_face.check_door(SELF_CHECK_TIMEOUT_S) if security.tls is not None else None
        if problem is not None:
            # A certificate the face cannot verify would fail every boto3 call: refuse it at start.
            log.error(
                "event=http_face_cannot_reach_grpc_door address=%s error=%r hint=%r", http_face.grpc_address, problem,
                "--tls-ca must hold the CA that signed --tls-cert (without --tls-ca: a CA the system trusts)",
            )
            await http_face.stop()
            await _abandon_start(server, service, exporter)
            return 2
    service.deployments.recover()  # updates cut short by a restart go back to their old config
    await service.reconciler.recover()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{settings.host}:{port}"
    door = security.describe()
    log.info(
        "event=control_plane_ready address=%s data_dir=%s tls=%s auth=%s open_reads=%s model_server_tls=%s",
        address, settings.data_dir, door["tls"], door["auth"], settings.open_reads and security.auth_on,
        security.model_servers is not None,
    )
    announce_ready(
        "control-plane",
        address,
        metrics_address=exporter.address if exporter else "",
        http_address=http_face.address if http_face else "",
        **door,
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
