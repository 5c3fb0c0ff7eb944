"""What the experiment verbs read from their flags and files: windows, durations, feedback entries
(JSON Lines, in batches with their line numbers), bandit settings and ``--data-capture`` specs.

Pure functions over argparse values; nothing here calls a service. A value that cannot become a
request raises `mve.commands.UsageError` (exit code 2) naming the flag, or the file and line.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from mve.commands import UsageError, _number

# SendFeedback's limit on entries per call (experiments.proto).
MAX_FEEDBACK_PER_CALL = 1000
FEEDBACK_KEYS = ("InferenceId", "GroundTruthLabels", "Reward", "ObservationTime")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


CAPTURE_KEYS = ("dest", "sampling", "modes", "csv", "json", "enable")
CAPTURE_MODES = ("Input", "Output", "InputAndOutput")


def parse_data_capture(text: str) -> dict:
    """``dest=DIR[,sampling=100,modes=Input+Output,csv=text/csv,json=application/json,enable=true]`` ->
    a DataCaptureConfig dict.

    `dest` is a local directory (made absolute here, as --model-data is) or a URI kept as given.
    `csv` and `json` may repeat, one content type each; `modes` joins modes with ``+``.
    Sampling defaults to 100 and the modes to both directions.
    """
    fields: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in CAPTURE_KEYS or not value:
            raise UsageError(f"--data-capture part {part!r} must be KEY=VALUE with KEY one of: {', '.join(CAPTURE_KEYS)}")
        fields.setdefault(key, []).append(value)
    for key in ("dest", "sampling", "modes", "enable"):
        if len(fields.get(key, [])) > 1:
            raise UsageError(f"--data-capture gives {key}= more than once")
    if "dest" not in fields:
        raise UsageError(f"--data-capture {text!r} needs dest=DIR")
    dest = fields["dest"][0]
    modes = fields.get("modes", ["Input+Output"])[0].split("+")
    unknown = [m for m in modes if m not in CAPTURE_MODES]
    if unknown:
        raise UsageError(f"--data-capture modes {'+'.join(unknown)!r}: each must be one of {', '.join(CAPTURE_MODES)}")
    enable = fields.get("enable", ["true"])[0].lower()
    if enable not in ("true", "false"):
        raise UsageError(f"--data-capture enable= must be true or false, got {enable!r}")
    config: dict = {
        "EnableCapture": enable == "true",
        "InitialSamplingPercentage": _number(fields.get("sampling", ["100"])[0], int, "sampling"),
        "DestinationS3Uri": dest if "://" in dest else str(Path(dest).expanduser().resolve()),
        "CaptureOptions": [{"CaptureMode": mode} for mode in modes],
    }
    if "csv" in fields or "json" in fields:
        config["CaptureContentTypeHeader"] = {"CsvContentTypes": fields.get("csv", []),
                                              "JsonContentTypes": fields.get("json", [])}
    return config


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``2d`` or plain seconds -> a positive timedelta (argparse type)."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive duration such as 90s, 30m, 1h or 2d, got {text!r}")
    return timedelta(seconds=float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"])


def window_params(args, now: datetime | None = None) -> dict:
    """StartTime/EndTime from ``--start``/``--since`` and ``--end``; the service's default when none."""
    params: dict = {}
    if args.end is not None:
        params["EndTime"] = args.end
    if args.start is not None:
        params["StartTime"] = args.start
    elif args.since is not None:
        params["StartTime"] = (args.end or now or datetime.now(timezone.utc)) - args.since
    return params


def report_params(args) -> dict:
    """get_experiment_report's keyword arguments from the flags that were given."""
    params = {"EndpointName": args.endpoint, **window_params(args)}
    for key, value in (("BaselineVariant", args.baseline), ("ConfidenceLevel", args.confidence),
                       ("LabelOutput", args.label_output), ("ScoreOutput", args.score_output),
                       ("PositiveLabel", args.positive_label), ("SeriesPoints", args.series_points)):
        if value is not None:
            params[key] = value
    return params


def _entry(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: each line must be a JSON object such as "
                         '{"InferenceId": "...", "GroundTruthLabels": ["1"], "Reward": 1}')
    unknown = sorted(set(value) - set(FEEDBACK_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(FEEDBACK_KEYS)}")
    if "InferenceId" not in value:
        raise UsageError(f"{where}: InferenceId is missing")
    if "GroundTruthLabels" not in value and "Reward" not in value:
        raise UsageError(f"{where}: give GroundTruthLabels, a Reward or both")
    if "GroundTruthLabels" in value and not isinstance(value["GroundTruthLabels"], list):
        raise UsageError(f"{where}: GroundTruthLabels must be a list, e.g. [\"1\"]")
    return value


def read_feedback(path: Path, batch_size: int) -> Iterator[tuple[list[dict], list[int]]]:
    """Batches of at most `batch_size` entries from a JSON Lines file, each with its line numbers.

    Blank lines are skipped; a line that is not a feedback object stops the reading with a
    UsageError naming the file and line.
    """
    batch: list[dict] = []
    lines: list[int] = []
    with path.open(encoding="utf-8") as stream:
        for number, text in enumerate(stream, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise UsageError(f"{where}: not valid JSON ({error.msg})") from None
            batch.append(_entry(value, where))
            lines.append(number)
            if len(batch) == batch_size:
                yield batch, lines
                batch, lines = [], []
    if batch:
        yield batch, lines


def flag_feedback(args) -> dict:
    """The one feedback entry given by --inference-id, --label and --reward."""
    if args.label is None and args.reward is None:
        raise UsageError("--inference-id needs --label L [L ...], --reward R or both")
    entry: dict = {"InferenceId": args.inference_id}
    if args.label is not None:
        entry["GroundTruthLabels"] = list(args.label)
    if args.reward is not None:
        entry["Reward"] = args.reward
    if args.observation_time is not None:
        entry["ObservationTime"] = args.observation_time
    return entry


def bandit_params(args) -> dict:
    """put_bandit_policy's keyword arguments from the flags that were given (the rest: the service's defaults)."""
    params = {"EndpointName": args.endpoint}
    for key, value in (("IntervalInSeconds", args.interval), ("ExplorationFloor", args.floor),
                       ("MaxWeightChange", args.max_change), ("MinRewardsPerVariant", args.min_rewards),
                       ("WindowInSeconds", args.window)):
        if value is not None:
            params[key] = value
    return params


__all__ = ["CAPTURE_MODES", "FEEDBACK_KEYS", "MAX_FEEDBACK_PER_CALL", "bandit_params", "flag_feedback",
           "parse_data_capture", "parse_duration", "read_feedback", "report_params", "window_params"]
