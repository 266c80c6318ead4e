"""How a session ends: its exit code, its summary, its figures in run.json, its last log event.

A session ends in one of six ways, decided by `ending` from what the session saw, in this
order of precedence (the first that holds wins):

    batches still open at the Batch API   SUBMITTED      run again later to collect
    a second signal, or one signal        INTERRUPTED    the stop message says which
    a 401/403 or an abort                 ABORTED        the stop message says why
    the budget cap reached                BUDGET         the stop message says so
    some row failed                       SOME_FAILED
    otherwise                             OK

The local session and the Ray driver both end through here (a shard reports to the driver
instead), so `run.json`, the closing lines and the `run_finished` event say the same thing
whichever engine ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchroute.exitcodes import ExitCode
from batchroute.logs import log_event
from batchroute.report import ReportSummary
from batchroute.schema import Status

__all__ = ["RunSummary", "ending", "log_finished", "manifest_figures"]

logger = logging.getLogger("batchroute")


@dataclass(slots=True)
class RunSummary:
    """How a run ended, for the CLI to print and exit with."""

    run_id: str
    run_dir: Path
    exit_code: ExitCode
    counts: dict[str, int]
    cost_usd: Decimal
    reused_rows: int
    sent_rows: int
    message: str | None = None
    report: ReportSummary | None = None
    rejected_rows: int = 0
    """Input lines `on_invalid_row: skip` set aside in rejects.parquet."""
    warnings: tuple[str, ...] = ()
    """What the operator was warned about (a model gone for the run, spend past the forecast
    by more than `run.warn_overrun_pct`); each was also logged on stderr, and is in run.json."""
    cached_rows: int = 0
    """Rows the response cache answered in this session: nothing was sent for them."""


def ending(
    *,
    batches_open: bool,
    hard_stop: bool,
    stop_status: str | None,
    stop_message: str,
    counts: dict[str, int],
) -> tuple[ExitCode, str | None]:
    """The session's exit code and the message that explains it (see the module's table).

    `stop_status` is the `Status.SKIPPED_*` the session stopped sending with, or None;
    `counts` are the assembled results' rows per status (empty when nothing was assembled).
    """
    if batches_open:
        return ExitCode.SUBMITTED, "batches are open at the Batch API; run again later to collect"
    if hard_stop or stop_status == Status.SKIPPED_INTERRUPTED:
        return ExitCode.INTERRUPTED, stop_message
    if stop_status == Status.SKIPPED_ABORTED:
        return ExitCode.ABORTED, stop_message
    if stop_status == Status.SKIPPED_BUDGET:
        return ExitCode.BUDGET, stop_message
    if counts.get(Status.FAILED, 0):
        return ExitCode.SOME_FAILED, None
    return ExitCode.OK, None


def manifest_figures(summary: RunSummary | None) -> dict[str, Any]:
    """What run.json records of a finished session (`RunManifest.for_session`'s arguments):
    nothing while the session runs, since a crash must leave it looking unfinished."""
    if summary is None:
        return {}
    figures: dict[str, Any] = {
        "counts": summary.counts,
        "total_cost_usd": summary.cost_usd,
        "exit_code": summary.exit_code,
        "stop_reason": summary.message,
        "rejected_rows": summary.rejected_rows,
    }
    report = summary.report
    if report is not None:
        savings = report.savings.row(0, named=True)
        figures["spend"] = {  # the three parts of the total spend
            "answers_kept_usd": report.cost_usd,
            "answers_superseded_usd": report.superseded_cost_usd,
            "failed_attempts_usd": report.failed_cost_usd,
        }
        figures["cache_hits"] = savings["cache_hits"]
        figures["cache_saved_usd"] = savings["cache_saved_usd"] or Decimal(0)
    return figures


def log_finished(summary: RunSummary) -> None:
    """The `run_finished` event: how the run ended, its counts, spend and forecast."""
    forecast = None
    if summary.report is not None:
        forecast = summary.report.savings["forecast_cost_usd"][0]
    ended = ExitCode(summary.exit_code).name.lower()
    log_event(
        logger,
        "run_finished",
        f"run {summary.run_id} finished: {ended} (exit {int(summary.exit_code)})"
        + (f": {summary.message}" if summary.message else ""),
        level=logging.INFO if summary.exit_code == ExitCode.OK else logging.WARNING,
        exit_code=int(summary.exit_code),
        exit_status=ended,
        stop_reason=summary.message,
        counts=summary.counts,
        sent_rows=summary.sent_rows,
        reused_rows=summary.reused_rows,
        cached_rows=summary.cached_rows,
        rejected_rows=summary.rejected_rows,
        cost_usd=summary.cost_usd,
        forecast_cost_usd=forecast,
        run_dir=str(summary.run_dir),
        warnings=list(summary.warnings),
    )
