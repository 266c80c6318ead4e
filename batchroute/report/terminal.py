"""The reports as rich tables on a terminal: a run's summary, a plan, and per-day trends."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import polars as pl
from rich import box
from rich.console import Console
from rich.table import Table

from batchroute.pricing.forecast import ForecastTotals
from batchroute.report.cache import cache_saving_text
from batchroute.report.notes import caveats, format_usd, spend_breakdown
from batchroute.report.tables import ReportSummary

__all__ = [
    "OutputFormat",
    "format_usd",
    "frames_json",
    "frames_tsv",
    "make_console",
    "print_plan",
    "print_report",
    "print_trend",
]

OutputFormat = Literal["text", "tsv", "json"]

_PIPE_WIDTH = 4096
"""Columns a console writes when it is not a terminal: wide enough that nothing wraps or cuts."""


def make_console(*, stderr: bool = False) -> Console:
    """A console for a terminal, or, when piped or under cron, one that never wraps or truncates.

    Rich otherwise assumes 80 columns off a terminal and folds or cuts table cells to fit.
    """
    console = Console(stderr=stderr, highlight=False)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=_PIPE_WIDTH, soft_wrap=True, highlight=False)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def frames_json(frames: Mapping[str, pl.DataFrame], **extra: Any) -> str:
    """One JSON document: each frame as a list of row objects; money as exact decimal strings."""
    document: dict[str, Any] = {
        name: [{k: _plain(v) for k, v in row.items()} for row in frame.iter_rows(named=True)]
        for name, frame in frames.items()
    }
    document.update({k: _plain(v) for k, v in extra.items()})
    return json.dumps(document, default=str, indent=2)


def frames_tsv(frame: pl.DataFrame) -> str:
    """A frame as tab-separated values with a header; every number at full precision."""
    text: str = frame.write_csv(separator="\t")
    return text


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _int(value: int | None) -> str:
    return "0" if value is None else f"{value:,}"


def _table(title: str, columns: tuple[str, ...], *, labels: int = 2) -> Table:
    """A table of `labels` name columns, which may wrap, then figures, which never do."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for i, name in enumerate(columns):
        if i < labels:
            table.add_column(name, justify="left", overflow="fold", min_width=10)
        else:
            table.add_column(name, justify="right", no_wrap=True)
    return table


def print_report(summary: ReportSummary, *, console: Console) -> None:
    """Print a run's cost report, tier distribution and savings."""
    total = summary.cost_totals.row(0, named=True)
    rows = [*summary.cost_report.iter_rows(named=True), {**total, "tier": "total", "model": ""}]
    if total["unpriced"]:
        rows[-1]["model"] = "* unpriced rows"
    # two narrow tables rather than one wide one: each fits an 80-column terminal
    costs = _table(
        "Cost by tier and model",
        ("tier", "model", "rows", "failed", "fallback", "kept $", "failed $", "superseded $"),
    )
    usage = _table(
        "Tokens and latency of answered rows",
        ("tier", "model", "in tok", "out tok", "p50 ms", "p95 ms"),
    )
    for i, row in enumerate(rows):
        last = i == len(rows) - 1
        style = "bold" if last else None
        costs.add_row(
            row["tier"] or "(rerun)",
            "—" if row["model"] is None else row["model"],
            _int(row["rows"]),
            _int(row["failed"]),
            _int(row["fallback_rows"]),
            format_usd(row["cost_usd"]),
            format_usd(row["failed_cost_usd"]),
            format_usd(row["superseded_cost_usd"]),
            end_section=i == len(rows) - 2,
            style=style,
        )
        usage.add_row(
            row["tier"] or "(rerun)",
            "—" if row["model"] is None else row["model"],
            _int(row["input_tokens"]),
            _int(row["output_tokens"]),
            _ms(row["latency_p50_ms"]),
            _ms(row["latency_p95_ms"]),
            end_section=i == len(rows) - 2,
            style=style,
        )
    console.print(costs)
    console.print(usage)
    if summary.cost_report["tier"].null_count():
        console.print(
            "(rerun): answers a rerun replaced, and failed attempts of rows it sent again.",
            style="dim",
        )

    tiers = _table("Tier distribution", ("tier", "model", "rows", "share", "forecast", "total $"))
    has_plan = (
        summary.tier_distribution["forecast_rows"].null_count() < summary.tier_distribution.height
    )
    for row in summary.tier_distribution.iter_rows(named=True):
        tiers.add_row(
            row["tier"] or "(rerun)",
            "—" if row["model"] is None else row["model"],
            _int(row["rows"]),
            _pct(row["share"] * 100),
            format_usd(row["forecast_cost_usd"]) if has_plan and row["tier"] else "—",
            format_usd(row["total_cost_usd"]),
        )
    console.print(tiers)

    s = summary.savings.row(0, named=True)
    savings = _table(
        "Routing against one model for every row",
        ("scenario", "model", "cost", "saved", "saved %"),
    )
    savings.add_row("answers kept, as routed", "", format_usd(s["actual_cost_usd"]), "", "")
    savings.add_row("total spend", "", format_usd(s["total_cost_usd"]), "", "")
    savings.add_row(
        "baseline",
        s["baseline_model"],
        format_usd(s["baseline_cost_usd"]),
        format_usd(s["savings_vs_baseline_usd"]),
        _pct(s["savings_vs_baseline_pct"]),
    )
    savings.add_row(
        "all strongest",
        s["strongest_model"] or "—",
        format_usd(s["strongest_cost_usd"]),
        format_usd(s["savings_vs_strongest_usd"]),
        _pct(s["savings_vs_strongest_pct"]),
    )
    console.print(savings)
    console.print(
        f"{spend_breakdown(s)} Savings are counted on total spend, against the answers kept "
        "priced on one model."
    )
    if s.get("batch_rows"):  # reports of runs before batch mode have no such column
        console.print(
            f"Batch mode: {s['batch_rows']:,} rows answered through the Batch API saved "
            f"{format_usd(s['batch_saving_usd'])} against online prices, beside routing's "
            "saving above (and already in it)."
        )
    cached = cache_saving_text(s, format_usd)
    if cached:
        console.print(cached)
    checks = s.get("checks_and_escalations_cost_usd")
    if checks:  # None before verify existed, 0 when nothing was rejected or escalated
        console.print(
            f"Routing saved {format_usd(s['savings_vs_baseline_usd'])} against "
            f"{s['baseline_model']} after paying {format_usd(checks)} for checks and "
            f"escalations ({format_usd(s['verify_rejected_cost_usd'])} for answers the checks "
            f"rejected, {format_usd(s['escalation_cost_usd'])} on stronger tiers for "
            f"{s['escalated_rows']} escalated row(s), {format_usd(s.get('judge_cost_usd'))} "
            "for the judge)."
        )
    if s["repriced"]:
        console.print(
            f"Repriced: every figure was priced again from the recorded usage with "
            f"{s['price_source']} (sha256 {s['price_sha256'][:12]}), not the run's own prices."
        )
    forecast = s["forecast_cost_usd"]
    if forecast is not None:
        share = f" ({float(s['total_cost_usd'] / forecast):.0%} of it)" if forecast else ""
        console.print(
            f"Forecast {format_usd(forecast)} (output priced at expected_output_tokens or "
            f"max_tokens); spent {format_usd(s['total_cost_usd'])}{share}."
        )
    for caveat in caveats(s):
        console.print(caveat, style="bold yellow", markup=False)
    console.print(f"Prices: {s['price_source']} (sha256 {s['price_sha256'][:12]})", style="dim")


