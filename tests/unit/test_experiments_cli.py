"""``mve report``, ``mve feedback``, ``mve bandit`` and the experiment flags of ``mve endpoint-config
create``: the pure parsing without a server, the verbs against in-test gRPC servers on 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import re
import sys
from concurrent import futures
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from experiment_reports import T0, FakeExperiments

from mve._proto import control_pb2, control_pb2_grpc, experiments_pb2_grpc
from mve.cli import main
from mve.commands import UsageError
from mve.commands_experiments_input import (
    MAX_FEEDBACK_PER_CALL,
    parse_data_capture,
    parse_duration,
    read_feedback,
    window_params,
)
from mve.sdk import experiments as sdk_experiments

IMAGE = '<img src="data:image/png;base64,'

# ---------------------------------------------------------------- pure


def test_durations_and_the_window():
    assert parse_duration("90s") == timedelta(seconds=90) and parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("1.5h") == timedelta(minutes=90) and parse_duration("2d") == timedelta(days=2)
    assert parse_duration("45") == timedelta(seconds=45)
    for bad in ("0", "1w", "-1h", "h", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)
    end = T0 + timedelta(hours=3)
    args = argparse.Namespace(start=None, since=timedelta(hours=1), end=end)
    assert window_params(args) == {"StartTime": T0 + timedelta(hours=2), "EndTime": end}
    args = argparse.Namespace(start=None, since=timedelta(hours=1), end=None)
    assert window_params(args, now=end) == {"StartTime": T0 + timedelta(hours=2)}
    assert window_params(argparse.Namespace(start=T0, since=None, end=None)) == {"StartTime": T0}
    assert window_params(argparse.Namespace(start=None, since=None, end=None)) == {}


def test_data_capture_flag(tmp_path):
    assert parse_data_capture(f"dest={tmp_path}") == {
        "EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": str(tmp_path),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
    assert parse_data_capture("dest=file:///var/capture,sampling=20,modes=Output,csv=text/csv,csv=text/plain,"
                              "json=application/json,enable=false") == {
        "EnableCapture": False, "InitialSamplingPercentage": 20, "DestinationS3Uri": "file:///var/capture",
        "CaptureOptions": [{"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv", "text/plain"],
                                     "JsonContentTypes": ["application/json"]}}
    assert parse_data_capture("dest=rel/dir")["DestinationS3Uri"].startswith("/")  # made absolute, as --model-data
    for bad in ("sampling=5", "dest=a,dest=b", "dest=a,modes=Both", "dest=a,sampling=x", "dest=a,kms=k",
                "dest=a,enable=maybe", "dest="):
        with pytest.raises(UsageError):
            parse_data_capture(bad)


def test_feedback_files_are_read_in_batches_with_their_line_numbers(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text('{"InferenceId": "a", "GroundTruthLabels": [1]}\n\n{"InferenceId": "b", "Reward": 0}\n'
                    '{"InferenceId": "c", "Reward": 1, "GroundTruthLabels": ["x"]}\n')
    assert list(read_feedback(path, 2)) == [
        ([{"InferenceId": "a", "GroundTruthLabels": [1]}, {"InferenceId": "b", "Reward": 0}], [1, 3]),
        ([{"InferenceId": "c", "Reward": 1, "GroundTruthLabels": ["x"]}], [4])]
    for line, message in (('[1]', "must be a JSON object"), ('{"InferenceId": "a"}', "give GroundTruthLabels"),
                          ('{"Reward": 1}', "InferenceId is missing"), ('{"InferenceId": "a", "Label": 1}',
                                                                        "unknown key(s) Label"),
                          ('{"InferenceId": "a", "GroundTruthLabels": 1}', "must be a list"), ("{", "not valid JSON")):
        path.write_text('{"InferenceId": "ok", "Reward": 1}\n' + line + "\n")
        with pytest.raises(UsageError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)):
            list(read_feedback(path, 10))
    assert MAX_FEEDBACK_PER_CALL == sdk_experiments.MAX_FEEDBACK_PER_CALL


# ---------------------------------------------------------------- against in-test servers


class FakeControl(control_pb2_grpc.EndpointControlServicer):
    """Keeps CreateEndpointConfig requests; describes an endpoint with capture and one bandit change."""

    def __init__(self):
        self.created: list = []

    def CreateEndpointConfig(self, request, context):  # noqa: N802 - gRPC's name
        self.created.append(request)
        return control_pb2.CreateEndpointConfigResponse(endpoint_config_arn="arn:cfg")

    def DescribeEndpoint(self, request, context):  # noqa: N802
        stamp = control_pb2.DescribeEndpointResponse().creation_time
        stamp.FromDatetime(T0)
        return control_pb2.DescribeEndpointResponse(
            endpoint_name=request.endpoint_name, endpoint_status="InService",
            production_variants=[control_pb2.ProductionVariantSummary(variant_name="Variant1", current_weight=0.25)],
            data_capture_config=control_pb2.DataCaptureConfigSummary(
                enable_capture=True, capture_status="Started", current_sampling_percentage=20,
                destination_s3_uri="/var/capture"),
            automatic_weight_changes=[control_pb2.WeightChange(
                time=stamp, source="bandit", reason="P(best) Variant2 0.9",
                weights=[control_pb2.VariantWeight(variant_name="Variant1", weight=0.25),
                         control_pb2.VariantWeight(variant_name="Variant2", weight=0.75)])])


@pytest.fixture(scope="module")
def control_plane():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    experiments, control = FakeExperiments(), FakeControl()
    experiments_pb2_grpc.add_ExperimentsServicer_to_server(experiments, server)
    control_pb2_grpc.add_EndpointControlServicer_to_server(control, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", experiments, control
    server.stop(grace=None)


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")


def test_report_table(control_plane, capsys):
    address, fake, _ = control_plane
    assert main(["report", "ab", "--since", "2h", "--end", "2026-03-01T15:00:00Z", "--baseline", "Variant1",
                 "--confidence", "0.99", "--positive-label", "1", "--label-output", "label",
                 "--control-plane", address]) == 0
    request = fake.requests["GetExperimentReport"][-1]
    assert request.start_time.ToDatetime(tzinfo=timezone.utc) == datetime(2026, 3, 1, 13, tzinfo=timezone.utc)
    assert request.end_time.ToDatetime(tzinfo=timezone.utc) == datetime(2026, 3, 1, 15, tzinfo=timezone.utc)
    assert (request.baseline_variant, request.confidence_level, request.positive_label, request.label_output) == (
        "Variant1", 0.99, "1", "label")
    assert request.score_output == "" and request.series_points == 0
    out = capsys.readouterr().out
    assert "Experiment report: ab, 2026-03-01 12:00:00Z to 2026-03-01 13:00:00Z; baseline Variant1" in out
    for text in ("Variant1", "Variant2", "Shadow1 (shadow)", "90.0% (87.0–93.0)", "97.0% (95.0–98.0)", "50.5%",
                 "0.8", "2.5", "0.975", "0.990", "480/500", "+7.0 pp (+4.0, +10.0)", "<0.0001", "0.0002",
                 "significant", "two-proportion z-test"):
        assert text in out, text
    assert "Sample ratio: OK (χ² = 0.1, p = 0.75): Variant1 500 (expected 505), Variant2 510 (expected 505)." in out
    assert "Automatic weight changes" in out and "Variant1 0.300, Variant2 0.700" in out
    assert "note: ROC AUC of Variant1: no score output" in out
    assert "note: 3 feedback entries in the window matched no captured invocation" in out


def test_report_flags_a_sample_ratio_mismatch(control_plane, capsys):
    address, _, _ = control_plane
    assert main(["report", "skewed", "--control-plane", address]) == 0
    out = capsys.readouterr().out
    assert "SAMPLE RATIO MISMATCH (χ² = 160, p = <0.0001 < 0.001): Variant1 700 (expected 500)" in out
    assert "The split does not match the weights (p < 0.001): check TargetVariant" in out
    assert "cannot be trusted" in out and "Sample ratio: OK" not in out
    assert main(["report", "zeroed", "--control-plane", address]) == 0
    assert "SAMPLE RATIO MISMATCH (χ² = inf, p = <0.0001 < 0.001)" in capsys.readouterr().out
    assert main(["report", "zeroed", "--json", "--control-plane", address]) == 0
    check = json.loads(capsys.readouterr().out)["SampleRatio"]  # strict JSON: no Infinity
    assert check["ChiSquare"] is None and check["Mismatch"] is True


def test_report_json(control_plane, capsys):
    address, fake, _ = control_plane
    assert main(["report", "ab", "--json", "--start", "2026-03-01T12:00:00Z", "--series-points", "3",
                 "--control-plane", address]) == 0
    request = fake.requests["GetExperimentReport"][-1]
    assert request.start_time.ToDatetime(tzinfo=timezone.utc) == T0 and not request.HasField("end_time")
    assert request.series_points == 3
    report = json.loads(capsys.readouterr().out)
    assert "ResponseMetadata" not in report and report["StartTime"] == "2026-03-01T12:00:00+00:00"
    assert [v["VariantName"] for v in report["Variants"]] == ["Variant1", "Variant2", "Shadow1"]
    assert report["Variants"][1]["Comparisons"][0]["Significant"] is True
    assert report["SampleRatio"]["Mismatch"] is False and report["UnmatchedFeedback"] == 3


def test_report_html_is_one_self_contained_file_with_every_plot(control_plane, capsys, tmp_path):
    address, _, _ = control_plane
    page = tmp_path / "report.html"
    assert main(["report", "ab", "--json", "--html", str(page), "--control-plane", address]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["EndpointName"] == "ab"  # stdout stays JSON
    assert f"wrote {page}" in captured.err
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count(IMAGE) == 4  # share, accuracy, reward, error rate
    for alt in ("Traffic share over time", "Accuracy", "Mean reward", "Error rate"):
        assert f'alt="{alt}"' in text
    for name in ("Variant1", "Variant2", "Shadow1 (shadow)"):
        assert name in text
    assert "+7.0 pp (+4.0, +10.0)" in text and 'class="significant"' in text and 'class="srm-ok"' in text
    assert "Automatic weight changes" in text and "ROC AUC of Variant1: no score output" in text
    assert 'src="http' not in text and "<script" not in text and "<link" not in text


def test_report_html_without_series_and_with_a_mismatch(control_plane, capsys, tmp_path):
    address, _, _ = control_plane
    quiet = tmp_path / "quiet.html"
    assert main(["report", "quiet", "--html", str(quiet), "--control-plane", address]) == 0
    text = quiet.read_text()
    assert IMAGE not in text and "Traffic share over time: no data in this window." in text
    skewed = tmp_path / "skewed.html"
    assert main(["report", "skewed", "--html", str(skewed), "--control-plane", address]) == 0
    assert 'class="srm-mismatch">SAMPLE RATIO MISMATCH' in skewed.read_text()


def test_html_plots_leave_out_buckets_without_traffic():
    from mve.report_html import metric_plot, share_plot

    point = {"Time": T0 + timedelta(minutes=1), "Invocations": 0, "TrafficShare": 0.0,
             "Accuracy": {"Value": 0.9, "CiLow": 0.8, "CiHigh": 0.95, "Count": 10}}
    report = {"StartTime": T0, "EndTime": T0 + timedelta(hours=1), "ConfidenceLevel": 0.95,
              "Variants": [{"VariantName": "Variant1"}], "Series": [{"VariantName": "Variant1", "Points": [point]}]}
    assert share_plot(report) is None  # no invocations: no share to draw, rather than a line at 0%
    assert metric_plot(report, "Accuracy", "Accuracy", "accuracy (%)", True)  # one point is drawn
    assert metric_plot(report, "MeanReward", "Mean reward", "mean reward", False) is None


def test_report_html_without_matplotlib_names_the_extra(control_plane, capsys, monkeypatch, tmp_path):
    address, fake, _ = control_plane
    calls = len(fake.requests.get("GetExperimentReport", []))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["report", "ab", "--html", str(tmp_path / "r.html"), "--control-plane", address]) == 1
    err = capsys.readouterr().err
    assert err.startswith("MissingPlottingLibrary: ") and "pip install 'mve[report]'" in err
    assert len(fake.requests.get("GetExperimentReport", [])) == calls and not list(tmp_path.iterdir())


def test_feedback_from_a_file_goes_in_calls_of_at_most_1000(control_plane, capsys, tmp_path):
    address, fake, _ = control_plane
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(json.dumps({"InferenceId": f"id-{i}", "GroundTruthLabels": [i % 2], "Reward": i % 2})
                            + "\n" for i in range(2500)))
    before = len(fake.requests.get("SendFeedback", []))
    assert main(["feedback", "ab", "--file", str(path), "--control-plane", address]) == 0
    assert "accepted 2500 of 2500 feedback entries for ab (3 calls)" in capsys.readouterr().out
    calls = fake.requests["SendFeedback"][before:]
    assert [len(c.feedback) for c in calls] == [1000, 1000, 500]
    assert calls[2].feedback[-1].inference_id == "id-2499" and list(calls[2].feedback[-1].ground_truth_labels) == ["1"]
    assert calls[0].feedback[0].HasField("reward") and calls[0].feedback[0].reward == 0.0

    assert main(["feedback", "ab", "--file", str(path), "--batch-size", "700", "--json",
                 "--control-plane", address]) == 0
    assert json.loads(capsys.readouterr().out) == {"Accepted": 2500}
    assert [len(c.feedback) for c in fake.requests["SendFeedback"][-4:]] == [700, 700, 700, 400]


def test_feedback_from_flags(control_plane, capsys):
    address, fake, _ = control_plane
    assert main(["feedback", "ab", "--inference-id", "id-7", "--label", "1", "0", "--label", "benign",
                 "--reward", "0.5", "--observation-time", "2026-03-01T12:00:00Z", "--control-plane", address]) == 0
    (entry,) = fake.requests["SendFeedback"][-1].feedback
    assert (entry.inference_id, list(entry.ground_truth_labels), entry.reward) == ("id-7", ["1", "0", "benign"], 0.5)
    assert entry.observation_time.ToDatetime(tzinfo=timezone.utc) == T0
    assert "accepted 1 of 1 feedback entries for ab (1 call)" in capsys.readouterr().out
    assert main(["feedback", "ab", "--inference-id", "id-8", "--reward", "1", "--control-plane", address]) == 0
    (entry,) = fake.requests["SendFeedback"][-1].feedback
    assert list(entry.ground_truth_labels) == [] and entry.reward == 1.0


def test_feedback_errors_name_the_line_and_send_nothing(control_plane, capsys, tmp_path):
    address, fake, _ = control_plane
    before = len(fake.requests.get("SendFeedback", []))
    path = tmp_path / "bad.jsonl"
    path.write_text('{"InferenceId": "a", "Reward": 1}\n{"InferenceId": "b", "Reward": "high"}\n')
    assert main(["feedback", "ab", "--file", str(path), "--control-plane", address]) == 2
    assert f"Invalid type for parameter {path}:2.Reward, value: 'high'" in capsys.readouterr().err
    path.write_text('{"InferenceId": "a", "Reward": 1}\nnot json\n')
    assert main(["feedback", "ab", "--file", str(path), "--control-plane", address]) == 2
    assert capsys.readouterr().err.startswith(f"UsageError: {path}:2: not valid JSON")
    assert main(["feedback", "ab", "--inference-id", "x", "--control-plane", address]) == 2
    assert "--inference-id needs --label" in capsys.readouterr().err
    assert main(["feedback", "ab", "--file", str(path), "--reward", "1", "--control-plane", address]) == 2
    assert "go with --inference-id, not --file" in capsys.readouterr().err
    assert len(fake.requests.get("SendFeedback", [])) == before
    # a bad line after a full batch: the batch before it was sent, and the error says so
    path.write_text('{"InferenceId": "a", "Reward": 1}\n{"InferenceId": "b", "Reward": 0}\n{"InferenceId": "c"}\n')
    assert main(["feedback", "ab", "--file", str(path), "--batch-size", "2", "--control-plane", address]) == 2
    err = capsys.readouterr().err
    assert err.startswith("2 of 2 entries were accepted in 1 call before this error:\nUsageError: ")
    assert f"{path}:3: give GroundTruthLabels, a Reward or both" in err
    assert len(fake.requests["SendFeedback"]) == before + 1
    assert main(["feedback", "missing", "--inference-id", "x", "--reward", "1", "--control-plane", address]) == 1
    assert capsys.readouterr().err.startswith('ValidationException: Could not find endpoint "missing".')


def test_bandit_put_describe_delete(control_plane, capsys):
    address, fake, _ = control_plane
    assert main(["bandit", "put", "ab", "--interval", "10", "--floor", "0.1", "--max-change", "0.5",
                 "--min-rewards", "5", "--window", "600", "--control-plane", address]) == 0
    policy = fake.requests["PutBanditPolicy"][-1].policy
    assert (policy.endpoint_name, policy.interval_in_seconds, policy.exploration_floor, policy.max_weight_change,
            policy.min_rewards_per_variant, policy.window_in_seconds) == ("ab", 10, 0.1, 0.5, 5, 600)
    out = capsys.readouterr().out
    assert "Bandit policy of ab" in out and "30s between updates" in out and "waiting: Variant2 has 3 of 20" in out

    assert main(["bandit", "put", "ab", "--json", "--control-plane", address]) == 0
    policy = fake.requests["PutBanditPolicy"][-1].policy
    assert (policy.interval_in_seconds, policy.max_weight_change) == (0, 0.0)  # left to the service's defaults
    assert json.loads(capsys.readouterr().out) == {}

    assert main(["bandit", "describe", "ab", "--json", "--control-plane", address]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["Policy"]["ExplorationFloor"] == 0.05 and described["Policy"]["CreationTime"].startswith("2026")
    assert main(["bandit", "put", "ab", "--floor", "0", "--control-plane", address]) == 0
    policy = fake.requests["PutBanditPolicy"][-1].policy
    assert policy.HasField("exploration_floor") and policy.exploration_floor == 0.0
    capsys.readouterr()
    assert main(["bandit", "delete", "ab", "--control-plane", address]) == 0
    assert fake.requests["DeleteBanditPolicy"][-1].endpoint_name == "ab"
    assert "deleted the bandit policy of ab" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["report", "ab", "--start", "2026-03-01T12:00:00Z", "--since", "1h"],
    ["report", "ab", "--confidence", "2"],
    ["report", "ab", "--since", "soon"],
    ["feedback", "ab"],
    ["feedback", "ab", "--file", "f", "--inference-id", "x"],
    ["feedback", "ab", "--inference-id", "x", "--batch-size", "5000"],
    ["feedback", "ab", "--inference-id", "x", "--reward", "nan"],
    ["bandit", "put", "ab", "--floor", "0.9"],
    ["bandit", "put", "ab", "--window", "10"],
    ["bandit", "stop", "ab"],
])
def test_bad_flags_exit_2(argv):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2


def test_endpoint_config_create_with_shadows_and_capture(control_plane, capsys, tmp_path):
    address, _, control = control_plane
    assert main(["endpoint-config", "create", "cfg", "--variant", "name=Variant1,model=weak",
                 "--shadow-variant", "name=Shadow1,model=strong,weight=0.5", "--shadow-variant",
                 "name=Shadow2,model=mlp,weight=0.1", "--data-capture", f"dest={tmp_path},sampling=20,modes=Input",
                 "--control-plane", address]) == 0
    request = control.created[-1]
    assert [(v.variant_name, v.model_name, v.initial_variant_weight) for v in request.shadow_production_variants] == [
        ("Shadow1", "strong", 0.5), ("Shadow2", "mlp", 0.1)]
    capture = request.data_capture_config
    assert (capture.enable_capture, capture.initial_sampling_percentage, capture.destination_s3_uri,
            list(capture.capture_modes)) == (True, 20, str(tmp_path), ["Input"])
    assert main(["endpoint-config", "create", "plain", "--variant", "name=Variant1,model=weak",
                 "--control-plane", address]) == 0
    assert not control.created[-1].HasField("data_capture_config")
    assert not control.created[-1].shadow_production_variants
    assert main(["endpoint-config", "create", "bad", "--variant", "name=V1,model=m", "--shadow-variant", "name=S",
                 "--control-plane", address]) == 2
    assert "--shadow-variant 'name=S' needs model=..." in capsys.readouterr().err


def test_endpoint_describe_shows_capture_and_automatic_weight_changes(control_plane, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich cuts table cells at the terminal's width
    address, _, _ = control_plane
    assert main(["endpoint", "describe", "ab", "--control-plane", address]) == 0
    out = capsys.readouterr().out
    assert "Started: 20% of invocations, to /var/capture" in out
    assert "AutomaticWeightChanges" in out and "Variant1 0.25, Variant2 0.75" in out and "P(best) Variant2 0.9" in out
