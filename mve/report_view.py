"""An experiment report (the dict ``get_experiment_report`` returns) as rows of text.

Both printers read these: the terminal tables of ``mve report`` (`mve.commands_experiments_output`)
and the HTML page of ``mve report --html`` (`mve.report_html`), so the two always say the same.
Rates print as percentages, latencies in milliseconds, differences of rates in percentage points.
"""

from __future__ import annotations

from datetime import datetime

RATE_METRICS = ("accuracy", "error_rate")
SRM_THRESHOLD = 0.001

VARIANT_COLUMNS = ["Variant", "Weight", "Invocations", "Share", "p50 ms", "p99 ms", "Error rate",
                   "Accuracy (CI)", "F1", "ROC AUC", "Mean reward (CI)", "Feedback"]
COMPARISON_COLUMNS = ["Variant", "Metric", "Test", "Difference (CI)", "p-value", "Always-valid p", "Verdict"]
WEIGHT_CHANGE_COLUMNS = ["Time", "Source", "Weights", "Reason"]


def when(value: datetime | None) -> str:
    """A UTC time as ``2026-03-01 12:00:00Z``; empty when absent."""
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else ""


def percent(value: float) -> str:
    """0.905 -> ``90.5%``."""
    return f"{value * 100:.1f}%"


def milliseconds(microseconds: float | None) -> str:
    """Microseconds as milliseconds with 3 significant figures; ``-`` when there is no figure."""
    return "-" if not microseconds else f"{microseconds / 1000:.3g}"


def p_value(value: float) -> str:
    """A p-value: ``<0.0001`` below that, else 4 significant figures."""
    return "<0.0001" if value < 1e-4 else f"{value:.4g}"


def estimate(value: dict | None, *, rate: bool) -> str:
    """An Estimate as ``90.0% (87.0–93.0)`` for a rate, ``0.512 (0.48–0.55)`` otherwise; ``-`` if absent."""
    if not value:
        return "-"
    if rate:
        return f"{percent(value['Value'])} ({value['CiLow'] * 100:.1f}–{value['CiHigh'] * 100:.1f})"
    return f"{value['Value']:.3g} ({value['CiLow']:.3g}–{value['CiHigh']:.3g})"


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def variant_label(variant: dict) -> str:
    """The variant's name, marked when it is a shadow."""
    return f"{variant['VariantName']} (shadow)" if variant.get("Shadow") else variant["VariantName"]


def variant_rows(report: dict) -> list[list[str]]:
    """One row per variant, in `VARIANT_COLUMNS` order (shadows after the production variants)."""
    rows = []
    for v in report.get("Variants", []):
        shadow = v.get("Shadow", False)
        errors = v.get("ErrorRate")
        rows.append([
            variant_label(v),
            f"{v.get('CurrentWeight', 0):.3g}",
            str(v.get("Invocations", 0)),
            "-" if shadow else percent(v.get("TrafficShare", 0.0)),
            milliseconds(v.get("ModelLatencyP50Microseconds")),
            milliseconds(v.get("ModelLatencyP99Microseconds")),
            percent(errors["Value"]) if errors else "-",
            estimate(v.get("Accuracy"), rate=True),
            _optional(v.get("F1")),
            _optional(v.get("RocAuc")),
            estimate(v.get("MeanReward"), rate=False),
            f"{v.get('WithFeedback', 0)}/{v.get('Captured', 0)}",
        ])
    return rows


def difference(metric: str, comparison: dict) -> str:
    """A difference with its interval in the metric's unit: points for rates, ms for latency."""
    low, high, value = comparison["CiLow"], comparison["CiHigh"], comparison["Difference"]
    if metric in RATE_METRICS:
        return f"{value * 100:+.1f} pp ({low * 100:+.1f}, {high * 100:+.1f})"
    if metric == "model_latency_us":
        return f"{value / 1000:+.3g} ms ({low / 1000:+.3g}, {high / 1000:+.3g})"
    return f"{value:+.3g} ({low:+.3g}, {high:+.3g})"


def verdict(comparison: dict) -> str:
    """``significant`` or ``not significant`` (by the always-valid p-value)."""
    return "significant" if comparison.get("Significant") else "not significant"


def comparison_rows(report: dict) -> list[list[str]]:
    """One row per (variant, metric) compared with the baseline, in `COMPARISON_COLUMNS` order."""
    rows = []
    for v in report.get("Variants", []):
        for c in v.get("Comparisons", []):
            rows.append([variant_label(v), c["Metric"], c["Test"], difference(c["Metric"], c),
                         p_value(c["PValue"]), p_value(c["AlwaysValidPValue"]), verdict(c)])
    return rows


def sample_ratio_text(report: dict) -> tuple[str, bool]:
    """The sample-ratio check in one sentence, and whether it is a mismatch (to be shown loudly)."""
    check = report.get("SampleRatio") or {}
    if not check.get("Applicable"):
        return f"Sample ratio: not checked ({check.get('Note') or 'no routable traffic to check'}).", False
    counts = ", ".join(f"{name} {observed:.0f} (expected {expected:.0f})" for name, observed, expected in
                       zip(check["VariantNames"], check["Observed"], check["Expected"]))
    stats = f"χ² = {check['ChiSquare']:.3g}, p = {p_value(check['PValue'])}"
    if check.get("Mismatch"):
        why = check.get("Note") or "the traffic does not follow the weights"
        return (f"SAMPLE RATIO MISMATCH ({stats} < {SRM_THRESHOLD:g}): {counts}. {why[:1].upper() + why[1:]}; "
                "the comparisons cannot be trusted until the cause is found.", True)
    return f"Sample ratio: OK ({stats}): {counts}.", False


def weight_change_rows(report: dict) -> list[list[str]]:
    """One row per automatic weight change, oldest first, in `WEIGHT_CHANGE_COLUMNS` order."""
    return [[when(c.get("Time")), c.get("Source", ""),
             ", ".join(f"{name} {weight:.3f}" for name, weight in zip(c.get("VariantNames", []), c.get("Weights", []))),
             c.get("Reason", "")] for c in report.get("WeightChanges", [])]


def notes(report: dict) -> list[str]:
    """The report's notes, with unmatched feedback said in words."""
    lines = list(report.get("Notes", []))
    unmatched = report.get("UnmatchedFeedback", 0)
    if unmatched:
        lines.append(f"{unmatched} feedback entr{'y' if unmatched == 1 else 'ies'} in the window matched no "
                     "captured invocation (yet): is data capture on, and its sampling high enough?")
    return lines


def heading(report: dict) -> str:
    """``Experiment report: ab, <start> to <end>; baseline Variant1, 95% confidence``."""
    level = report.get("ConfidenceLevel", 0.0)
    return (f"Experiment report: {report.get('EndpointName', '')}, {when(report.get('StartTime'))} to "
            f"{when(report.get('EndTime'))}; baseline {report.get('BaselineVariant', '')}, "
            f"{level * 100:g}% confidence")


__all__ = ["COMPARISON_COLUMNS", "VARIANT_COLUMNS", "WEIGHT_CHANGE_COLUMNS", "comparison_rows", "difference",
           "estimate", "heading", "notes", "sample_ratio_text", "variant_rows", "verdict", "weight_change_rows"]
