"""``mve demo --client``: mve by default, boto3 on request, a clear error without boto3."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from mve.cli import build_parser


def test_the_client_defaults_to_mve_and_takes_boto3():
    parser = build_parser()
    assert parser.parse_args(["demo"]).client == "mve"
    assert parser.parse_args(["demo", "--client", "boto3"]).client == "boto3"


def test_without_boto3_the_demo_says_to_install_it():
    script = textwrap.dedent("""
        import sys
        sys.modules["boto3"] = None  # as if it were not installed
        from mve.cli import main
        sys.exit(main(["demo", "--client", "boto3"]))
    """)
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps its lines at the terminal's width
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--client boto3 needs boto3, which is not installed: pip install boto3" in done.stdout


def test_boto3_with_a_running_mesh_is_refused_saying_why(capsys):
    from mve.cli import main

    code = main(["demo", "--client", "boto3", "--control-plane", "127.0.0.1:1", "--endpoint-address", "127.0.0.1:2"])
    assert code == 1
    assert "--client boto3 runs on the demo's own mesh" in capsys.readouterr().out
