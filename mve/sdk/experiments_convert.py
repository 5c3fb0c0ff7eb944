"""The experiments API's parameter shapes, and conversion between boto3-style dicts and
``mve.v1.Experiments`` messages.

SageMaker has no such API, so the names are mve's own in SageMaker's style: requests take
CamelCase keyword arguments, responses are the response message with its field names in CamelCase
(``traffic_share`` -> ``TrafficShare``, ``invocation_4xx_errors`` -> ``Invocation4XXErrors``,
``model_latency_p99_us`` -> ``ModelLatencyP99Microseconds``), timestamps as UTC datetimes, and the
optional fields the server left unset absent. Ground-truth labels may be given as any scalar and
are sent as text (``1`` -> ``"1"``, ``1.0`` -> ``"1"``, ``"benign"`` as is).
"""

from __future__ import annotations

import math
from datetime import timezone

import numpy as np
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor

from mve._proto import experiments_pb2 as pb
from mve.sdk.exceptions import ParamValidationError
from mve.sdk.params import DOUBLE, INTEGER, STRING, TIMESTAMP, ListOf, Scalar, Structure, parse_timestamp, struct

# ---------------------------------------------------------------- shapes

# A label as the caller has it: text, a number, a bool, or a numpy scalar of those.
LABEL = Scalar((str, int, float, bool, np.integer, np.floating, np.bool_))
# A reward: a number (numpy numbers too); bools are refused, as botocore refuses them for a double.
REWARD = Scalar((float, int, np.integer, np.floating))
NAME = Scalar((str,), 1)

FEEDBACK = struct(
    ("InferenceId",),
    InferenceId=NAME,
    GroundTruthLabels=ListOf(LABEL),
    Reward=REWARD,
    ObservationTime=TIMESTAMP,
)

OPERATIONS: dict[str, Structure] = {
    "SendFeedback": struct(("EndpointName", "Feedback"), EndpointName=NAME, Feedback=ListOf(FEEDBACK, min=1)),
    "GetExperimentReport": struct(
        ("EndpointName",),
        EndpointName=NAME,
        StartTime=TIMESTAMP,
        EndTime=TIMESTAMP,
        BaselineVariant=STRING,
        ConfidenceLevel=DOUBLE,
        LabelOutput=STRING,
        ScoreOutput=STRING,
        PositiveLabel=LABEL,
        SeriesPoints=INTEGER,
    ),
    "PutBanditPolicy": struct(
        ("EndpointName",),
        EndpointName=NAME,
        IntervalInSeconds=INTEGER,
        ExplorationFloor=DOUBLE,
        MaxWeightChange=DOUBLE,
        MinRewardsPerVariant=INTEGER,
        WindowInSeconds=INTEGER,
    ),
    "DescribeBanditPolicy": struct(("EndpointName",), EndpointName=NAME),
    "DeleteBanditPolicy": struct(("EndpointName",), EndpointName=NAME),
}

# ---------------------------------------------------------------- requests


