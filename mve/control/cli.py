"""``mve control-plane``: run the control plane on a data dir (see `mve.control.settings`)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``control-plane`` subcommand."""
    parser = subparsers.add_parser(
        "control-plane",
        help="run the control plane (models, endpoint configs, endpoints, model-server instances)",
        description="Run the mve control plane. Flags override MVE_* environment variables.",
    )
    parser.add_argument("--data-dir", help="directory for the store, artifacts and logs (env MVE_DATA_DIR)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; env MVE_CONTROL_PLANE_HOST)")
    parser.add_argument("--port", type=int, help="port to bind, 0 for a free one (default 7070; env MVE_CONTROL_PLANE_PORT)")
    parser.add_argument(
        "--default-startup-timeout",
        dest="default_startup_timeout_s",
        type=int,
        help="startup health-check timeout of variants that set none, seconds (default 600)",
    )
    parser.add_argument(
        "--min-startup-timeout",
        dest="min_startup_timeout_s",
        type=int,
        help="lowest ContainerStartupHealthCheckTimeoutInSeconds accepted, 1-60 (default 60, as SageMaker)",
    )
    parser.add_argument(
        "--max-instances-per-variant", type=int, help="most instances one variant may ask for (default 10)"
    )
    parser.add_argument(
        "--model-server-prefix", help='command line to run model servers under, e.g. "nice -n 5" (default none)'
    )
    parser.add_argument(
        "--drain-seconds", dest="drain_s", type=float, help="seconds a removed instance keeps serving (default 1)"
    )
    parser.add_argument(
        "--stop-grace-seconds", dest="stop_grace_s", type=float, help="SIGTERM to SIGKILL grace (default 10)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="Prometheus text on http://METRICS_HOST:PORT/metrics; 0 for a free port, -1 to turn it off "
        "(default 9465; env MVE_CONTROL_PLANE_METRICS_PORT)",
    )
    parser.add_argument(
        "--metrics-host", help="address the metrics port binds (default: --host; env MVE_CONTROL_PLANE_METRICS_HOST)"
    )
    parser.add_argument(
        "--http-port",
        type=int,
        help="boto3's SageMaker, Application Auto Scaling and CloudWatch APIs over HTTP on --host; 0 for a free "
        "port, -1 to turn it off (default 7071; env MVE_CONTROL_PLANE_HTTP_PORT)",
    )
    parser.add_argument(
        "--auth",
        help="sigv4: the HTTP faces (this one's and the proxies') require AWS Signature Version 4 with a key from "
        "`mve keys create`; none: they accept unsigned calls from anyone who can reach them (default sigv4; "
        "env MVE_AUTH)",
    )
    parser.add_argument(
        "--metrics-retention-days", dest="metrics_retention_days", type=float,
        help="keep one-minute metric points this many days, 1-455 (default 15; one-second points: 3 hours)",
    )
    parser.add_argument(
        "--alarm-interval", dest="alarm_interval_s", type=float,
        help="seconds between evaluations of every alarm, 0.1-60 (default 1)",
    )
    parser.add_argument(
        "--utilization-interval", dest="utilization_interval_s", type=float,
        help="seconds between CPU/memory samples of each model server, 0.1-60 (default 1)",
    )
    parser.add_argument(
        "--autoscaling-interval", dest="autoscaling_interval_s", type=float,
        help="seconds between evaluations of every scaling policy, 0.1-300 (default 5)",
    )
    parser.add_argument(
        "--autoscaling-window", dest="autoscaling_window_s", type=float,
        help="seconds of metrics target tracking averages over, 5-3600 (default 60)",
    )
    parser.add_argument(
        "--capture-index-interval", dest="capture_index_interval_s", type=float,
        help="seconds between reads of the data-capture files for experiment reports and bandits, 0.2-60 (default 1)",
    )
    parser.add_argument(
        "--replace-ejected-after", dest="replace_ejected_after_s", type=float,
        help="replace an instance the proxies have reported as an ejected outlier for this many seconds "
        "(a new one starts, then the outlier stops), 5-3600, 0 never (default 60; env MVE_REPLACE_EJECTED_AFTER_S)",
    )
    _add_security_flags(parser)
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    parser.set_defaults(func=run)


def _add_security_flags(parser: argparse.ArgumentParser) -> None:
    """TLS on the gRPC door and the HTTP face, who may call, and TLS for model servers."""
    group = parser.add_argument_group("TLS and credentials (plaintext and no gRPC credentials by default)")
    group.add_argument(
        "--tls-cert", help="PEM certificate of the gRPC door (the HTTP face serves HTTPS with it too), also presented "
        "when this control plane dials under mutual TLS; needs --tls-key (env MVE_CONTROL_PLANE_TLS_CERT)",
    )
    group.add_argument("--tls-key", help="PEM private key of --tls-cert, mode 0600 (env MVE_CONTROL_PLANE_TLS_KEY)")
    group.add_argument(
        "--tls-ca", help="PEM CA bundle that verifies callers' certificates (--tls-client-auth require) and model "
        "servers' (env MVE_CONTROL_PLANE_TLS_CA)",
    )
    group.add_argument(
        "--tls-client-auth", help="none or require: callers must present a certificate signed by --tls-ca, whose "
        "Common Name is their role (default none; env MVE_CONTROL_PLANE_TLS_CLIENT_AUTH)",
    )
    group.add_argument(
        "--token-file", help="0600 file of bearer tokens, one a line: gRPC calls need one (metadata 'authorization: "
        "Bearer <token>') or a client certificate (env MVE_CONTROL_PLANE_TOKEN_FILE)",
    )
    group.add_argument(
        "--open-reads", action="store_true", default=None,
        help="Describe*, List* and Get* calls need no credential (env MVE_OPEN_READS=1|true|0|false)",
    )
    group.add_argument(
        "--model-server-tls-cert", help="PEM certificate model servers are started with; they then require mutual "
        "TLS (the control plane's and proxies' certificates); needs --tls-cert, --tls-key and --tls-ca "
        "(env MVE_MODEL_SERVER_TLS_CERT)",
    )
    group.add_argument(
        "--model-server-tls-key", help="PEM private key of --model-server-tls-cert, mode 0600 "
        "(env MVE_MODEL_SERVER_TLS_KEY)",
    )


def run(args: argparse.Namespace) -> int:
    """Validate the settings and serve until SIGTERM."""
    import asyncio
    import logging
    import sys

    from mve.authn import TokenFileError
    from mve.control.security import load_security
    from mve.control.settings import SettingsError, load_settings
    from mve.tls import TlsConfigError

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    try:
        settings = load_settings(flags)
        security = load_security(settings)  # the TLS and token files, read once now
    except (SettingsError, TlsConfigError, TokenFileError) as error:
        print(f"mve control-plane: error: {error}", file=sys.stderr)
        return 2
    if settings.auth_required and settings.http_enabled:
        from mve.sigv4 import verifier_missing

        missing = verifier_missing()
        if missing is not None:
            print(
                f"mve control-plane: error: --auth sigv4: {missing} (or --auth none, or --http-port -1)",
                file=sys.stderr,
            )
            return 2
    from mve.tracing import TracingConfigError, tracing_config

    try:
        tracing_config()  # OTEL_* checked now: a bad value stops the start, it is never ignored
    except TracingConfigError as error:
        print(f"mve control-plane: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    from mve.control.server import serve

    return asyncio.run(serve(settings, security))
