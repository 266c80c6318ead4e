"""The summary `batchroute run` prints when it ends."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from batchroute.engines.local import RunSummary
from batchroute.exitcodes import ExitCode

__all__ = ["print_run_summary"]


def print_run_summary(summary: RunSummary, *, console: Console) -> None:
    """Print counts, cost and savings, where the files are, and how the run ended."""
    if summary.report is not None:
        from batchroute.report.terminal import print_report

        print_report(summary.report, console=console)
    counts = Table(title="rows by status", show_header=True)
    counts.add_column("status")
    counts.add_column("rows", justify="right")
    for status, rows in sorted(summary.counts.items()):
        if not rows:
            continue
        counts.add_row(status, str(rows))
    console.print(counts)
    console.print(
        f"sent {summary.sent_rows} rows, reused {summary.reused_rows} from earlier sessions; "
        f"total spend ${summary.cost_usd:.6f} (answers kept + superseded + failed attempts)"
    )
    console.print(f"results: {summary.run_dir / 'results.parquet'}")
    ended = ExitCode(summary.exit_code).name.lower().replace("_", " ")
    line = f"run {summary.run_id}: {ended} (exit {int(summary.exit_code)})"
    if summary.message:
        line += f": {summary.message}"
    console.print(line)
