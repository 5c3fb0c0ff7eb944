"""mve.client("experiments") against an in-test gRPC server: validation before any call, request
mapping (labels as text, optional values unset unless given), the report's dict shape, errors."""

from __future__ import annotations

from concurrent import futures
from datetime import datetime, timedelta, timezone

import grpc
import numpy as np
import pytest
from experiment_reports import T0, FakeExperiments

import mve
from mve._proto import experiments_pb2_grpc
from mve.sdk import ParamValidationError
from mve.sdk.experiments_convert import build_request, label_text, response_key

NOWHERE = "127.0.0.1:1"  # nothing listens: a call that got past validation would fail to connect


@pytest.fixture(scope="module")
def fake():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = FakeExperiments()
    experiments_pb2_grpc.add_ExperimentsServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with mve.client("experiments", address=f"127.0.0.1:{port}") as exp:
        yield exp, servicer
    server.stop(grace=None)


# ---------------------------------------------------------------- the client and its parameters


def test_the_client_is_registered_on_the_control_planes_address(monkeypatch):
    monkeypatch.setenv("MVE_CONTROL_PLANE", "127.0.0.1:7171")
    exp = mve.client("experiments", region_name="us-east-1")
    assert exp.address == "127.0.0.1:7171" and exp.service_name == "experiments"
    for method in ("send_feedback", "get_experiment_report", "put_bandit_policy", "describe_bandit_policy",
                   "delete_bandit_policy"):
        assert getattr(exp, method).__doc__


def test_bad_parameters_are_all_reported_before_any_call():
    exp = mve.client("experiments", address=NOWHERE)
    with pytest.raises(ParamValidationError) as caught:
        exp.send_feedback(EndpointName="", Feedback=[{"GroundTruthLabels": "1", "Reward": True, "Label": 1},
                                                     {"InferenceId": "a", "GroundTruthLabels": [[1]]}])
    report = caught.value.report
    assert "Invalid length for parameter EndpointName, value: 0, valid min length: 1" in report
    assert 'Missing required parameter in Feedback[0]: "InferenceId"' in report
    assert "Invalid type for parameter Feedback[0].GroundTruthLabels, value: '1'" in report
    assert "Invalid type for parameter Feedback[0].Reward, value: True" in report
    assert 'Unknown parameter in Feedback[0]: "Label"' in report
    assert "Invalid type for parameter Feedback[1].GroundTruthLabels[0], value: [1]" in report

    with pytest.raises(ParamValidationError, match="Invalid length for parameter Feedback, value: 0, valid min length: 1"):
        exp.send_feedback(EndpointName="ab", Feedback=[])
    with pytest.raises(ParamValidationError, match="a label must be finite"):
        exp.send_feedback(EndpointName="ab", Feedback=[{"InferenceId": "a", "GroundTruthLabels": [float("nan")]}])
    with pytest.raises(ParamValidationError, match="a reward must be finite"):
        exp.send_feedback(EndpointName="ab", Feedback=[{"InferenceId": "a", "Reward": float("inf")}])
    with pytest.raises(ParamValidationError) as caught:
        exp.get_experiment_report(EndpointName="ab", StartTime="yesterday", SeriesPoints=1.5, Window=3600)
    report = caught.value.report
    assert "Invalid type for parameter StartTime, value: 'yesterday'" in report
    assert "Invalid type for parameter SeriesPoints, value: 1.5" in report
    assert 'Unknown parameter in input: "Window"' in report
    with pytest.raises(ParamValidationError, match='Missing required parameter in input: "EndpointName"'):
        exp.put_bandit_policy(IntervalInSeconds=30)
    with pytest.raises(ParamValidationError, match="Invalid type for parameter MinRewardsPerVariant, value: '20'"):
        exp.put_bandit_policy(EndpointName="ab", MinRewardsPerVariant="20")
    for method in (exp.describe_bandit_policy, exp.delete_bandit_policy):
        with pytest.raises(ParamValidationError, match='Missing required parameter in input: "EndpointName"'):
            method()


def test_labels_are_sent_as_text():
    # the control plane's rules for predicted labels (mve.control.capture_records.label_text)
    assert [label_text(v) for v in (1, 1.0, np.int64(0), np.float32(2.0), 0.25, "benign", True, np.bool_(False))] == [
        "1", "1", "0", "2", "0.25", "benign", "1", "0"]
    with pytest.raises(ValueError):
        label_text(float("nan"))
    from mve.control.capture_records import label_text as predicted_label_text

    for value in (1, 1.0, np.int64(3), np.float64(2.0), 0.25, "benign", True, np.bool_(False)):
        assert label_text(value) == predicted_label_text(value), value
    assert response_key("invocation_4xx_errors") == "Invocation4XXErrors"
    assert response_key("model_latency_p99_us") == "ModelLatencyP99Microseconds"
    assert response_key("always_valid_p_value") == "AlwaysValidPValue" and response_key("ci_low") == "CiLow"


