"""How ``mve report``, ``mve feedback`` and ``mve bandit`` print: rich tables for people, the
SDK's response (``--json``) for machines. The report's rows come from `mve.report_view`."""

from __future__ import annotations

import math
from typing import Callable

from rich.table import Table
from rich.text import Text

from mve import report_view as view
from mve.commands_output import fresh_console, plain, print_json


def _table(columns: list[str], rows: list[list[str]], title: str, styles: dict[int, Callable[[str], str]] | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        cells = [Text(cell, style=(styles or {}).get(i, lambda _: "")(cell)) for i, cell in enumerate(row)]
        table.add_row(*cells)
    return table


def _verdict_style(cell: str) -> str:
    return "bold green" if cell == "significant" else "dim"


def print_report(report: dict) -> None:
    """The report on the terminal: variants, comparisons, the sample-ratio check, weight changes, notes."""
    console = fresh_console()
    console.print(Text(view.heading(report), style="bold"))
    # Two tables of the same rows, so that each fits an 80-column terminal.
    rows = view.variant_rows(report)
    traffic = view.VARIANT_COLUMNS.index("Accuracy (CI)")
    console.print(_table(view.VARIANT_COLUMNS[:traffic], [row[:traffic] for row in rows], "Variants: traffic"))
    console.print(_table(view.VARIANT_COLUMNS[:1] + view.VARIANT_COLUMNS[traffic:],
                         [row[:1] + row[traffic:] for row in rows], "Variants: quality"))
    comparisons = view.comparison_rows(report)
    if comparisons:
        console.print(_table(view.COMPARISON_COLUMNS, comparisons,
                             f"Against {report.get('BaselineVariant', 'the baseline')} (significant: always-valid "
                             f"p < {1 - report.get('ConfidenceLevel', 0.95):.3g})",
                             styles={len(view.COMPARISON_COLUMNS) - 1: _verdict_style}))
    else:
        console.print("No comparisons with the baseline.")
    line, mismatch = view.sample_ratio_text(report)
    console.print(Text(line, style="bold white on red" if mismatch else "green"))
    changes = view.weight_change_rows(report)
    if changes:
        console.print(_table(view.WEIGHT_CHANGE_COLUMNS, changes, "Automatic weight changes"))
    for note in view.notes(report):
        console.print(f"note: {note}")


def finite_json(value):
    """`value` with every NaN or infinite float as None: JSON has no such numbers (a variant of
    weight 0 that got invocations has an infinite chi-square)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


def show_report(args, response: dict) -> int:
    """GetExperimentReport: the tables, or the response as JSON with ``--json`` (non-finite numbers null)."""
    data = plain(response)
    if args.json:
        print_json(finite_json(data))
    else:
        print_report(data)
    return 0


def show_feedback(args, endpoint: str, accepted: int, sent: int, calls: int) -> int:
    """SendFeedback over one or more calls: how many entries were accepted."""
    if args.json:
        print_json({"Accepted": accepted})
    else:
        fresh_console().print(f"accepted {accepted} of {sent} feedback entries for {endpoint} "
                              f"({calls} call{'s' if calls != 1 else ''})")
    return 0


POLICY_FIELDS = (
    ("IntervalInSeconds", "Interval", "{}s between updates"),
    ("ExplorationFloor", "Exploration floor", "{:g} (least share a variant keeps)"),
    ("MaxWeightChange", "Max weight change", "{:g} per update"),
    ("MinRewardsPerVariant", "Min rewards per variant", "{}"),
    ("WindowInSeconds", "Reward window", "last {}s"),
    ("CreationTime", "Created", None),
    ("LastUpdateTime", "Last update", None),
    ("LastEvaluation", "Last evaluation", "{}"),
)


def show_policy(args, response: dict) -> int:
    """DescribeBanditPolicy: the policy's settings and its last evaluation."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    policy = data.get("Policy", {})
    table = Table(show_header=False, title=f"Bandit policy of {policy.get('EndpointName', '')}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, label, template in POLICY_FIELDS:
        if key in policy:
            value = policy[key]
            table.add_row(label, view.when(value) if template is None else template.format(value))
    fresh_console().print(table)
    return 0


def done(args, message: str) -> int:
    """A call with an empty response: a short confirmation (``{}`` with --json)."""
    if args.json:
        print_json({})
    else:
        fresh_console().print(message)
    return 0


__all__ = ["done", "finite_json", "print_report", "show_feedback", "show_policy", "show_report"]
