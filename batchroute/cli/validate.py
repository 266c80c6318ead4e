"""`batchroute validate JOB.yaml`: check the job and its whole input without calling any API."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import polars as pl
from rich.console import Console
from rich.table import Table

from batchroute.classify import build_router
from batchroute.config import load_job
from batchroute.dataset import open_dataset
from batchroute.exitcodes import ExitCode

__all__ = ["validate_command"]

_SHOWN_PROBLEMS = 10


@click.command("validate")
@click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))
def validate_command(job_file: Path) -> None:
    """Check JOB_FILE and every row of its input; print rows per tier and any problems.

    Exit codes: 0 every row can be sent; 1 the run would go ahead but some rows would fail or be
    rejected (listed); 6 the job or the input file is unusable (the message says where and why).
    """
    console = Console()
    job = load_job(job_file)
    dataset = open_dataset(job)
    checked = dataset.check()
    router = build_router(job)
    tiers: list[pl.DataFrame] = []
    problems: list[pl.DataFrame] = []
    rejects = 0
    for batch in dataset.batches(batch_rows=job.config.run.batch_rows):
        classified = router.classify(batch.rows)
        tiers.append(classified.group_by("tier").len())
        problems.append(
            classified.filter(pl.col("invalid_reason").is_not_null())
            .select("line", "id", pl.col("invalid_reason").alias("reason"))
            .head(_SHOWN_PROBLEMS)
        )
        if batch.rejects.height:
            rejects += batch.rejects.height
            problems.append(
                batch.rejects.select("line", pl.lit(None, pl.String).alias("id"), "reason")
                .head(_SHOWN_PROBLEMS)
            )
    per_tier = (
        pl.concat(tiers).group_by("tier").agg(pl.col("len").sum()).sort("tier")
        if tiers
        else pl.DataFrame(schema={"tier": pl.String, "len": pl.UInt32})
    )
    total = int(per_tier["len"].sum())
    table = Table(title=f"{job.resolve(job.config.input.path)}: {total} rows")
    table.add_column("tier")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    table.add_column("model")
    for tier, rows in per_tier.iter_rows():
        model = job.config.tier(tier).model if tier in job.config.tiers else "-"
        table.add_row(tier, str(rows), f"{rows / max(total, 1):.1%}", model)
    console.print(table)
    found = pl.concat(problems, how="vertical_relaxed") if problems else None
    invalid = checked.invalid
    if found is not None and found.height:
        console.print(
            f"[yellow]{invalid} row(s) would fail without being sent"
            + (f", {rejects} row(s) would be rejected" if rejects else "")
            + ":[/yellow]"
        )
        for line, row_id, reason in found.head(_SHOWN_PROBLEMS).iter_rows():
            who = f"id {row_id}" if row_id is not None else "row"
            console.print(f"  line {line}, {who}: {reason}")
        sys.exit(int(ExitCode.SOME_FAILED))
    console.print("[green]ok[/green]: every row can be sent")
