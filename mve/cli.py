"""The ``mve`` command: one CLI whose subcommands each live in the module that owns them.

Each module in `COMMAND_MODULES` has ``register(subparsers)``, which adds its subcommands and
sets ``func`` (``func(args) -> int``) on each. Modules keep heavy imports (onnxruntime, grpc
servers) inside their ``func`` so that ``mve --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "mve.modelserver.cli",  # model-server
    "mve.control.cli",  # control-plane
    "mve.proxy.cli",  # proxy
    "mve.commands",  # models, endpoint-configs, endpoints, invoke, ...
    "mve.commands_metrics",  # metrics (CloudWatch verbs), top
    "mve.commands_autoscaling",  # autoscaling (Application Auto Scaling verbs)
    "mve.commands_experiments",  # report, feedback, bandit
    "mve.commands_keys",  # keys (access keys for SigV4 on the HTTP faces)
    "mve.mesh",  # up
    "mve.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    from mve import __version__

    parser = argparse.ArgumentParser(
        prog="mve",
        description="Self-hosted multi-variant model endpoints over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"mve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mve`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
