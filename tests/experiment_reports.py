"""A canned experiment report and a fake ``mve.v1.Experiments`` servicer for the SDK and CLI tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

from mve._proto import experiments_pb2 as pb
from mve._proto import experiments_pb2_grpc
from mve.errors import NotFound, ResourceNotFound, ValidationError, to_status

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _estimate(value: float, width: float, count: int) -> pb.Estimate:
    return pb.Estimate(value=value, ci_low=max(0.0, value - width), ci_high=min(1.0, value + width), count=count)


def _series(variant: str, accuracy: float, error_rate: float) -> pb.VariantSeries:
    """Three one-minute points whose intervals narrow as the counts grow."""
    points = []
    for minute in (1, 2, 3):
        count = 10 * minute
        points.append(pb.SeriesPoint(
            time=_ts(T0 + timedelta(minutes=minute)), invocations=10, traffic_share=0.5,
            accuracy=_estimate(accuracy, 0.3 / minute, count), mean_reward=_estimate(accuracy, 0.3 / minute, count),
            error_rate=_estimate(error_rate, 0.05 / minute, count)))
    return pb.VariantSeries(variant_name=variant, points=points)


def canned_report(endpoint: str) -> pb.GetExperimentReportResponse:
    """A two-variant report: Variant2 better and significant, one shadow, one bandit change.

    Endpoint "skewed" has a sample-ratio mismatch, "zeroed" one with an infinite chi-square (a
    variant of weight 0 got invocations); endpoint "quiet" has no series at all.
    """
    baseline = pb.VariantReport(
        variant_name="Variant1", current_weight=0.5, invocations=500, traffic_share=0.5, invocation_4xx_errors=1,
        invocation_5xx_errors=2, error_rate=pb.Estimate(value=0.006, ci_low=0.001, ci_high=0.017, count=500),
        model_latency_mean_us=900.0, model_latency_p50_us=800.0, model_latency_p90_us=1500.0,
        model_latency_p99_us=2500.0, captured=500, with_feedback=480,
        accuracy=pb.Estimate(value=0.9, ci_low=0.87, ci_high=0.93, count=480), precision=0.91, recall=0.92, f1=0.915,
        mean_reward=pb.Estimate(value=0.9, ci_low=0.87, ci_high=0.93, count=480))
    challenger = pb.VariantReport(
        variant_name="Variant2", current_weight=0.5, invocations=510, traffic_share=0.505,
        error_rate=pb.Estimate(value=0.0, ci_low=0.0, ci_high=0.007, count=510),
        model_latency_p50_us=700.0, model_latency_p99_us=2000.0, captured=510, with_feedback=500,
        accuracy=pb.Estimate(value=0.97, ci_low=0.95, ci_high=0.98, count=500), precision=0.97, recall=0.98, f1=0.975,
        roc_auc=0.99, comparisons=[pb.Comparison(
            metric="accuracy", test="two-proportion z-test", difference=0.07, ci_low=0.04, ci_high=0.1,
            p_value=1e-6, always_valid_p_value=2e-4, significant=True)])
    shadow = pb.VariantReport(variant_name="Shadow1", shadow=True, current_weight=0.5, invocations=250)
    report = pb.GetExperimentReportResponse(
        endpoint_name=endpoint, start_time=_ts(T0), end_time=_ts(T0 + timedelta(hours=1)),
        baseline_variant="Variant1", confidence_level=0.95, variants=[baseline, challenger, shadow],
        sample_ratio=pb.SampleRatioCheck(applicable=True, chi_square=0.1, p_value=0.75, mismatch=False,
                                         variant_names=["Variant1", "Variant2"], observed=[500, 510],
                                         expected=[505, 505]),
        series=[_series("Variant1", 0.9, 0.006), _series("Variant2", 0.97, 0.0)],
        weight_changes=[pb.BanditWeightChange(time=_ts(T0 + timedelta(minutes=5)), source="bandit",
                                              variant_names=["Variant1", "Variant2"], weights=[0.3, 0.7],
                                              reason="P(best): Variant2 0.98")],
        unmatched_feedback=3, notes=["ROC AUC of Variant1: no score output"])
    if endpoint == "skewed":
        report.sample_ratio.CopyFrom(pb.SampleRatioCheck(
            applicable=True, chi_square=160.0, p_value=1e-36, mismatch=True, variant_names=["Variant1", "Variant2"],
            observed=[700, 300], expected=[500, 500],
            note="the split does not match the weights (p < 0.001): check TargetVariant or sticky RoutingKey traffic"))
    if endpoint == "zeroed":  # a variant of weight 0 got invocations: chi-square is infinite
        report.sample_ratio.CopyFrom(pb.SampleRatioCheck(
            applicable=True, chi_square=float("inf"), p_value=0.0, mismatch=True, variant_names=["Variant1", "Variant2"],
            observed=[700, 3], expected=[703, 0], note="Variant2 got invocations while its weight was 0"))
    if endpoint == "quiet":
        del report.series[:]
    return report


class FakeExperiments(experiments_pb2_grpc.ExperimentsServicer):
    """Records every request; endpoint "missing" is SageMaker's ValidationException 'Could not find
    endpoint', endpoint "no-policy" has no bandit policy (ResourceNotFound), a bad confidence level refused."""

    def __init__(self):
        self.requests: dict[str, list] = {}
        self.policy = None

    def _log(self, name: str, request, context) -> None:
        self.requests.setdefault(name, []).append(request)
        endpoint = request.policy.endpoint_name if name == "PutBanditPolicy" else request.endpoint_name
        if endpoint == "missing":
            context.abort_with_status(to_status(NotFound('Could not find endpoint "missing".')))
        if endpoint == "no-policy" and name.endswith("BanditPolicy") and name != "PutBanditPolicy":
            context.abort_with_status(to_status(ResourceNotFound("Endpoint no-policy has no bandit policy.")))

    def SendFeedback(self, request, context):  # noqa: N802 - gRPC's name
        self._log("SendFeedback", request, context)
        return pb.SendFeedbackResponse(accepted=len(request.feedback))

    def GetExperimentReport(self, request, context):  # noqa: N802
        self._log("GetExperimentReport", request, context)
        if request.confidence_level and not 0.5 <= request.confidence_level <= 0.999:
            context.abort_with_status(to_status(ValidationError("ConfidenceLevel must be 0.5-0.999.")))
        return canned_report(request.endpoint_name)

    def PutBanditPolicy(self, request, context):  # noqa: N802
        self._log("PutBanditPolicy", request, context)
        self.policy = request.policy
        return pb.PutBanditPolicyResponse()

    def DescribeBanditPolicy(self, request, context):  # noqa: N802
        self._log("DescribeBanditPolicy", request, context)
        policy = pb.BanditPolicy(endpoint_name=request.endpoint_name, interval_in_seconds=30, exploration_floor=0.05,
                                 max_weight_change=0.2, min_rewards_per_variant=20, window_in_seconds=3600,
                                 creation_time=_ts(T0), last_evaluation="waiting: Variant2 has 3 of 20 rewards")
        return pb.DescribeBanditPolicyResponse(policy=policy)

    def DeleteBanditPolicy(self, request, context):  # noqa: N802
        self._log("DeleteBanditPolicy", request, context)
        return pb.DeleteBanditPolicyResponse()