def print_plan(
    plan: pl.DataFrame, totals: ForecastTotals, *, console: Console, invalid_rows: int = 0
) -> None:
    """Print a forecast: per tier rows, share and cost, and the total against the baseline."""
    table = _table(
        "Forecast (no API called)",
        ("tier", "model", "rows", "share", "in tok", "out tok", "forecast", "baseline"),
    )
    for i, row in enumerate(plan.iter_rows(named=True)):
        table.add_row(
            row["tier"],
            row["model"],
            _int(row["rows"]),
            _pct(row["share"] * 100),
            _int(row["input_tokens"]),
            _int(row["output_tokens"]),
            format_usd(row["forecast_cost_usd"]),
            format_usd(row["baseline_cost_usd"]),
            end_section=i == plan.height - 1,
        )
    table.add_row(
        "total",
        "",
        _int(totals.rows),
        "100.0%" if totals.rows else "—",
        _int(totals.input_tokens),
        _int(totals.output_tokens),
        format_usd(totals.cost_usd),
        format_usd(totals.baseline_cost_usd),
        style="bold",
    )
    console.print(table)
    baseline = plan["baseline_model"][0] if plan.height else "the baseline"
    saved = totals.savings_usd
    if saved is not None and totals.baseline_cost_usd:
        share = float(saved / totals.baseline_cost_usd * 100)
        console.print(
            f"Routing saves {format_usd(saved)} ({share:.1f}%) against {baseline} for every row."
        )
    if "judge_cost_usd" in plan.columns:
        judging = Decimal(plan["judge_cost_usd"].sum())
        climbing = Decimal(plan["escalation_cost_usd"].sum())
        if judging or climbing:
            console.print(
                f"The forecast includes checks: {format_usd(judging)} for the judge and "
                f"{format_usd(climbing)} for escalations (verify.expected_failure_rate)."
            )
    if invalid_rows:
        console.print(f"{invalid_rows:,} invalid rows will not be sent and cost nothing.")
    if totals.cache_hits:
        console.print(
            f"{totals.cache_hits:,} rows would be answered by the response cache: $0, "
            "outside the forecast above (plan --no-cache forecasts them as sent)."
        )
    if totals.unpriced:
        console.print("[bold yellow]Some tiers use unpriced models:[/] the total is unknown.")
    if plan.height:
        console.print(
            f"Prices: {plan['price_source'][0]} (sha256 {plan['price_sha256'][0][:12]})",
            style="dim",
        )


def print_trend(daily: pl.DataFrame, *, console: Console) -> None:
    """Print per-day totals of a folder of runs."""
    table = _table(
        "Per-day totals",
        ("date", "job", "runs", "rows", "spend", "kept", "baseline", "saved", "saved %"),
        labels=2,
    )
    for row in daily.iter_rows(named=True):
        table.add_row(
            str(row["date"]) + (" *" if row["unpriced"] else ""),
            row["job"],
            _int(row["runs"]),
            _int(row["rows"]),
            format_usd(row["total_cost_usd"]),
            format_usd(row["actual_cost_usd"]),
            format_usd(row["baseline_cost_usd"]),
            format_usd(row["savings_vs_baseline_usd"]),
            _pct(row["savings_vs_baseline_pct"]),
        )
    console.print(table)
    if daily["unpriced"].any():
        console.print("* some runs that day used unpriced models; totals cover priced rows only.")
