"""The experiments servicer's conversions: timestamps checked, absent figures left unset."""

from __future__ import annotations

import math

import pytest

from mve._proto import experiments_pb2 as pb
from mve.control import experiment_stats as st
from mve.control.experiment_report import VariantReport
from mve.control.experiments_servicer import _seconds, variant_message
from mve.errors import ValidationError


def test_an_invalid_timestamp_is_a_validation_error_naming_the_field():
    request = pb.SendFeedbackRequest(feedback=[pb.Feedback(inference_id="a")])
    request.feedback[0].observation_time.nanos = -1
    with pytest.raises(ValidationError, match=r"Feedback\[0\].ObservationTime is not a valid timestamp"):
        _seconds(request.feedback[0], "observation_time", "Feedback[0].ObservationTime")
    report = pb.GetExperimentReportRequest()
    assert _seconds(report, "start_time", "StartTime") is None
    report.start_time.seconds = 1_800_000_000
    assert _seconds(report, "start_time", "StartTime") == 1_800_000_000


def test_absent_figures_stay_unset():
    report = VariantReport("A", False, 1.0, invocations=3, error_rate=st.Estimate(0.0, 0.0, 0.5, 3))
    message = variant_message(report)
    assert message.invocations == 3 and message.error_rate.ci_high == 0.5
    assert message.model_latency_p99_us == 0.0 and math.isnan(report.latency_p99_us)
    for field in ("accuracy", "precision", "roc_auc", "mean_reward"):
        assert not message.HasField(field)
    quality = st.Classification(st.Estimate(0.9, 0.8, 0.95, 10), 0.5, 0.6, 0.55, None)
    report.quality = quality
    message = variant_message(report)
    assert message.accuracy.value == 0.9 and message.f1 == 0.55 and not message.HasField("roc_auc")
