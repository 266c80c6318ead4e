"""What a run must tell its operator beyond the figures: spend past the forecast, and the
warnings the run recorded in `run.json` (a tier's model gone for the run, a fallback pushing
spend past the forecast by more than `run.warn_overrun_pct`).

The engine judges the overrun at the end of a run with these functions; the terminal summary,
`batchroute report` and the HTML page read the warnings back from `run.json`.
"""

from __future__ import annotations

from pathlib import Path

from batchroute.errors import OutputError
from batchroute.pricing.forecast import is_overrun
from batchroute.report.tables import ReportSummary
from batchroute.report.terminal import format_usd
from batchroute.store.manifest import read_manifest

__all__ = ["forecast_overrun", "overrun_warning", "recorded_warnings"]


def forecast_overrun(summary: ReportSummary) -> str | None:
    """A sentence when a run spent more than its forecast (fallbacks, retries); else None."""
    s = summary.savings.row(0, named=True)
    forecast, spent = s["forecast_cost_usd"], s["total_cost_usd"]
    if forecast is None or spent is None or spent <= forecast:
        return None
    text = (
        f"spend {format_usd(spent)} passed the forecast {format_usd(forecast)} "
        f"by {format_usd(spent - forecast)}"
    )
    fallbacks = summary.cost_totals["fallback_rows"][0] or 0
    if fallbacks:
        text += f"; {fallbacks:,} rows were answered by a fallback model"
    if s["failed_cost_usd"]:
        text += f"; failed attempts cost {format_usd(s['failed_cost_usd'])}"
    return text


def overrun_warning(summary: ReportSummary, *, threshold_pct: float) -> str | None:
    """The warning when a run's total spend passed its forecast by more than `threshold_pct`."""
    s = summary.savings.row(0, named=True)
    forecast, spent = s["forecast_cost_usd"], s["total_cost_usd"]
    if forecast is None or spent is None:
        return None
    if not is_overrun(spent, forecast, threshold_pct=threshold_pct):
        return None
    share = 100 * spent / forecast
    return (
        f"over the forecast: {forecast_overrun(summary)} ({share:.0f}% of it; "
        f"run.warn_overrun_pct: {threshold_pct:g})"
    )


def recorded_warnings(run_dir: Path) -> tuple[str, ...]:
    """The warnings a run's sessions recorded in its `run.json` (none if it has none)."""
    try:
        manifest = read_manifest(run_dir)
    except OutputError:
        return ()
    return manifest.warnings if manifest is not None else ()
