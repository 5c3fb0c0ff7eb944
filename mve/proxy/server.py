"""Assemble and run the proxy: the gRPC server, SageMaker Runtime's HTTP door, the WatchRoutes
subscriber and the stats reporter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from mve._proto import grpc_predict_v2_pb2, runtime_pb2, runtime_pb2_grpc
from mve.prometheus import MetricsServer, loop_reader
from mve.proxy.capture_writer import CaptureWriter
from mve.proxy.dataplane import DataPlane
from mve.proxy.prometheus import ProxyCollector
from mve.proxy.routing.router import Router
from mve.proxy.routing.watcher import RouteWatcher
from mve.proxy.settings import ProxySettings
from mve.proxy.stats import StatsBook, StatsReporter
from mve.proxy.transport.grpc_registry import ErrorMappingServer
from mve.proxy.transport.grpc_servicers import EndpointRuntimeServicer, InferenceServicer, RawModelInfer, add_inference_service
from mve.proxy.transport.http_auth import RequestAuth
from mve.proxy.transport.http_runtime import HttpRuntime, RuntimeHttpServer
from mve.proxy.transport.native import NativeDoor
from mve.proxy.transport.native_upstream import NativeUpstream
from mve.proxy.transport.native_upstream import available as native_upstream_available
from mve.proxy.transport.upstream import CHANNEL_OPTIONS, UpstreamPool
from mve.ready import announce_ready
from mve.tls import is_loopback
from mve.tracing import Tracing, setup_tracing

log = logging.getLogger(__name__)

# A request over the 6 MB body limit must still arrive, so that it is refused with a clear message.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class ProxyServer:
    """A running proxy; `start` binds and starts the background tasks, `stop` drains and closes."""

    def __init__(self, settings: ProxySettings, *, seed: int | None = None, tracing: Tracing | None = None):
        self.settings = settings
        self.security = settings.security
        self.tracing = tracing
        self.router = Router(seed=seed, outliers=settings.outlier_policy)
        self.pool = UpstreamPool(
            close_grace_s=settings.model_timeout_s,
            max_in_flight=settings.max_in_flight,
            max_in_flight_per_instance=settings.max_in_flight_per_instance,
            tls_credentials=self.security.upstream_credentials(),
        )
        self.stats = StatsBook()
        self.capture = CaptureWriter(
            max_records=settings.capture_queue_records,
            max_bytes=settings.capture_queue_mb << 20,
            file_max_bytes=settings.capture_file_max_mb << 20,
            flush_interval_s=settings.capture_flush_interval_s,
        )
        self.dataplane = DataPlane(
            self.router, self.pool, self.stats, model_timeout_s=settings.model_timeout_s,
            tracer=tracing.tracer if tracing is not None else None, capture=self.capture,
            shadow_max_in_flight=settings.shadow_max_in_flight, seed=seed,
        )
        self.pool.tracing = tracing is not None
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.address = ""
        self._control_channel: grpc.aio.Channel | None = None
        self._tasks: list[asyncio.Task] = []
        self.reporter: StatsReporter | None = None
        self.metrics: MetricsServer | None = None
        self.http: RuntimeHttpServer | None = None
        self.native: NativeDoor | None = None
        self.native_upstream: NativeUpstream | None = None
        self.transport = ""

    async def start(self) -> str:
        """Bind, serve, subscribe to routes and start reporting; returns ``host:port``."""
        s = self.settings
        self.transport = s.effective_transport
        native = self.transport == "native"
        # SO_REUSEPORT only for the workers of --workers, which share the port; gRPC's own default is
        # on, which would let a second proxy on a taken port take some of its connections without a word.
        reuse = int(s.reuse_port and not native)
        self.server = grpc.aio.server(options=[*SERVER_OPTIONS, ("grpc.so_reuseport", reuse)])
        # Errors are mapped, and callers checked when invocations need a credential, by wrappers
        # added at registration, not by an interceptor on every call.
        registry = ErrorMappingServer(self.server, self.security.gatekeeper())
        runtime_pb2_grpc.add_EndpointRuntimeServicer_to_server(EndpointRuntimeServicer(self.dataplane), registry)
        add_inference_service(InferenceServicer(self.dataplane), RawModelInfer(self.dataplane), registry)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registry)
        services = (
            runtime_pb2.DESCRIPTOR.services_by_name["EndpointRuntime"].full_name,
            grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        # What enable_server_reflection does on a grpc.aio server, through the registry (generic
        # handlers only); a stream-stream method open to all callers: nothing to map or check.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(services), registry)
        if native and native_upstream_available():
            # Upstream too: plaintext ModelInfer calls to model servers go on nghttp2 client
            # sessions driven from this event loop (mve._h2client, inline: no thread hop).
            self.native_upstream = NativeUpstream(threaded=False)
            self.native_upstream.start()
            self.pool.native = self.native_upstream
        if native:
            port = await self._start_native_door()
        else:
            port = await self._start_grpc_aio_door()
        # A wildcard bind is announced as loopback, an address a client on this machine can dial.
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "[::]") else s.host
        self.address = f"{host}:{port}"
        self.dataplane.address = (host, port)
        for name in ("", *services[:2]):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.http_enabled:
            # The same DataPlane as the gRPC door; requests admitted by what the routing table says.
            runtime = HttpRuntime(self.dataplane, RequestAuth(self.router, credentials_required=self.security.invoke_auth))
            self.http = RuntimeHttpServer(runtime, grace_s=s.grace_s)
            try:
                await self.http.start(
                    s.host, s.http_port, ssl_context=self.security.http_ssl_context(), reuse_port=s.reuse_port
                )
            except OSError:
                self.http = None
                await self.server.stop(0)
                raise

        self._control_channel = self.security.control_plane_channel(s.control_plane, CHANNEL_OPTIONS)
        control = self.security.control_plane_stub(self._control_channel)
        proxy_id = s.effective_proxy_id
        watcher = RouteWatcher(
            control, self.router, self.pool, proxy_id,
            backoff_min_s=s.resubscribe_min_s, backoff_max_s=s.resubscribe_max_s,
        )
        self.reporter = StatsReporter(
            self.stats, control, proxy_id, s.stats_interval_s, ejected=self.router.ejected_instances
        )
        self._tasks = [
            asyncio.create_task(watcher.run(), name="watch-routes"),
            asyncio.create_task(self.reporter.run_forever(), name="stats"),
        ]
        if s.metrics_enabled:
            collector = ProxyCollector(
                self.stats, self.router, read=loop_reader(asyncio.get_running_loop()),
                capture=self.capture, shadows=self.dataplane.shadows,
            )
            self.metrics = MetricsServer(collector, "proxy")
            try:
                self.metrics.start(s.effective_metrics_host, s.metrics_port)
            except OSError:
                await self.stop()
                raise
        log.info(
            "event=proxy_started address=%s http_address=%s control_plane=%s proxy_id=%s transport=%s upstream=%s %s",
            self.address, self.http_address or "off", s.control_plane, proxy_id, self.transport,
            "native" if self.native_upstream is not None else "grpc-aio",
            self.security.describe(),
        )
        if self.security.invoke_tokens is not None and not self.security.door_tls and not is_loopback(s.host):
            log.warning(
                "event=tokens_in_clear host=%s reason=%r", s.host,
                "--invoke-token-file on a plaintext door that is not loopback: tokens cross the network "
                "unencrypted; give --tls-cert and --tls-key",
            )
        return self.address

    async def _start_grpc_aio_door(self) -> int:
        """Serve the gRPC door on grpc.aio; returns its port."""
        s = self.settings
        credentials = self.security.server_credentials()
        try:
            if credentials is not None:
                port = self.server.add_secure_port(f"{s.host}:{s.port}", credentials)
            else:
                port = self.server.add_insecure_port(f"{s.host}:{s.port}")
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot bind {s.host}:{s.port}")
        await self.server.start()
        return port

    async def _start_native_door(self) -> int:
        """Serve the gRPC door on the native transport, with the grpc.aio server behind it on a
        loopback port of its own for every method but the two hot ones; returns the door's port."""
        s = self.settings
        inner = self.server.add_insecure_port("127.0.0.1:0")
        if inner == 0:
            raise OSError("cannot bind a loopback port for the proxy's grpc.aio server")
        await self.server.start()
        try:
            self.native = NativeDoor(
                self.dataplane, f"127.0.0.1:{inner}", host=s.host, port=s.port,
                gatekeeper=self.security.gatekeeper(), reuse_port=s.reuse_port, channel_options=CHANNEL_OPTIONS,
            )
        except OSError as error:
            await self.server.stop(0)
            raise OSError(f"cannot bind {s.host}:{s.port}: {error.strerror or error}") from None
        self.native.start()
        return self.native.port

    @property
    def http_address(self) -> str:
        """``host:port`` of SageMaker Runtime's HTTP door ("" when it is off)."""
        return self.http.address if self.http is not None else ""

    @property
    def metrics_address(self) -> str:
        """``host:port`` of the Prometheus exporter ("" when it is off)."""
        return self.metrics.address if self.metrics is not None else ""

    async def stop(self) -> None:
        """Say NOT_SERVING, keep serving for the drain, stop taking requests, let those in flight
        finish (grace) and then the shadow calls (grace again), write and flush every captured
        record, then close everything.

        The HTTP door drains with the gRPC door: during the drain its answers close their
        connections (keep-alive clients reconnect, through a load balancer to another proxy), then
        both stop accepting and wait for their requests in flight together.
        """
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            self.http.drain()
        if self.settings.drain_s > 0:
            log.info("event=proxy_draining seconds=%g", self.settings.drain_s)
            await asyncio.sleep(self.settings.drain_s)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        doors = []
        if self.native is not None:
            doors.append(self.native.stop(self.settings.grace_s))
        if self.server is not None:
            doors.append(self.server.stop(self.settings.grace_s))
        if self.http is not None:
            doors.append(self.http.stop())
        await asyncio.gather(*doors)
        await self.dataplane.shadows.close(self.settings.grace_s)
        # Off the loop: the writer thread writes what is queued and flushes every file.
        await asyncio.to_thread(self.capture.close)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.reporter is not None:
            # The last interval's counts go out before the channel closes (best effort, bounded).
            self.reporter.take_interval()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.reporter.send_pending(), timeout=2.0)
        await self.pool.close(grace=0)
        if self.native_upstream is not None:
            self.native_upstream.close()
        if self._control_channel is not None:
            await self._control_channel.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flush the spans still queued
        log.info("event=proxy_stopped address=%s", self.address)


async def serve(settings: ProxySettings) -> None:
    """Run a proxy until SIGTERM or SIGINT, announcing readiness once it serves."""
    proxy = ProxyServer(settings, tracing=setup_tracing("mve-proxy"))
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce_ready(
        "proxy", proxy.address, metrics_address=proxy.metrics_address, http_address=proxy.http_address,
        transport=proxy.transport,
    )
    await stop.wait()
    log.info("event=proxy_stopping")
    await proxy.stop()
