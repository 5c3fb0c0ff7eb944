"""``mve proxy --workers N`` settings: 1-64 checked at start with a message naming the flag (exit 2),
what each worker gets (proxy id, metrics port), and the flags passed on to the workers."""

from __future__ import annotations

import socket

import pytest

from mve.cli import build_parser, main
from mve.errors import ValidationError
from mve.proxy import cli
from mve.proxy.settings import ProxySettings


def _settings(argv: list[str]) -> ProxySettings:
    return cli.settings_from_args(build_parser().parse_args(["proxy", *argv]))


def test_one_worker_is_the_default_and_binds_without_so_reuseport(monkeypatch):
    monkeypatch.delenv("MVE_PROXY_WORKERS", raising=False)
    settings = _settings([])
    assert settings.workers == 1 and settings.reuse_port is False
    assert _settings(["--worker-index", "3"]).reuse_port is True  # what the parent sets on its workers


@pytest.mark.parametrize("value", ["0", "65", "-1"])
def test_workers_outside_1_to_64_exit_2_naming_the_flag(value, capsys):
    assert main(["proxy", "--workers", value]) == 2
    assert f"--workers must be between 1 and 64, got {value}" in capsys.readouterr().err


def test_workers_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("MVE_PROXY_WORKERS", "4")
    assert _settings([]).workers == 4
    assert _settings(["--workers", "2"]).workers == 2  # the flag wins
    monkeypatch.setenv("MVE_PROXY_WORKERS", "many")
    assert main(["proxy"]) == 2
    assert "MVE_PROXY_WORKERS='many' is not a valid int" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "4", "--metrics-port", "65534"], "needs ports up to 65537"),
        (["--workers", "4", "--metrics-port", "8079", "--port", "8080"],
         "--port 8080 is among the workers' metrics ports 8079-8082"),
        (["--workers", "2", "--metrics-port", "9000", "--http-port", "9001"], "--http-port 9001 is among"),
        (["--workers", "11", "--proxy-id", "p" * 125], "--proxy-id must be at most 124 characters with --workers 11"),
    ],
)
def test_what_workers_add_is_checked(argv, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        _settings(argv)


def test_a_metrics_port_range_on_another_host_is_no_clash():
    settings = _settings(["--workers", "2", "--metrics-port", "8079", "--metrics-host", "127.0.0.2"])
    assert settings.workers == 2


def test_each_worker_has_its_own_proxy_id_and_metrics_port():
    named = ProxySettings(proxy_id="edge", workers=3, metrics_port=9500).validate()
    assert [named.worker_proxy_id(i, parent_pid=42) for i in range(3)] == ["edge-w0", "edge-w1", "edge-w2"]
    assert [named.worker_metrics_port(i) for i in range(3)] == [9500, 9501, 9502]
    unnamed = ProxySettings(workers=2, metrics_port=0).validate()
    assert unnamed.worker_proxy_id(1, parent_pid=42) == f"proxy-{socket.gethostname()}-42-w1"
    assert [unnamed.worker_metrics_port(i) for i in range(2)] == [0, 0]  # a free port each
    off = ProxySettings(workers=2, metrics_port=-1).validate()
    assert [off.worker_metrics_port(i) for i in range(2)] == [-1, -1]


def test_the_workers_get_every_flag_given_but_those_the_parent_sets():
    argv = [
        "proxy", "--control-plane", "cp:7070", "--host", "0.0.0.0", "--port", "8080", "--http-port", "-1",
        "--proxy-id", "edge", "--model-timeout", "2.5", "--stats-interval", "0.5", "--metrics-port", "9500",
        "--metrics-host", "127.0.0.1", "--drain-seconds", "3", "--max-in-flight-per-instance", "8",
        "--max-in-flight", "100", "--capture-queue-records", "10", "--capture-queue-mb", "2",
        "--capture-file-max-mb", "3", "--capture-flush-interval", "0.2", "--shadow-max-in-flight", "5",
        "--outlier-consecutive-failures", "0", "--outlier-latency-factor", "2", "--outlier-ejection-s", "1",
        "--outlier-max-ejection-percent", "25", "--tls-cert=-odd/c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem",
        "--tls-client-auth", "require", "--invoke-token-file", "t", "--control-plane-token-file", "cpt",
        "--control-plane-tls", "on", "--transport", "grpc-aio", "--workers", "4", "--log-level", "DEBUG",
    ]
    parser = build_parser()
    given = parser.parse_args(argv)
    flags = cli.worker_flags(given)
    again = parser.parse_args(["proxy", *flags])
    per_worker = {"workers", "worker_index", "proxy_id", "port", "http_port", "metrics_port"}
    for dest, value in vars(given).items():
        if dest in per_worker:
            assert getattr(again, dest) is None, dest
        else:
            assert getattr(again, dest) == value, dest
    # Every flag of `mve proxy` but those set per worker was given above: a new flag shows up here.
    proxy_parser = parser._subparsers._group_actions[0].choices["proxy"]  # noqa: SLF001 - argparse has no public way
    flagged = {a.dest for a in proxy_parser._actions if a.option_strings and a.dest != "help"}  # noqa: SLF001
    assert flagged - per_worker == {f.split("=", 1)[0][2:].replace("-", "_") for f in flags}
