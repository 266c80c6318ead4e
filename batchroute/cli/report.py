"""`batchroute report RUN_DIR`: a run's reports on the terminal and as one HTML file.

Pointed at a folder of run directories, it prints per-day totals and charts their trend.
"""

from __future__ import annotations

from pathlib import Path

import click
import polars as pl
from rich.console import Console

from batchroute.config import load_job
from batchroute.errors import OutputError
from batchroute.pricing.prices import resolve_prices
from batchroute.report.tables import ReportSummary, load_summary, write_reports
from batchroute.report.terminal import print_report, print_trend
from batchroute.report.trend import daily_totals, is_run_dir, read_runs

__all__ = ["report_command"]


def _rebuild(run_dir: Path, job_file: Path) -> ReportSummary:
    job = load_job(job_file)
    previous = run_dir / "savings.parquet"
    budget_hit = previous.is_file() and bool(pl.read_parquet(previous)["budget_hit"].any())
    return write_reports(run_dir, job=job, prices=resolve_prices(job), budget_hit=budget_hit)


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a self-contained HTML report with charts to this file.",
)
@click.option(
    "--job",
    "job_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Rebuild the run's reports from results.parquet with this job's prices first.",
)
def report_command(run_dir: Path, html_path: Path | None, job_file: Path | None) -> None:
    """Print a run's cost report, tiers and savings; or per-day totals of a folder of runs."""
    if not run_dir.is_dir():
        raise OutputError("no such run directory", path=run_dir)
    console = Console()
    if is_run_dir(run_dir):
        summary = _rebuild(run_dir, job_file) if job_file else load_summary(run_dir)
        print_report(summary, console=console)
        if html_path is not None:
            from batchroute.report.html import render_run_html, write_html

            console.print(f"Wrote {write_html(render_run_html(summary), html_path)}")
        return
    if job_file is not None:
        raise OutputError(
            "--job rebuilds one run's reports; point it at a run directory", path=run_dir
        )
    daily = daily_totals(read_runs(run_dir))
    print_trend(daily, console=console)
    if html_path is not None:
        from batchroute.report.html import render_trend_html, write_html

        console.print(f"Wrote {write_html(render_trend_html(daily, folder=run_dir), html_path)}")
