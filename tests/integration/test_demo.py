"""``mve demo`` end to end, as a user runs it (kept short with --requests 300)."""

from __future__ import annotations

import pytest

from procs import run_mve

pytestmark = pytest.mark.integration


def test_demo_runs_to_completion_and_shows_the_split():
    result = run_mve(["demo", "--requests", "300", "--concurrency", "4"], timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert "300 requests at weights 50/50" in output
    assert "300 requests at weights 25/75" in output
    assert "Variant1 (cancer-weak)" in output and "Variant2 (cancer-strong)" in output
    assert "%" in output and "p99 ms" in output
    assert "TargetVariant=Variant1: 10 of 10" in output
    assert "the control plane's metrics (GetMetricStatistics" in output
    assert "feedback: the true labels of 600 requests" in output
    assert "Experiment report: demo-cancer-" in output and "Variants: quality" in output
    assert "Sample ratio:" in output
    assert "winner by the experiment report: Variant2" in output
    assert "moved to the winner Variant2 in" in output and "requests during the update, 0 failed" in output
    assert "cleanup:" not in output  # everything it made was deleted


def test_demo_runs_on_the_real_boto3_at_the_http_faces():
    result = run_mve(["demo", "--client", "boto3", "--requests", "100", "--concurrency", "4"], timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert "client boto3 " in output and "signed with the access key in" in output
    assert "100 requests at weights 50/50" in output and "100 requests at weights 25/75" in output
    assert "TargetVariant=Variant1: 10 of 10" in output
    assert "the control plane's metrics (GetMetricStatistics" in output
    assert "feedback: the true labels of 200 requests" in output
    assert "winner by the experiment report: Variant2" in output
    assert "moved to the winner Variant2 in" in output and "requests during the update, 0 failed" in output
    assert "cleanup:" not in output
