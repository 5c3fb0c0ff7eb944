"""``mve proxy``: the data-plane proxy in front of the model servers."""

from __future__ import annotations

import argparse
import sys

from mve.proxy.settings import DEFAULT_CONTROL_PLANE, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, MAX_WORKERS, env_default

# What the parent of --workers sets on each worker itself; every other flag given is passed on as it is.
_PER_WORKER = frozenset({"workers", "worker_index", "proxy_id", "port", "http_port", "metrics_port"})


def register(subparsers) -> None:
    """Add the ``proxy`` subcommand."""
    parser = subparsers.add_parser(
        "proxy",
        help="run the data-plane proxy (InvokeEndpoint and the Open Inference Protocol)",
        description=(
            "Serve mve.v1.EndpointRuntime/InvokeEndpoint and the Open Inference Protocol over gRPC, and "
            "SageMaker Runtime's InvokeEndpoint over HTTP for boto3 (--http-port), for every "
            "endpoint in the routing table the control plane streams (WatchRoutes). Flags default "
            "to MVE_CONTROL_PLANE, MVE_PROXY_HOST, MVE_PROXY_PORT, MVE_PROXY_HTTP_PORT, MVE_PROXY_ID, MVE_MODEL_TIMEOUT_S, "
            "MVE_STATS_INTERVAL_S, "
            "MVE_PROXY_METRICS_PORT, MVE_PROXY_METRICS_HOST, MVE_PROXY_DRAIN_S, MVE_PROXY_MAX_IN_FLIGHT_PER_INSTANCE, "
            "MVE_PROXY_MAX_IN_FLIGHT, MVE_PROXY_CAPTURE_QUEUE_RECORDS, MVE_PROXY_CAPTURE_QUEUE_MB, "
            "MVE_PROXY_CAPTURE_FILE_MAX_MB, MVE_PROXY_CAPTURE_FLUSH_INTERVAL_S, MVE_PROXY_SHADOW_MAX_IN_FLIGHT, "
            "MVE_PROXY_OUTLIER_CONSECUTIVE_FAILURES, MVE_PROXY_OUTLIER_LATENCY_FACTOR, MVE_PROXY_OUTLIER_EJECTION_S, "
            "MVE_PROXY_OUTLIER_MAX_EJECTION_PERCENT, MVE_PROXY_TLS_CERT, MVE_PROXY_TLS_KEY, MVE_PROXY_TLS_CA, "
            "MVE_PROXY_TLS_CLIENT_AUTH, MVE_PROXY_INVOKE_TOKEN_FILE, MVE_PROXY_CONTROL_PLANE_TOKEN_FILE, "
            "MVE_PROXY_CONTROL_PLANE_TLS, MVE_PROXY_WORKERS, MVE_PROXY_TRANSPORT."
        ),
    )
    parser.add_argument("--control-plane", metavar="HOST:PORT", default=None,
                        help=f"control plane address (default: $MVE_CONTROL_PLANE or {DEFAULT_CONTROL_PLANE})")
    parser.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="gRPC port, 0 for a free one (default 8080)")
    parser.add_argument("--http-port", type=int, default=None,
                        help="SageMaker Runtime's HTTP face for boto3 (POST /endpoints/NAME/invocations) on --host; "
                        f"0 for a free port, -1 to turn it off (default {DEFAULT_HTTP_PORT})")
    parser.add_argument("--proxy-id", default=None, help="name in the control plane's stats (default: host and pid)")
    parser.add_argument("--model-timeout", type=float, default=None, metavar="SECONDS",
                        help="longest wait for a model's answer (default 60)")
    parser.add_argument("--stats-interval", type=float, default=None, metavar="SECONDS",
                        help="how often counters are reported to the control plane (default 1)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help=f"Prometheus text on http://METRICS_HOST:PORT/metrics; 0 for a free port, "
                        f"-1 to turn it off (default {DEFAULT_METRICS_PORT})")
    parser.add_argument("--metrics-host", default=None, help="address the metrics port binds (default: --host)")
    parser.add_argument("--drain-seconds", type=float, default=None, metavar="SECONDS",
                        help="on SIGTERM, how long health says NOT_SERVING while calls are still taken, before the "
                        "server stops taking new ones (default 1, 0-600)")
    parser.add_argument("--max-in-flight-per-instance", type=int, default=None, metavar="N",
                        help="requests in flight to one model server before more are refused with "
                        "ModelNotReadyException (unbatched variants; default 64, 1-100000)")
    parser.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                        help="requests in flight to all model servers of this proxy before more are refused "
                        "(default 4096, 1-1000000)")
    parser.add_argument("--capture-queue-records", type=int, default=None, metavar="N",
                        help="data capture records waiting for the writer before more are dropped and counted "
                        "(default 10000, 1-10000000)")
    parser.add_argument("--capture-queue-mb", type=int, default=None, metavar="MB",
                        help="megabytes of data capture records waiting for the writer before more are dropped "
                        "(default 64, 1-65536)")
    parser.add_argument("--capture-file-max-mb", type=int, default=None, metavar="MB",
                        help="a capture file is closed and a new one started past this size, and every hour "
                        "(default 64, 1-65536)")
    parser.add_argument("--capture-flush-interval", type=float, default=None, metavar="SECONDS",
                        help="captured records reach their files at least this often, and on shutdown "
                        "(default 1, 0.01-60)")
    parser.add_argument("--shadow-max-in-flight", type=int, default=None, metavar="N",
                        help="copies of requests in flight to shadow variants at once; past it they are dropped "
                        "and counted (default 256, 1-100000)")
    parser.add_argument("--outlier-consecutive-failures", type=int, default=None, metavar="N",
                        help="eject an instance from its variant's rotation after N failed calls in a row "
                        "(timeouts, UNAVAILABLE, 5xx-class; not the caller's bad input); 0 turns this off "
                        "(default 5, 1-1000)")
    parser.add_argument("--outlier-latency-factor", type=float, default=None, metavar="X",
                        help="eject an instance whose latency EWMA is above X times the median of its siblings' "
                        "(after 20 answers, in variants of 2+ instances); 0 turns this off (default 5, 1.5-1000)")
    parser.add_argument("--outlier-ejection-s", type=float, default=None, metavar="SECONDS",
                        help="an ejected instance is out this long times its ejections in a row (at most 10x), "
                        "then probed with one request at a time (default 10, 0.1-3600)")
    parser.add_argument("--outlier-max-ejection-percent", type=float, default=None, metavar="PERCENT",
                        help="at most this share of a variant's instances ejected at once, never all "
                        "(default 50, 0-100)")
    parser.add_argument("--tls-cert", default=None, metavar="PATH",
                        help="PEM certificate (chain): the gRPC door serves TLS and the HTTP door HTTPS with it; also "
                        "the client certificate presented to the control plane and to model servers")
    parser.add_argument("--tls-key", default=None, metavar="PATH", help="PEM private key of --tls-cert (mode 0600)")
    parser.add_argument("--tls-ca", default=None, metavar="PATH",
                        help="PEM CA bundle: verifies the control plane and model servers this proxy dials, and "
                        "callers' certificates under --tls-client-auth require")
    parser.add_argument("--tls-client-auth", default=None, metavar="none|require",
                        help="require: callers of both doors present a certificate signed by --tls-ca (mutual TLS), "
                        "which also authorizes invocations (default none)")
    parser.add_argument("--invoke-token-file", default=None, metavar="PATH",
                        help="invocations on the gRPC door (InvokeEndpoint and the Open Inference Protocol but "
                        "health) need 'authorization: Bearer <token>' with a token of this file (0600, one per "
                        "line), or a client certificate under --tls-client-auth require; the HTTP door keeps SigV4")
    parser.add_argument("--control-plane-token-file", default=None, metavar="PATH",
                        help="the bearer token (the file's first) sent to the control plane on WatchRoutes and "
                        "ReportStats")
    parser.add_argument("--control-plane-tls", default=None, metavar="auto|on|off",
                        help="dial the control plane with TLS, verifying it against --tls-ca (the system's CAs "
                        "without one) and presenting --tls-cert; auto: on when --tls-ca is given (default auto)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help=f"run N proxy processes (1-{MAX_WORKERS}, e.g. one per core) on the same --port and "
                        "--http-port with SO_REUSEPORT under a small parent that restarts one that dies; each has "
                        "its own routing table subscription, proxy id (PROXY_ID-wI) and metrics port (--metrics-port "
                        "+ I). The kernel balances connections, not requests: give clients several connections "
                        "(default 1: one process, no parent)")
    parser.add_argument("--transport", default=None, metavar="auto|native|grpc-aio",
                        help="the gRPC door's transport: native (the C HTTP/2 loop, plaintext), grpc-aio, or auto "
                             "(default: native where it was built and the door has no --tls-cert, else grpc-aio)")
    # Set by the parent of --workers on each worker: its index (for the logs) and SO_REUSEPORT on both doors.
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """`ProxySettings` from flags, then ``MVE_*`` environment variables, then defaults; validated."""
    from mve.proxy.settings import ProxySettings

    defaults = ProxySettings()

    def pick(flag, env_name, default):
        return flag if flag is not None else env_default(env_name, default)

    return ProxySettings(
        control_plane=pick(args.control_plane, "CONTROL_PLANE", defaults.control_plane),
        host=pick(args.host, "PROXY_HOST", defaults.host),
        port=pick(args.port, "PROXY_PORT", defaults.port),
        http_port=pick(args.http_port, "PROXY_HTTP_PORT", defaults.http_port),
        proxy_id=pick(args.proxy_id, "PROXY_ID", defaults.proxy_id),
        model_timeout_s=pick(args.model_timeout, "MODEL_TIMEOUT_S", defaults.model_timeout_s),
        stats_interval_s=pick(args.stats_interval, "STATS_INTERVAL_S", defaults.stats_interval_s),
        metrics_port=pick(args.metrics_port, "PROXY_METRICS_PORT", defaults.metrics_port),
        metrics_host=pick(args.metrics_host, "PROXY_METRICS_HOST", defaults.metrics_host),
        max_in_flight_per_instance=pick(
            args.max_in_flight_per_instance, "PROXY_MAX_IN_FLIGHT_PER_INSTANCE", defaults.max_in_flight_per_instance
        ),
        max_in_flight=pick(args.max_in_flight, "PROXY_MAX_IN_FLIGHT", defaults.max_in_flight),
        drain_s=pick(args.drain_seconds, "PROXY_DRAIN_S", defaults.drain_s),
        capture_queue_records=pick(
            args.capture_queue_records, "PROXY_CAPTURE_QUEUE_RECORDS", defaults.capture_queue_records
        ),
        capture_queue_mb=pick(args.capture_queue_mb, "PROXY_CAPTURE_QUEUE_MB", defaults.capture_queue_mb),
        capture_file_max_mb=pick(args.capture_file_max_mb, "PROXY_CAPTURE_FILE_MAX_MB", defaults.capture_file_max_mb),
        capture_flush_interval_s=pick(
            args.capture_flush_interval, "PROXY_CAPTURE_FLUSH_INTERVAL_S", defaults.capture_flush_interval_s
        ),
        shadow_max_in_flight=pick(args.shadow_max_in_flight, "PROXY_SHADOW_MAX_IN_FLIGHT", defaults.shadow_max_in_flight),
        outlier_consecutive_failures=pick(
            args.outlier_consecutive_failures, "PROXY_OUTLIER_CONSECUTIVE_FAILURES",
            defaults.outlier_consecutive_failures,
        ),
        outlier_latency_factor=pick(
            args.outlier_latency_factor, "PROXY_OUTLIER_LATENCY_FACTOR", defaults.outlier_latency_factor
        ),
        outlier_ejection_s=pick(args.outlier_ejection_s, "PROXY_OUTLIER_EJECTION_S", defaults.outlier_ejection_s),
        outlier_max_ejection_percent=pick(
            args.outlier_max_ejection_percent, "PROXY_OUTLIER_MAX_EJECTION_PERCENT",
            defaults.outlier_max_ejection_percent,
        ),
        tls_cert=pick(args.tls_cert, "PROXY_TLS_CERT", defaults.tls_cert),
        tls_key=pick(args.tls_key, "PROXY_TLS_KEY", defaults.tls_key),
        tls_ca=pick(args.tls_ca, "PROXY_TLS_CA", defaults.tls_ca),
        tls_client_auth=pick(args.tls_client_auth, "PROXY_TLS_CLIENT_AUTH", defaults.tls_client_auth),
        invoke_token_file=pick(args.invoke_token_file, "PROXY_INVOKE_TOKEN_FILE", defaults.invoke_token_file),
        control_plane_token_file=pick(
            args.control_plane_token_file, "PROXY_CONTROL_PLANE_TOKEN_FILE", defaults.control_plane_token_file
        ),
        control_plane_tls=pick(args.control_plane_tls, "PROXY_CONTROL_PLANE_TLS", defaults.control_plane_tls),
        workers=pick(args.workers, "PROXY_WORKERS", defaults.workers),
        transport=pick(args.transport, "PROXY_TRANSPORT", defaults.transport),
        reuse_port=args.worker_index is not None,
    ).validate()


