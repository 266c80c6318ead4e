"""`batchroute plan JOB.yaml`: forecast a job's cost before it spends anything."""

from __future__ import annotations

from pathlib import Path

import click

from batchroute.config import Job, load_job
from batchroute.dispatch import params
from batchroute.engines.forecast import forecast_job
from batchroute.pricing.forecast import forecast_totals
from batchroute.pricing.prices import resolve_prices
from batchroute.report.terminal import (
    OutputFormat,
    frames_json,
    frames_tsv,
    make_console,
    print_plan,
)
from batchroute.store.plan import write_plan

__all__ = ["FORMAT_OPTION", "plan_command", "show_plan"]

FORMAT_OPTION = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "tsv", "json"]),
    default="text",
    show_default=True,
    help="text: tables for people; tsv or json: every figure exact, for scripts.",
)


def show_plan(
    job: Job,
    *,
    limit: int | None,
    output_format: OutputFormat,
    out_dir: Path | None,
    no_cache: bool = True,
) -> None:
    """Forecast `job` and print it in `output_format`; write plan.parquet only into `out_dir`.

    Unless `no_cache`, the rows the response cache would answer are counted as cache hits
    (looked up by key, read-only) instead of being forecast.
    """
    prices = resolve_prices(job)
    forecast = forecast_job(job, prices, limit=limit, use_cache=not no_cache)
    plan = forecast.frame()
    totals = forecast_totals(plan)
    path = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = write_plan(plan, out_dir)
    if output_format == "tsv":
        click.echo(frames_tsv(plan), nl=False)
    elif output_format == "json":
        click.echo(
            frames_json(
                {"plan": plan},
                totals={
                    "rows": totals.rows,
                    "input_tokens": totals.input_tokens,
                    "output_tokens": totals.output_tokens,
                    "forecast_cost_usd": totals.cost_usd,
                    "baseline_cost_usd": totals.baseline_cost_usd,
                    "unpriced": totals.unpriced,
                    "invalid_rows": forecast.invalid_rows,
                    "cache_hits": totals.cache_hits,
                },
                written=path,
            )
        )
    else:
        console = make_console()
        print_plan(plan, totals, console=console, invalid_rows=forecast.invalid_rows)
        for note in params.check_job(job.config):  # what a known model rejects, and what run sends
            click.echo(f"request: {note}")
        if path is not None:
            console.print(f"Wrote {path}")


@click.command("plan")
@click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write plan.parquet into this directory (a run directory shows forecast beside "
    "actual). Without it nothing is written.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Forecast only the first N rows.")
@click.option(
    "--no-cache",
    is_flag=True,
    help="Forecast every row as sent, without looking rows up in the response cache.",
)
@FORMAT_OPTION
def plan_command(
    job_file: Path,
    out_dir: Path | None,
    limit: int | None,
    no_cache: bool,
    output_format: OutputFormat,
) -> None:
    """Classify every row and forecast the cost per tier and against the baseline, offline.

    Rows the response cache would answer are shown as cache hits costing $0, apart from the
    forecast.
    """
    show_plan(
        load_job(job_file),
        limit=limit,
        output_format=output_format,
        out_dir=out_dir,
        no_cache=no_cache,
    )
