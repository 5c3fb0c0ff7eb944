"""The gRPC face of the experiments service: ``mve.v1.Experiments``.

Each method converts the request to domain values, makes one `Experiments` call and converts the
result back. Errors are raised as `mve.errors` exceptions; the server's `ErrorInterceptor` maps
them (a missing endpoint is ValidationException, a missing bandit policy ResourceNotFound).
"""

from __future__ import annotations

import math

from google.protobuf import timestamp_pb2

from mve._proto import experiments_pb2 as pb
from mve._proto import experiments_pb2_grpc as pb_grpc
from mve.control import experiment_stats as st
from mve.control.bandit import BanditPolicy
from mve.control.experiment_report import ExperimentReport, SeriesPoint, VariantReport
from mve.control.experiment_sources import WeightChangeView
from mve.control.experiments import Experiments
from mve.control.feedback import FeedbackEntry
from mve.errors import ValidationError


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(round(seconds * 1e9)))
    return stamp


def _seconds(message, field: str, name: str) -> float | None:
    """A Timestamp field in seconds, None when it is not set; ValidationError (naming it) when invalid."""
    if not message.HasField(field):
        return None
    try:
        return getattr(message, field).ToNanoseconds() / 1e9
    except ValueError as error:  # nanos outside 0-999,999,999 or a year outside 1-9999
        raise ValidationError(f"{name} is not a valid timestamp: {error}") from None


def _estimate(estimate: st.Estimate) -> pb.Estimate:
    return pb.Estimate(value=estimate.value, ci_low=estimate.ci_low, ci_high=estimate.ci_high, count=estimate.count)


def _nan_as_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def variant_message(report: VariantReport) -> pb.VariantReport:
    """One variant of the report."""
    message = pb.VariantReport(
        variant_name=report.variant_name,
        shadow=report.shadow,
        current_weight=report.current_weight,
        invocations=report.invocations,
        traffic_share=report.traffic_share,
        invocation_4xx_errors=report.errors_4xx,
        invocation_5xx_errors=report.errors_5xx,
        invocation_model_errors=report.model_errors,
        model_latency_mean_us=_nan_as_zero(report.latency_mean_us),
        model_latency_p50_us=_nan_as_zero(report.latency_p50_us),
        model_latency_p90_us=_nan_as_zero(report.latency_p90_us),
        model_latency_p99_us=_nan_as_zero(report.latency_p99_us),
        captured=report.captured,
        with_feedback=report.with_feedback,
    )
    if report.error_rate is not None:
        message.error_rate.CopyFrom(_estimate(report.error_rate))
    if report.quality is not None:
        quality = report.quality
        message.accuracy.CopyFrom(_estimate(quality.accuracy))
        message.precision, message.recall, message.f1 = quality.precision, quality.recall, quality.f1
        if quality.roc_auc is not None:
            message.roc_auc = quality.roc_auc
    if report.mean_reward is not None:
        message.mean_reward.CopyFrom(_estimate(report.mean_reward))
    for comparison in report.comparisons:
        r = comparison.result
        message.comparisons.append(
            pb.Comparison(
                metric=comparison.metric, test=r.test, difference=r.difference, ci_low=r.ci_low, ci_high=r.ci_high,
                p_value=r.p_value, always_valid_p_value=r.always_valid_p_value, significant=comparison.significant,
            )
        )
    return message


def _point(point: SeriesPoint) -> pb.SeriesPoint:
    message = pb.SeriesPoint(time=_stamp(point.time), invocations=point.invocations, traffic_share=point.traffic_share)
    for field in ("accuracy", "mean_reward", "error_rate"):
        estimate = getattr(point, field)
        if estimate is not None:
            getattr(message, field).CopyFrom(_estimate(estimate))
    return message


def weight_change_message(change: WeightChangeView) -> pb.BanditWeightChange:
    """An automatic weight change as the report lists it."""
    names = list(change.weights)  # production order, as the change recorded them
    return pb.BanditWeightChange(
        time=_stamp(change.time), source=change.source, variant_names=names,
        weights=[change.weights[n] for n in names], reason=change.reason,
    )


