"""`batchroute plan JOB.yaml`: forecast a job's cost before it spends anything."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from batchroute.config import load_job
from batchroute.dispatch.params import check_job
from batchroute.pricing.forecast import forecast_job, forecast_totals, write_plan
from batchroute.pricing.prices import resolve_prices
from batchroute.report.terminal import print_plan

__all__ = ["plan_command"]


@click.command("plan")
@click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Directory for plan.parquet; put it in a run directory to see forecast beside actual.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Forecast only the first N rows.")
def plan_command(job_file: Path, out_dir: Path, limit: int | None) -> None:
    """Classify every row and forecast the cost per tier and against the baseline, offline."""
    job = load_job(job_file)
    prices = resolve_prices(job)
    forecast = forecast_job(job, prices, limit=limit)
    plan = forecast.frame()
    path = write_plan(plan, out_dir)
    console = Console()
    print_plan(plan, forecast_totals(plan), console=console, invalid_rows=forecast.invalid_rows)
    for note in check_job(job.config):  # what a known model rejects, and what run sends instead
        click.echo(f"request: {note}")
    console.print(f"Wrote {path}")