def test_optional_values_are_left_unset_unless_given():
    bare = build_request("GetExperimentReport", {"EndpointName": "ab"})
    assert not bare.HasField("start_time") and not bare.HasField("end_time")
    assert (bare.baseline_variant, bare.confidence_level, bare.positive_label, bare.series_points) == ("", 0.0, "", 0)
    feedback = build_request("SendFeedback", {"EndpointName": "ab", "Feedback": [{"InferenceId": "a",
                                                                                  "GroundTruthLabels": [1]}]})
    (entry,) = feedback.feedback
    assert not entry.HasField("reward") and not entry.HasField("observation_time")
    zero = build_request("SendFeedback", {"EndpointName": "ab", "Feedback": [{"InferenceId": "a", "Reward": 0}]})
    assert zero.feedback[0].HasField("reward") and zero.feedback[0].reward == 0.0
    policy = build_request("PutBanditPolicy", {"EndpointName": "ab"}).policy
    assert (policy.endpoint_name, policy.interval_in_seconds, policy.max_weight_change) == ("ab", 0, 0.0)


# ---------------------------------------------------------------- calls


def test_send_feedback_request_and_response(fake):
    exp, servicer = fake
    observed = datetime(2026, 3, 1, 13, 0, 0)  # naive: UTC
    response = exp.send_feedback(EndpointName="ab", Feedback=[
        {"InferenceId": "id-1", "GroundTruthLabels": [1, 0.0, "benign"], "Reward": 1},
        {"InferenceId": "id-2", "Reward": np.float64(0.5), "ObservationTime": observed},
        {"InferenceId": "id-3", "GroundTruthLabels": [np.int64(1)], "ObservationTime": "2026-03-01T13:00:00Z"},
    ])
    assert response["Accepted"] == 3 and response["ResponseMetadata"]["HTTPStatusCode"] == 200
    first, second, third = servicer.requests["SendFeedback"][-1].feedback
    assert (first.inference_id, list(first.ground_truth_labels), first.reward) == ("id-1", ["1", "0", "benign"], 1.0)
    assert not first.HasField("observation_time")
    assert second.reward == 0.5 and list(second.ground_truth_labels) == []
    assert second.observation_time.ToDatetime(tzinfo=timezone.utc) == observed.replace(tzinfo=timezone.utc)
    assert list(third.ground_truth_labels) == ["1"] and not third.HasField("reward")
    assert third.observation_time.ToDatetime(tzinfo=timezone.utc) == datetime(2026, 3, 1, 13, tzinfo=timezone.utc)


def test_get_experiment_report_request(fake):
    exp, servicer = fake
    exp.get_experiment_report(EndpointName="ab", StartTime=T0, EndTime=T0 + timedelta(hours=2),
                              BaselineVariant="Variant2", ConfidenceLevel=0.99, LabelOutput="label",
                              ScoreOutput="probabilities", PositiveLabel=1, SeriesPoints=30)
    request = servicer.requests["GetExperimentReport"][-1]
    assert request.start_time.ToDatetime(tzinfo=timezone.utc) == T0
    assert request.end_time.ToDatetime(tzinfo=timezone.utc) == T0 + timedelta(hours=2)
    assert (request.baseline_variant, request.confidence_level, request.label_output, request.score_output,
            request.positive_label, request.series_points) == ("Variant2", 0.99, "label", "probabilities", "1", 30)


