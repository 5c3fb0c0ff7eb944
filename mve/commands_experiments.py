"""``mve report``, ``mve feedback`` and ``mve bandit``: the experiments API (``mve.client("experiments")``).

- ``mve report ENDPOINT`` prints GetExperimentReport as tables (``--json``: the SDK's dict), and
  with ``--html FILE`` also writes the self-contained HTML page with plots (`mve.report_html`).
- ``mve feedback ENDPOINT`` sends ground truth and rewards: one entry from flags, or a JSON Lines
  file of ``{"InferenceId", "GroundTruthLabels", "Reward", "ObservationTime"}`` objects sent in
  calls of at most 1,000 entries.
- ``mve bandit put|describe|delete ENDPOINT`` manages the endpoint's Thompson-sampling policy.

What the flags and files become is `mve.commands_experiments_input`'s job (including
``mve endpoint-config create --data-capture``).

Errors print ``Code: message`` on stderr and exit 1 (2 for bad usage), as the other verbs do.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mve.commands import UsageError, _guarded, _positive
from mve.commands_experiments_input import (
    MAX_FEEDBACK_PER_CALL,
    bandit_params,
    flag_feedback,
    parse_data_capture,
    parse_duration,
    read_feedback,
    report_params,
)
from mve.commands_metrics import TIME_HELP, int_at_least, parse_time

def _client(args):
    from mve.sdk import client

    return client("experiments", address=args.control_plane, **({"timeout": args.timeout} if args.timeout else {}))


# ---------------------------------------------------------------- actions


def _report(args) -> int:
    from mve import commands_experiments_output as out
    from mve.commands_output import plain

    if args.html is not None:
        from mve import report_html

        report_html.require_matplotlib()
    with _client(args) as exp:
        response = exp.get_experiment_report(**report_params(args))
    out.show_report(args, response)
    if args.html is not None:
        path = report_html.write(plain(response), args.html)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _with_lines(error, lines: list[int], path: Path):
    """A ParamValidationError whose ``Feedback[i]`` paths name the file's lines instead."""
    from mve.sdk.exceptions import ParamValidationError

    report = re.sub(r"Feedback\[(\d+)\]", lambda m: f"{path}:{lines[int(m.group(1))]}", error.report)
    return ParamValidationError(report)


def _feedback(args) -> int:
    from mve import commands_experiments_output as out
    from mve.sdk.exceptions import ClientError, ParamValidationError, SDKError

    if args.file is None:
        batches = iter([([flag_feedback(args)], [0])])
    else:
        if args.label is not None or args.reward is not None or args.observation_time is not None:
            raise UsageError("--label, --reward and --observation-time go with --inference-id, not --file")
        batches = read_feedback(Path(args.file), args.batch_size)
    accepted = sent = calls = 0
    with _client(args) as exp:
        try:
            for batch, lines in batches:
                try:
                    response = exp.send_feedback(EndpointName=args.endpoint, Feedback=batch)
                except ParamValidationError as error:
                    raise (_with_lines(error, lines, Path(args.file)) if args.file else error) from None
                accepted += response["Accepted"]
                sent += len(batch)
                calls += 1
        except (UsageError, SDKError, ClientError):
            if calls:  # what went before the error stays sent: say how much
                print(f"{accepted} of {sent} entries were accepted in {calls} call{'s' if calls != 1 else ''} "
                      "before this error:", file=sys.stderr)
            raise
    return out.show_feedback(args, args.endpoint, accepted, sent, calls)


def _bandit(args) -> int:
    from mve import commands_experiments_output as out

    with _client(args) as exp:
        if args.action == "put":
            exp.put_bandit_policy(**bandit_params(args))
            if args.json:
                return out.done(args, "")
            return out.show_policy(args, exp.describe_bandit_policy(EndpointName=args.endpoint))
        if args.action == "describe":
            return out.show_policy(args, exp.describe_bandit_policy(EndpointName=args.endpoint))
        exp.delete_bandit_policy(EndpointName=args.endpoint)
    return out.done(args, f"deleted the bandit policy of {args.endpoint}; its weights stay as they are")


def _guarded_report(action):
    """`_guarded`, plus a clear exit 1 when --html has no plotting library."""
    guarded = _guarded(action)

    def run(args) -> int:
        from mve.report_html import MissingPlottingLibrary

        try:
            return guarded(args)
        except MissingPlottingLibrary as error:
            print(f"MissingPlottingLibrary: {error}", file=sys.stderr)
            return 1

    return run


# ---------------------------------------------------------------- parsers


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control-plane", metavar="HOST:PORT", default=None,
                        help="control plane address (default $MVE_CONTROL_PLANE or 127.0.0.1:7070)")
    common.add_argument("--json", action="store_true", help="print the SDK's response as JSON")
    common.add_argument("--timeout", type=_positive, default=None, help="deadline of each call in seconds (> 0)")
    return common