def worker_flags(args: argparse.Namespace) -> list[str]:
    """The flags given to this ``mve proxy`` (not the environment: workers inherit it), as a command
    line for each worker, less those the parent sets per worker (`_PER_WORKER`).

    Every proxy flag is ``--`` + its dest with dashes; tests/unit/test_proxy_workers_settings.py
    checks that a command line survives the round trip.
    """
    flags: list[str] = []
    for dest, value in vars(args).items():
        if dest in _PER_WORKER or dest in ("command", "func") or value is None:
            continue
        flags.append(f"--{dest.replace('_', '-')}={value}")  # one word: a value may start with '-'
    return flags


def run(args: argparse.Namespace) -> int:
    """Validate settings and serve until SIGTERM."""
    import asyncio
    import logging

    from mve.errors import ValidationError

    worker = f"worker={args.worker_index} " if args.worker_index is not None else ""
    logging.basicConfig(
        level="INFO" if args.log_level == "DEBUG" else args.log_level, stream=sys.stderr,
        format=f"ts=%(asctime)s level=%(levelname)s service=proxy {worker}logger=%(name)s %(message)s",
    )
    # DEBUG is for mve's own loggers (the per-request lines); grpc's and asyncio's DEBUG is noise.
    logging.getLogger("mve").setLevel(args.log_level)
    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        print(f"mve proxy: error: {error.message}", file=sys.stderr)
        return 2
    from mve.tracing import TracingConfigError, tracing_config

    try:
        tracing_config()  # OTEL_* checked now: a bad value stops the start, it is never ignored
    except TracingConfigError as error:
        print(f"mve proxy: error: {error}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        from mve.proxy.workers import run_workers

        return run_workers(settings, worker_flags(args))
    from mve.proxy.server import serve

    try:
        asyncio.run(serve(settings))
    except OSError as error:
        print(f"mve proxy: error: {error}", file=sys.stderr)
        return 1
    return 0