def test_get_experiment_report_response_shape(fake):
    exp, _ = fake
    report = exp.get_experiment_report(EndpointName="ab")
    assert report["EndpointName"] == "ab" and report["BaselineVariant"] == "Variant1"
    assert report["StartTime"] == T0 and report["StartTime"].tzinfo is timezone.utc
    assert report["ConfidenceLevel"] == 0.95 and report["UnmatchedFeedback"] == 3
    baseline, challenger, shadow = report["Variants"]
    assert baseline == {
        "VariantName": "Variant1", "Shadow": False, "CurrentWeight": 0.5, "Invocations": 500, "TrafficShare": 0.5,
        "Invocation4XXErrors": 1, "Invocation5XXErrors": 2, "InvocationModelErrors": 0,
        "ErrorRate": {"Value": 0.006, "CiLow": 0.001, "CiHigh": 0.017, "Count": 500},
        "ModelLatencyMeanMicroseconds": 900.0, "ModelLatencyP50Microseconds": 800.0,
        "ModelLatencyP90Microseconds": 1500.0, "ModelLatencyP99Microseconds": 2500.0,
        "Captured": 500, "WithFeedback": 480,
        "Accuracy": {"Value": 0.9, "CiLow": 0.87, "CiHigh": 0.93, "Count": 480},
        "Precision": 0.91, "Recall": 0.92, "F1": 0.915,
        "MeanReward": {"Value": 0.9, "CiLow": 0.87, "CiHigh": 0.93, "Count": 480},
        "Comparisons": []}
    assert "RocAuc" not in baseline and challenger["RocAuc"] == 0.99 and "MeanReward" not in challenger
    assert challenger["Comparisons"] == [{
        "Metric": "accuracy", "Test": "two-proportion z-test", "Difference": 0.07, "CiLow": 0.04, "CiHigh": 0.1,
        "PValue": 1e-6, "AlwaysValidPValue": 2e-4, "Significant": True}]
    # a shadow without feedback: no quality figures at all, and no ErrorRate the server did not send
    assert shadow["Shadow"] is True and not {"Accuracy", "F1", "ErrorRate", "Precision"} & set(shadow)
    assert report["SampleRatio"] == {"Applicable": True, "ChiSquare": 0.1, "PValue": 0.75, "Mismatch": False,
                                     "VariantNames": ["Variant1", "Variant2"], "Observed": [500.0, 510.0],
                                     "Expected": [505.0, 505.0]}
    assert [s["VariantName"] for s in report["Series"]] == ["Variant1", "Variant2"]
    first = report["Series"][0]["Points"][0]
    assert first["Time"] == T0 + timedelta(minutes=1) and (first["Invocations"], first["TrafficShare"]) == (10, 0.5)
    assert first["Accuracy"] == {"Value": 0.9, "CiLow": pytest.approx(0.6), "CiHigh": 1.0, "Count": 10}
    assert set(first) == {"Time", "Invocations", "TrafficShare", "Accuracy", "MeanReward", "ErrorRate"}
    assert report["WeightChanges"] == [{"Time": T0 + timedelta(minutes=5), "Source": "bandit",
                                        "VariantNames": ["Variant1", "Variant2"], "Weights": [0.3, 0.7],
                                        "Reason": "P(best): Variant2 0.98"}]
    assert report["Notes"] == ["ROC AUC of Variant1: no score output"]


def test_bandit_policy_calls(fake):
    exp, servicer = fake
    assert exp.put_bandit_policy(EndpointName="ab", IntervalInSeconds=10, ExplorationFloor=0.1, MaxWeightChange=0.5,
                                 MinRewardsPerVariant=5, WindowInSeconds=600)["ResponseMetadata"]
    policy = servicer.requests["PutBanditPolicy"][-1].policy
    assert (policy.endpoint_name, policy.interval_in_seconds, policy.exploration_floor, policy.max_weight_change,
            policy.min_rewards_per_variant, policy.window_in_seconds) == ("ab", 10, 0.1, 0.5, 5, 600)
    exp.put_bandit_policy(EndpointName="ab", ExplorationFloor=0)  # no floor: sent, not taken for "not given"
    assert servicer.requests["PutBanditPolicy"][-1].policy.HasField("exploration_floor")
    exp.put_bandit_policy(EndpointName="ab")
    assert not servicer.requests["PutBanditPolicy"][-1].policy.HasField("exploration_floor")
    described = exp.describe_bandit_policy(EndpointName="ab")
    assert described["Policy"] == {"EndpointName": "ab", "IntervalInSeconds": 30, "ExplorationFloor": 0.05,
                                   "MaxWeightChange": 0.2, "MinRewardsPerVariant": 20, "WindowInSeconds": 3600,
                                   "CreationTime": T0, "LastEvaluation": "waiting: Variant2 has 3 of 20 rewards"}
    response = exp.delete_bandit_policy(EndpointName="ab")
    assert set(response) == {"ResponseMetadata"}
    assert servicer.requests["DeleteBanditPolicy"][-1].endpoint_name == "ab"


def test_service_errors_are_client_errors(fake):
    exp, _ = fake
    with pytest.raises(exp.exceptions.ResourceNotFound) as caught:
        exp.describe_bandit_policy(EndpointName="no-policy")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFound"
    assert "when calling the DescribeBanditPolicy operation" in str(caught.value)
    with pytest.raises(exp.exceptions.ValidationException, match='Could not find endpoint "missing"') as caught:
        exp.describe_bandit_policy(EndpointName="missing")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(exp.exceptions.ValidationException, match="ConfidenceLevel must be 0.5-0.999"):
        exp.get_experiment_report(EndpointName="ab", ConfidenceLevel=0.2)
    with pytest.raises(exp.exceptions.ClientError):
        exp.put_bandit_policy(EndpointName="missing")
