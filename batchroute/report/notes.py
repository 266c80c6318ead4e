"""The sentences a report says beside its figures, one wording for the terminal, the HTML page
and the run's closing summary: money in dollars (`format_usd`), what the total spend is made of,
what limits the figures (a budget stop, unpriced models), spend past the forecast, and the
warnings the run recorded in `run.json` (a tier's model gone for the run, spend past the
forecast by more than `run.warn_overrun_pct`).

The engine judges the overrun at the end of a run with these functions; the terminal summary,
`batchroute report` and the HTML page read the warnings back from `run.json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from batchroute.errors import OutputError
from batchroute.pricing.forecast import is_overrun
from batchroute.report.tables import ReportSummary
from batchroute.store.manifest import read_manifest

__all__ = [
    "caveats",
    "forecast_overrun",
    "format_usd",
    "overrun_warning",
    "recorded_warnings",
    "spend_breakdown",
]

_CENT_FRACTION = Decimal("0.0001")


def format_usd(value: Decimal | None) -> str:
    """Dollars to four places for display ("unpriced" for a null cost); the data keeps twelve."""
    if value is None:
        return "unpriced"
    shown = value.quantize(_CENT_FRACTION, rounding=ROUND_HALF_EVEN)
    return f"-${-shown:,}" if shown < 0 else f"${shown:,}"


def spend_breakdown(savings: Mapping[str, Any]) -> str:
    """What the total spend is made of, from a savings row."""
    return (
        f"Total spend {format_usd(savings['total_cost_usd'])} = answers kept "
        f"{format_usd(savings['actual_cost_usd'])} + answers superseded by a rerun "
        f"{format_usd(savings['superseded_cost_usd'])} + failed attempts "
        f"{format_usd(savings['failed_cost_usd'])}."
    )


def caveats(savings: Mapping[str, Any]) -> list[str]:
    """What limits a report's figures, from a savings row: a budget stop, unpriced models."""
    notes = []
    if savings["budget_hit"]:
        notes.append("The budget cap was hit: the rows not sent are marked skipped_budget.")
    if savings["unpriced"]:
        notes.append(
            "Some rows ran on unpriced models: their costs are blank, "
            "and totals cover the priced rows only."
        )
    return notes


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