def _unit_interval(low: float, high: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {value:g}")
        return value

    return parse


def _batch_size(text: str) -> int:
    value = int_at_least(1)(text)
    if value > MAX_FEEDBACK_PER_CALL:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_FEEDBACK_PER_CALL} (SendFeedback's limit), got {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def register(subparsers) -> None:
    """Add ``report``, ``feedback`` and ``bandit``."""
    common = _common()

    report_help = ("an endpoint's experiment report: per variant traffic, latency, errors, quality and reward, "
                   "differences from the baseline with p-values, the sample-ratio check and automatic weight changes")
    report = subparsers.add_parser("report", parents=[common], help=report_help,
                                   description=f"{report_help} (GetExperimentReport). Times: {TIME_HELP}.")
    report.add_argument("endpoint", metavar="ENDPOINT")
    start = report.add_mutually_exclusive_group()
    start.add_argument("--start", type=parse_time, help="window start (default: an hour before the end)")
    start.add_argument("--since", type=parse_duration, metavar="DURATION",
                       help="window start as a duration before the end, e.g. 30m, 1h, 2d")
    report.add_argument("--end", type=parse_time, help="window end (default: now)")
    report.add_argument("--baseline", metavar="VARIANT", help="default: the first production variant")
    report.add_argument("--confidence", type=_unit_interval(0.5, 0.999), metavar="LEVEL",
                        help="confidence level, 0.5-0.999 (default 0.95)")
    report.add_argument("--label-output", metavar="NAME", help="the model output holding the predicted label")
    report.add_argument("--score-output", metavar="NAME", help="the model output holding the class scores")
    report.add_argument("--positive-label", metavar="LABEL", help='the positive class (default "1")')
    report.add_argument("--series-points", type=int_at_least(1), metavar="N", help="points per series (default 60)")
    report.add_argument("--html", metavar="FILE",
                        help="also write a self-contained HTML report with plots (needs pip install 'mve[report]')")
    report.set_defaults(func=_guarded_report(_report))

    feedback_help = "send ground-truth labels and/or rewards for inference ids (SendFeedback)"
    feedback = subparsers.add_parser(
        "feedback", parents=[common], help=feedback_help,
        description=f"{feedback_help}. --file takes JSON Lines, one object per line: "
                    '{"InferenceId": "...", "GroundTruthLabels": ["1"], "Reward": 1, "ObservationTime": "ISO"} '
                    "(labels, a reward or both), sent in calls of at most --batch-size entries.")
    feedback.add_argument("endpoint", metavar="ENDPOINT")
    source = feedback.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", metavar="FILE.jsonl", help="feedback entries, one JSON object per line")
    source.add_argument("--inference-id", metavar="ID", help="the InferenceId the invocation returned")
    feedback.add_argument("--label", nargs="+", action="extend", metavar="L",
                          help="the true label of each row of the invocation (with --inference-id)")
    feedback.add_argument("--reward", type=_finite, metavar="R", help="the invocation's reward (with --inference-id)")
    feedback.add_argument("--observation-time", type=parse_time, metavar="TIME",
                          help=f"when the outcome was observed (default: when received); {TIME_HELP}")
    feedback.add_argument("--batch-size", type=_batch_size, default=MAX_FEEDBACK_PER_CALL, metavar="N",
                          help=f"entries per call, 1-{MAX_FEEDBACK_PER_CALL} (default {MAX_FEEDBACK_PER_CALL})")
    feedback.set_defaults(func=_guarded(_feedback))

    bandit = subparsers.add_parser("bandit", help="put, describe or delete an endpoint's bandit policy",
                                   description="A Thompson-sampling policy that sets the production variants' "
                                               "weights from their rewards (mve's own; needs data capture).")
    actions = bandit.add_subparsers(dest="action", metavar="ACTION", required=True)
    put = actions.add_parser("put", parents=[common], help="create or replace the policy (PutBanditPolicy)",
                             description="Create or replace the endpoint's bandit policy; flags left out take "
                                         "the service's defaults.")
    put.add_argument("endpoint", metavar="ENDPOINT")
    put.add_argument("--interval", type=int_at_least(1), metavar="S", help="seconds between updates (default 30)")
    put.add_argument("--floor", type=_unit_interval(0.0, 0.5), metavar="F",
                     help="least share a variant keeps, 0-0.5 (default 0.05; 0: none)")
    put.add_argument("--max-change", type=_unit_interval(0.01, 1.0), metavar="C",
                     help="most a share moves per update, 0.01-1 (default 0.2)")
    put.add_argument("--min-rewards", type=int_at_least(1), metavar="N",
                     help="rewards each variant needs before the weights move (default 20)")
    put.add_argument("--window", type=int_at_least(60), metavar="S",
                     help="seconds of rewards that count (default 3600)")
    put.set_defaults(func=_guarded(_bandit))
    for action, help_line in (("describe", "the policy and its last evaluation (DescribeBanditPolicy)"),
                              ("delete", "delete the policy; the weights stay where it left them "
                                         "(DeleteBanditPolicy)")):
        sub = actions.add_parser(action, parents=[common], help=help_line, description=help_line)
        sub.add_argument("endpoint", metavar="ENDPOINT")
        sub.set_defaults(func=_guarded(_bandit))


__all__ = ["parse_data_capture", "register"]