def label_text(value) -> str:
    """A ground-truth label as the text the service compares with the model's predicted label.

    Text stays as it is; integers and integral floats become decimal integers (``1``, ``1.0`` and
    ``np.int64(1)`` all give ``"1"``); other floats their shortest repr; bools ``"1"``/``"0"``. These
    are the control plane's rules for the model's predicted labels, so equal labels compare equal.
    A NaN or infinite label is a ValueError.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"value: {value!r}, a label must be finite")
    return str(int(number)) if number.is_integer() else repr(number)


def _label(value, path: str) -> str:
    try:
        return label_text(value)
    except ValueError as error:
        raise ParamValidationError(f"Invalid value for parameter {path}, {error}") from None


def timestamp(value) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp from an already validated datetime, epoch number or ISO string."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(parse_timestamp(value).astimezone(timezone.utc))
    return stamp


def _feedback(entry: dict, index: int) -> pb.Feedback:
    feedback = pb.Feedback(
        inference_id=entry["InferenceId"],
        ground_truth_labels=[_label(label, f"Feedback[{index}].GroundTruthLabels[{n}]")
                             for n, label in enumerate(entry.get("GroundTruthLabels", ()))],
    )
    if "Reward" in entry:
        reward = float(entry["Reward"])
        if not math.isfinite(reward):
            raise ParamValidationError(f"Invalid value for parameter Feedback[{index}].Reward, value: {reward}, "
                                       "a reward must be finite")
        feedback.reward = reward
    if "ObservationTime" in entry:
        feedback.observation_time.CopyFrom(timestamp(entry["ObservationTime"]))
    return feedback


def _report_request(p: dict) -> pb.GetExperimentReportRequest:
    request = pb.GetExperimentReportRequest(
        endpoint_name=p["EndpointName"],
        baseline_variant=p.get("BaselineVariant", ""),
        confidence_level=float(p.get("ConfidenceLevel", 0.0)),
        label_output=p.get("LabelOutput", ""),
        score_output=p.get("ScoreOutput", ""),
        positive_label=_label(p["PositiveLabel"], "PositiveLabel") if "PositiveLabel" in p else "",
        series_points=p.get("SeriesPoints", 0),
    )
    for key, field in (("StartTime", "start_time"), ("EndTime", "end_time")):
        if key in p:
            getattr(request, field).CopyFrom(timestamp(p[key]))
    return request


def _bandit_policy(p: dict) -> pb.PutBanditPolicyRequest:
    policy = pb.BanditPolicy(
        endpoint_name=p["EndpointName"],
        interval_in_seconds=p.get("IntervalInSeconds", 0),
        max_weight_change=float(p.get("MaxWeightChange", 0.0)),
        min_rewards_per_variant=p.get("MinRewardsPerVariant", 0),
        window_in_seconds=p.get("WindowInSeconds", 0),
    )
    if "ExplorationFloor" in p:  # has presence on the wire: an explicit 0 is sent as 0
        policy.exploration_floor = float(p["ExplorationFloor"])
    return pb.PutBanditPolicyRequest(policy=policy)


REQUEST_BUILDERS = {
    "SendFeedback": lambda p: pb.SendFeedbackRequest(
        endpoint_name=p["EndpointName"], feedback=[_feedback(f, i) for i, f in enumerate(p["Feedback"])]
    ),
    "GetExperimentReport": _report_request,
    "PutBanditPolicy": _bandit_policy,
    "DescribeBanditPolicy": lambda p: pb.DescribeBanditPolicyRequest(endpoint_name=p["EndpointName"]),
    "DeleteBanditPolicy": lambda p: pb.DeleteBanditPolicyRequest(endpoint_name=p["EndpointName"]),
}


def build_request(operation: str, params: dict):
    """The protobuf request of `operation` for already validated `params`."""
    return REQUEST_BUILDERS[operation](params)


# ---------------------------------------------------------------- responses

# Field names whose CamelCase is not the plain capitalisation of their parts.
SPECIAL_KEYS = {
    "invocation_4xx_errors": "Invocation4XXErrors",
    "invocation_5xx_errors": "Invocation5XXErrors",
}


def response_key(field_name: str) -> str:
    """A proto field's name in the SDK's dicts: CamelCase, ``_us`` (microseconds) spelled out."""
    if field_name in SPECIAL_KEYS:
        return SPECIAL_KEYS[field_name]
    parts = field_name.split("_")
    if parts[-1] == "us":
        parts[-1] = "microseconds"
    return "".join(part[:1].upper() + part[1:] for part in parts)


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 5 names it is_repeated; older releases only have the label.
    repeated = getattr(field, "is_repeated", None)
    return repeated if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _value(field: FieldDescriptor, value):
    if field.message_type is None:
        return value
    if field.message_type.full_name == "google.protobuf.Timestamp":
        return value.ToDatetime(tzinfo=timezone.utc)
    return message_to_dict(value)


def message_to_dict(message) -> dict:
    """`message` as a dict keyed by `response_key`: unset optional fields and empty text left out,
    repeated fields as lists (empty ones kept), timestamps as UTC datetimes."""
    out: dict = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        key = response_key(field.name)
        if _is_repeated(field):
            out[key] = [_value(field, item) for item in value]
        elif field.has_presence and not message.HasField(field.name):
            continue
        elif field.type == FieldDescriptor.TYPE_STRING and value == "":
            continue
        else:
            out[key] = _value(field, value)
    return out


RESPONSE_CONVERTERS = {
    "SendFeedback": lambda r: {"Accepted": r.accepted},
    "GetExperimentReport": message_to_dict,
    "PutBanditPolicy": lambda r: {},
    "DescribeBanditPolicy": message_to_dict,
    "DeleteBanditPolicy": lambda r: {},
}


def convert_response(operation: str, response) -> dict:
    """The dict of `operation`'s protobuf `response`."""
    return RESPONSE_CONVERTERS[operation](response)


__all__ = ["OPERATIONS", "build_request", "convert_response", "label_text", "message_to_dict", "response_key"]