def report_message(report: ExperimentReport) -> pb.GetExperimentReportResponse:
    """GetExperimentReport's answer."""
    request = report.request
    srm = report.sample_ratio
    return pb.GetExperimentReportResponse(
        endpoint_name=request.endpoint_name,
        start_time=_stamp(request.start),
        end_time=_stamp(request.end),
        baseline_variant=request.baseline,
        confidence_level=request.confidence_level,
        variants=[variant_message(v) for v in report.variants],
        sample_ratio=pb.SampleRatioCheck(
            applicable=srm.applicable, chi_square=srm.chi_square, p_value=srm.p_value, mismatch=srm.mismatch,
            variant_names=list(srm.variant_names), observed=list(srm.observed), expected=list(srm.expected), note=srm.note,
        ),
        series=[pb.VariantSeries(variant_name=name, points=[_point(p) for p in points]) for name, points in report.series.items()],
        weight_changes=[weight_change_message(c) for c in report.weight_changes],
        unmatched_feedback=report.unmatched_feedback,
        notes=report.notes,
    )


def policy_message(policy: BanditPolicy) -> pb.BanditPolicy:
    """A stored policy as DescribeBanditPolicy answers it."""
    message = pb.BanditPolicy(
        endpoint_name=policy.endpoint_name,
        interval_in_seconds=policy.interval_s,
        exploration_floor=policy.exploration_floor,
        max_weight_change=policy.max_weight_change,
        min_rewards_per_variant=policy.min_rewards_per_variant,
        window_in_seconds=policy.window_s,
        creation_time=_stamp(policy.creation_time),
        last_evaluation=policy.last_evaluation,
    )
    if policy.last_update_time:
        message.last_update_time.CopyFrom(_stamp(policy.last_update_time))
    return message


class ExperimentsServicer(pb_grpc.ExperimentsServicer):
    """``mve.v1.Experiments`` over one `Experiments`."""

    def __init__(self, experiments: Experiments):
        self._experiments = experiments

    async def SendFeedback(self, request, context):
        entries = [
            FeedbackEntry(
                inference_id=f.inference_id,
                labels=tuple(f.ground_truth_labels),
                reward=f.reward if f.HasField("reward") else None,
                observation_time=_seconds(f, "observation_time", f"Feedback[{i}].ObservationTime"),
            )
            for i, f in enumerate(request.feedback)
        ]
        accepted = await self._experiments.send_feedback(request.endpoint_name, entries)
        return pb.SendFeedbackResponse(accepted=accepted)

    async def GetExperimentReport(self, request, context):
        report = await self._experiments.report(
            request.endpoint_name,
            start=_seconds(request, "start_time", "StartTime"),
            end=_seconds(request, "end_time", "EndTime"),
            baseline=request.baseline_variant,
            confidence_level=request.confidence_level,
            label_output=request.label_output,
            score_output=request.score_output,
            positive_label=request.positive_label,
            series_points=request.series_points,
        )
        return report_message(report)

    async def PutBanditPolicy(self, request, context):
        p = request.policy
        await self._experiments.bandit.put(
            BanditPolicy(
                endpoint_name=p.endpoint_name,
                interval_s=p.interval_in_seconds,
                exploration_floor=p.exploration_floor if p.HasField("exploration_floor") else None,
                max_weight_change=p.max_weight_change,
                min_rewards_per_variant=p.min_rewards_per_variant,
                window_s=p.window_in_seconds,
            )
        )
        return pb.PutBanditPolicyResponse()

    async def DescribeBanditPolicy(self, request, context):
        policy = await self._experiments.bandit.describe(request.endpoint_name)
        return pb.DescribeBanditPolicyResponse(policy=policy_message(policy))

    async def DeleteBanditPolicy(self, request, context):
        await self._experiments.bandit.delete(request.endpoint_name)
        return pb.DeleteBanditPolicyResponse()
