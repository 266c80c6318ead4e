"""`batchroute report [RUN_DIR]`: a run's reports on the terminal and as one HTML file.

Pointed at a folder of run directories, it prints per-day totals and charts their trend. Without
a directory, `--job JOB` takes that job's latest run.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import click
import polars as pl
from rich.markup import escape

from batchroute.cli.plan import FORMAT_OPTION
from batchroute.config import Job, load_job
from batchroute.errors import OutputError
from batchroute.pricing.prices import resolve_prices
from batchroute.report.notes import recorded_warnings
from batchroute.report.tables import ReportSummary, load_summary, write_reports
from batchroute.report.terminal import (
    OutputFormat,
    frames_json,
    frames_tsv,
    make_console,
    print_report,
    print_trend,
)
from batchroute.report.trend import daily_totals, is_run_dir, read_runs
from batchroute.store.manifest import read_manifest

__all__ = ["latest_run_dir", "report_command"]

_TEMPLATE_FIELD = re.compile(r"\{[^{}]*\}")


def _rebuild(run_dir: Path, job: Job) -> ReportSummary:
    previous = run_dir / "savings.parquet"
    budget_hit = previous.is_file() and bool(pl.read_parquet(previous)["budget_hit"].any())
    return write_reports(run_dir, job=job, prices=resolve_prices(job), budget_hit=budget_hit)


def latest_run_dir(job: Job) -> Path:
    """The job's run directory whose latest session started last (`output.dir`'s matches)."""
    template = job.config.output.dir.replace("{name}", job.name)
    pattern = _TEMPLATE_FIELD.sub("*", template)
    found: list[tuple[datetime, Path]] = []
    for candidate in {*Path.cwd().glob(pattern), *Path.cwd().glob(pattern + ".*")}:
        if not candidate.is_dir():
            continue
        manifest = read_manifest(candidate)
        if manifest is None or Path(manifest.job_path).name != job.path.name:
            continue
        latest = manifest.sessions[-1].started_at if manifest.sessions else manifest.started_at
        found.append((latest, candidate))
    if not found:
        raise OutputError(
            f"no run of job '{job.name}' found under {pattern}; run it first, or name a run "
            "directory",
            path=job.path,
        )
    return max(found)[1]


def _print_machine(frames: dict[str, pl.DataFrame], output_format: OutputFormat) -> None:
    if output_format == "tsv":
        click.echo(frames_tsv(next(iter(frames.values()))), nl=False)
    else:
        click.echo(frames_json(frames))


@click.command("report")
@click.argument("run_dir", required=False, type=click.Path(path_type=Path, file_okay=False))
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
    help="Without RUN_DIR: report this job's latest run. With RUN_DIR: rebuild that run's "
    "reports from results.parquet with this job's prices first.",
)
@FORMAT_OPTION
def report_command(
    run_dir: Path | None,
    html_path: Path | None,
    job_file: Path | None,
    output_format: OutputFormat,
) -> None:
    """Print a run's cost report, tiers and savings; or per-day totals of a folder of runs.

    With --format tsv the cost report (or the per-day totals) is printed as tab-separated
    values; with --format json every report table is printed as one JSON document.
    """
    rebuild = run_dir is not None and job_file is not None
    if run_dir is None:
        if job_file is None:
            raise click.UsageError("name a RUN_DIR, or pass --job JOB to report its latest run")
        run_dir = latest_run_dir(load_job(job_file))
    if not run_dir.is_dir():
        raise OutputError("no such run directory", path=run_dir)
    console = make_console()
    if is_run_dir(run_dir):
        if rebuild and job_file is not None:
            summary = _rebuild(run_dir, load_job(job_file))
        else:
            summary = load_summary(run_dir)
        if output_format != "text":
            _print_machine(
                {
                    "cost_report": summary.cost_report,
                    "cost_totals": summary.cost_totals,
                    "tier_distribution": summary.tier_distribution,
                    "savings": summary.savings,
                    "model_attempts": summary.model_attempts,
                },
                output_format,
            )
        else:
            console.print(f"Run directory: {run_dir}", style="dim")
            print_report(summary, console=console)
            for warning in recorded_warnings(run_dir):
                console.print(f"[bold yellow]Warned during the run:[/] {escape(warning)}")
        if html_path is not None:
            from batchroute.report.html import render_run_html, write_html

            written = write_html(render_run_html(summary), html_path)
            if output_format == "text":
                console.print(f"Wrote {written}")
        return
    if job_file is not None:
        raise OutputError(
            "--job rebuilds one run's reports; point it at a run directory", path=run_dir
        )
    daily = daily_totals(read_runs(run_dir))
    if output_format != "text":
        _print_machine({"daily": daily}, output_format)
    else:
        print_trend(daily, console=console)
    if html_path is not None:
        from batchroute.report.html import render_trend_html, write_html

        written = write_html(render_trend_html(daily, folder=run_dir), html_path)
        if output_format == "text":
            console.print(f"Wrote {written}")
