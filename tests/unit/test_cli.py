"""`mve --help` lists every subcommand and each subcommand has --help."""

from __future__ import annotations

import pytest

from mve.cli import build_parser, main

SUBCOMMANDS = [
    ["model-server"], ["control-plane"], ["proxy"], ["up"], ["demo"], ["invoke"],
    ["models", "list"], ["endpoint-configs", "create"], ["endpoints", "list"],
    ["endpoint", "describe"], ["endpoint", "update"], ["endpoint", "update-weights"],
    ["metrics", "get-metric-statistics"], ["metrics", "get-metric-data"], ["metrics", "list-metrics"],
    ["metrics", "put-metric-alarm"], ["metrics", "describe-alarms"], ["metrics", "delete-alarms"],
    ["metrics", "describe-alarm-history"], ["top"],
    ["autoscaling", "register-scalable-target"], ["autoscaling", "describe-scalable-targets"],
    ["autoscaling", "deregister-scalable-target"], ["autoscaling", "put-scaling-policy"],
    ["autoscaling", "describe-scaling-policies"], ["autoscaling", "delete-scaling-policy"],
    ["autoscaling", "describe-scaling-activities"], ["application-autoscaling", "describe-scalable-targets"],
]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("model-server", "control-plane", "proxy", "models", "endpoint-configs", "endpoint",
                 "invoke", "up", "demo", "metrics", "top", "autoscaling"):
        assert name in out


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*words, "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.startswith("usage: mve ") and words[-1] in usage


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
