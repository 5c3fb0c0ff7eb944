"""``mve report --html FILE``: an experiment report as one self-contained HTML page.

The page has the report's tables (the same rows as the terminal's, from `mve.report_view`) and
plots drawn with matplotlib and embedded as base64 PNG, so the file can be mailed or archived alone:
the production variants' traffic share over time, then accuracy, mean reward and error rate over
time, each variant's line with its confidence band (the estimates are cumulative from the window's
start, as the sequential test reads them). matplotlib is the optional ``report`` extra
(``pip install 'mve[report]'``); without it `require_matplotlib` raises `MissingPlottingLibrary`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from mve import report_view as view

INSTALL_HINT = "pip install 'mve[report]'"

# (series key, title, y label, as a percentage)
METRIC_PLOTS = (
    ("Accuracy", "Accuracy", "accuracy (%)", True),
    ("MeanReward", "Mean reward", "mean reward", False),
    ("ErrorRate", "Error rate", "error rate (%)", True),
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
.srm-ok { color: #1a7f37; }
.srm-mismatch { background: #d1242f; color: white; font-weight: bold; padding: 0.6em; }
.significant { color: #1a7f37; font-weight: bold; }
.not-significant { color: #777; }
img { display: block; margin: 0.5em 0 1.5em; max-width: 100%; }
"""


class MissingPlottingLibrary(RuntimeError):
    """matplotlib is not installed, so no HTML report can be drawn."""


def require_matplotlib() -> None:
    """Raise `MissingPlottingLibrary` (naming the extra to install) when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingPlottingLibrary(
            f"the HTML report draws its plots with matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None


def _png(figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(report: dict, title: str, ylabel: str):
    """A figure whose time axis spans the report's window (a single point would otherwise span years)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2), dpi=100)
    axes = figure.add_subplot()
    if report.get("StartTime") and report.get("EndTime"):
        margin = (report["EndTime"] - report["StartTime"]) * 0.02  # points at the window's end stay inside
        axes.set_xlim(report["StartTime"] - margin, report["EndTime"] + margin)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.set_xlabel("time (UTC)")
    axes.grid(True, alpha=0.3)
    return figure, axes


def _production_names(report: dict) -> set[str]:
    return {v["VariantName"] for v in report.get("Variants", []) if not v.get("Shadow")}


def share_plot(report: dict) -> str | None:
    """The production variants' traffic share per bucket as a base64 PNG; None without traffic.

    Buckets without invocations have no share and are left out (not drawn as 0%).
    """
    production = _production_names(report)
    series = []
    for s in report.get("Series", []):
        points = [p for p in s.get("Points", []) if p.get("Invocations")]
        if s["VariantName"] in production and points:
            series.append((s["VariantName"], points))
    if not series:
        return None
    figure, axes = _figure(report, "Traffic share over time", "share of invocations (%)")
    for name, points in series:
        axes.plot([p["Time"] for p in points], [p.get("TrafficShare", 0.0) * 100 for p in points],
                  marker=".", label=name)
    axes.set_ylim(0, 100)
    axes.legend(loc="best")
    return _png(figure)


def metric_plot(report: dict, key: str, title: str, ylabel: str, as_percent: bool) -> str | None:
    """One metric's cumulative estimate per variant with its confidence band; None without points."""
    scale = 100.0 if as_percent else 1.0
    drawn = False
    figure, axes = _figure(report, f"{title} over time (cumulative, {report.get('ConfidenceLevel', 0.95) * 100:g}% band)",
                           ylabel)
    for s in report.get("Series", []):
        points = [p for p in s.get("Points", []) if p.get(key)]
        if not points:
            continue
        times = [p["Time"] for p in points]
        values = [p[key]["Value"] * scale for p in points]
        lows = [p[key]["CiLow"] * scale for p in points]
        highs = [p[key]["CiHigh"] * scale for p in points]
        (line,) = axes.plot(times, values, marker=".", label=s["VariantName"])
        if len(points) == 1:  # a band needs two points: show the one interval as an error bar
            axes.errorbar(times, values, yerr=[[values[0] - lows[0]], [highs[0] - values[0]]], color=line.get_color(),
                          capsize=4)
        else:
            axes.fill_between(times, lows, highs, color=line.get_color(), alpha=0.2)
        drawn = True
    if not drawn:
        return None
    axes.legend(loc="best")
    return _png(figure)


def _html_table(columns: list[str], rows: list[list[str]], verdict_column: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            css = ""
            if i == verdict_column:
                css = ' class="significant"' if cell == "significant" else ' class="not-significant"'
            cells.append(f"<td{css}>{html.escape(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image(title: str, png: str | None) -> str:
    if png is None:
        return f"<p>{html.escape(title)}: no data in this window.</p>"
    return f'<img src="data:image/png;base64,{png}" alt="{html.escape(title)}">'


def render(report: dict) -> str:
    """The whole page for `report` (the dict ``get_experiment_report`` returns) as HTML text."""
    require_matplotlib()
    title = view.heading(report)
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Variants</h2>",
             _html_table(view.VARIANT_COLUMNS, view.variant_rows(report))]
    comparisons = view.comparison_rows(report)
    parts.append(f"<h2>Against {html.escape(report.get('BaselineVariant', 'the baseline'))}</h2>")
    parts.append(_html_table(view.COMPARISON_COLUMNS, comparisons, len(view.COMPARISON_COLUMNS) - 1)
                 if comparisons else "<p>No comparisons with the baseline.</p>")
    line, mismatch = view.sample_ratio_text(report)
    parts.append(f'<p class="{"srm-mismatch" if mismatch else "srm-ok"}">{html.escape(line)}</p>')
    parts.append("<h2>Traffic</h2>")
    parts.append(_image("Traffic share over time", share_plot(report)))
    parts.append("<h2>Metrics over time</h2>")
    for key, metric_title, ylabel, as_percent in METRIC_PLOTS:
        parts.append(_image(metric_title, metric_plot(report, key, metric_title, ylabel, as_percent)))
    changes = view.weight_change_rows(report)
    if changes:
        parts.append("<h2>Automatic weight changes</h2>")
        parts.append(_html_table(view.WEIGHT_CHANGE_COLUMNS, changes))
    report_notes = view.notes(report)
    if report_notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report_notes) + "</ul>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def write(report: dict, path: str | Path) -> Path:
    """Write the page for `report` to `path` (one file, nothing else) and return the path."""
    target = Path(path)
    target.write_text(render(report), encoding="utf-8")
    return target


__all__ = ["INSTALL_HINT", "METRIC_PLOTS", "MissingPlottingLibrary", "metric_plot", "render", "require_matplotlib",
           "share_plot", "write"]
