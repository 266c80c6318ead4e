"""The summary `batchroute run` prints when it ends."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from batchroute.engines.ending import RunSummary
from batchroute.exitcodes import ExitCode

__all__ = ["print_run_summary"]

_STOPPED = {
    ExitCode.BUDGET: "stopped early: the budget cap was hit",
    ExitCode.ABORTED: "stopped early: the run aborted",
    ExitCode.INTERRUPTED: "stopped early: interrupted by a signal",
}


def print_run_summary(summary: RunSummary, *, console: Console, tables: bool = True) -> None:
    """Print counts, cost and savings, where the files are, and how the run ended.

    Without `tables` (`--quiet`) only the closing lines are printed: anything that stopped the
    run early or set rows aside, where the results are, and the exit code.
    """
    if tables and summary.report is not None:
        from batchroute.report.terminal import print_report

        print_report(summary.report, console=console)
    if tables:
        counts = Table(title="rows by status", show_header=True)
        counts.add_column("status")
        counts.add_column("rows", justify="right")
        for status, rows in sorted(summary.counts.items()):
            if not rows:
                continue
            counts.add_row(status, str(rows))
        console.print(counts)
        console.print(
            f"sent {summary.sent_rows} rows, reused {summary.reused_rows} from earlier sessions"
            + (
                f", {summary.cached_rows} answered by the response cache; "
                if summary.cached_rows
                else "; "
            )
            + f"total spend ${summary.cost_usd:.6f} (answers kept + superseded + failed attempts)"
        )
    stopped = _STOPPED.get(ExitCode(summary.exit_code))
    if stopped:
        skipped = sum(rows for status, rows in summary.counts.items() if status.startswith("skip"))
        console.print(
            f"[bold yellow]{stopped}[/]; {skipped} rows were not sent "
            f"({summary.message or 'see run.json'})"
        )
    if summary.report is not None:
        from batchroute.report.notes import forecast_overrun

        overrun = forecast_overrun(summary.report)
        if overrun:
            console.print(f"[bold yellow]Over the forecast:[/] {overrun}")
    for warning in summary.warnings:
        console.print(f"[bold yellow]Warning:[/] {escape(warning)}")
    if summary.rejected_rows:
        console.print(
            f"[bold yellow]{summary.rejected_rows} input lines were rejected[/] "
            f"(on_invalid_row: skip): {summary.run_dir / 'rejects.parquet'}"
        )
    console.print(f"results: {summary.run_dir / 'results.parquet'}")
    ended = ExitCode(summary.exit_code).name.lower().replace("_", " ")
    line = f"run {summary.run_id}: {ended} (exit {int(summary.exit_code)})"
    if summary.message:
        line += f": {summary.message}"
    console.print(line)
