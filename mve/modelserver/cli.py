"""``mve model-server``: serve one ONNX model over the Open Inference Protocol."""

from __future__ import annotations

import logging
import sys


def register(subparsers) -> None:
    """Add the ``model-server`` subcommand."""
    parser = subparsers.add_parser(
        "model-server",
        help="serve one ONNX model over the Open Inference Protocol (gRPC)",
        description=(
            "Serve one ONNX model with ONNX Runtime over the Open Inference Protocol "
            "(inference.GRPCInferenceService), grpc.health.v1 and server reflection. "
            "Prints one JSON ready line on stdout once the model is loaded and serving."
        ),
    )
    parser.add_argument("--model", required=True, metavar="PATH", help="the .onnx file to serve")
    parser.add_argument("--model-name", metavar="NAME", help="name clients use (default: the file stem)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind, 0..65535 (default: 0, a free port)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu); no silent CPU fallback")
    parser.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads, 1..4 per core (default: 1)"
    )
    parser.add_argument(
        "--grace-period-s",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, seconds in-flight requests may take to finish, 0..300 (default: 10)",
    )
    parser.add_argument("--tls-cert", metavar="PATH", help="PEM certificate (chain): serve gRPC over TLS")
    parser.add_argument("--tls-key", metavar="PATH", help="PEM private key of --tls-cert (mode 0600)")
    parser.add_argument(
        "--tls-ca", metavar="PATH", help="PEM CA bundle that signs callers' certificates (with --tls-client-auth require)"
    )
    parser.add_argument(
        "--tls-client-auth",
        default="none",
        metavar="none|require",
        help="require: callers present a certificate signed by --tls-ca (mutual TLS), and only the control "
        "plane's and proxies' identities may infer; health and reflection stay open (default: none)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="mve's log level (default: INFO)"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    """Validate the flags, load the model, serve until SIGTERM/SIGINT; 0 on a clean stop."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    # --log-level is for mve's own loggers; grpc's and asyncio's DEBUG output is noise here.
    logging.getLogger("mve").setLevel(args.log_level)
    from mve.modelserver.settings import ModelServerSettings, SettingsError

    try:
        settings = ModelServerSettings.from_args(args)
    except SettingsError as error:
        print(f"mve model-server: error: {error}", file=sys.stderr)
        return 2
    from mve.tracing import TracingConfigError, tracing_config

    try:
        tracing_config()  # OTEL_* checked now: a bad value stops the start, it is never ignored
    except TracingConfigError as error:
        print(f"mve model-server: error: {error}", file=sys.stderr)
        return 2
    from mve.modelserver.server import serve

    return serve(settings)
