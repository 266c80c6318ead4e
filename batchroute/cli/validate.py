"""`batchroute validate JOB.yaml`: check the job and its whole input without calling any API."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import polars as pl
from rich.table import Table

from batchroute.classify import build_router
from batchroute.cli.plan import FORMAT_OPTION
from batchroute.config import Job, load_job
from batchroute.dataset import DatasetSummary, open_dataset
from batchroute.dispatch import params
from batchroute.exitcodes import ExitCode
from batchroute.pricing.prices import resolve_prices
from batchroute.report.terminal import OutputFormat, frames_json, frames_tsv, make_console

__all__ = ["check_job", "validate_command"]

SHOWN_PROBLEMS = 10
"""How many problem rows are listed; the counts printed are always the real totals."""

_PROBLEM_SCHEMA = pl.Schema({"line": pl.Int64, "id": pl.String, "reason": pl.String})


@dataclass(frozen=True)
class _Survey:
    """What a dry pass over the input found: rows per tier, and the rows that would not run."""

    summary: DatasetSummary
    per_tier: dict[str, int]
    """Rows that would be sent, by tier."""
    invalid: int
    """Rows that would fail without being sent (reader's or router's `invalid_reason`)."""
    rejected: int
    """Rows `on_invalid_row: skip` would set aside in rejects.parquet."""
    problems: pl.DataFrame
    """The first `SHOWN_PROBLEMS` invalid or rejected rows in file order (`_PROBLEM_SCHEMA`)."""

    @property
    def input_rows(self) -> int:
        return self.summary.input_rows


def _survey(job: Job) -> _Survey:
    """Read and classify the whole input as `run` would, sending nothing and writing nothing.

    File-level problems raise (DatasetError, JobError, PriceError) exactly as `run` raises them.
    """
    resolve_prices(job)
    job.check_api_keys()
    router = build_router(job)
    dataset = open_dataset(job)
    summary = dataset.check()
    counts: dict[str, int] = dict.fromkeys(job.config.tiers, 0)
    invalid = rejected = 0
    shown = pl.DataFrame(schema=_PROBLEM_SCHEMA)
    for batch in dataset.batches():
        classified = router.classify(batch.rows)
        failing = pl.col("invalid_reason").is_not_null()
        sent = classified.filter(~failing).group_by("tier").len()
        for tier, rows in sent.iter_rows():
            counts[tier] = counts.get(tier, 0) + rows
        bad = classified.filter(failing)
        invalid += bad.height
        rejected += batch.rejects.height
        if shown.height < SHOWN_PROBLEMS and (bad.height or batch.rejects.height):
            found = pl.concat(
                [
                    bad.select("line", "id", pl.col("invalid_reason").alias("reason")),
                    batch.rejects.select("line", pl.lit(None, pl.String).alias("id"), "reason"),
                ]
            )
            # Batches come in file order, so the first rows overall are among these.
            shown = pl.concat([shown, found]).sort("line").head(SHOWN_PROBLEMS)
    return _Survey(
        summary=summary, per_tier=counts, invalid=invalid, rejected=rejected, problems=shown
    )


def _share(rows: int, total: int) -> str:
    return f"{rows / total:.1%}" if total else "-"


def _tier_frame(survey: _Survey, *, job: Job) -> pl.DataFrame:
    """Rows per tier (and rows that would fail or be rejected), for --format tsv and json."""
    total = survey.input_rows
    names = list(survey.per_tier)
    rows = list(survey.per_tier.values())
    models = [job.config.tier(t).model if t in job.config.tiers else None for t in names]
    for label, count in (("(would fail)", survey.invalid), ("(rejected)", survey.rejected)):
        if count:
            names.append(label)
            rows.append(count)
            models.append(None)
    return pl.DataFrame(
        {
            "tier": names,
            "rows": rows,
            "share": [r / total if total else None for r in rows],
            "model": models,
        },
        schema={"tier": pl.String, "rows": pl.Int64, "share": pl.Float64, "model": pl.String},
    )


def _tier_table(survey: _Survey, *, job: Job) -> Table:
    total = survey.input_rows
    table = Table()
    table.add_column("tier")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    table.add_column("model")
    for tier, rows in survey.per_tier.items():
        model = job.config.tier(tier).model if tier in job.config.tiers else "-"
        table.add_row(tier, str(rows), _share(rows, total), model)
    if survey.invalid:
        table.add_row("(would fail)", str(survey.invalid), _share(survey.invalid, total), "-")
    if survey.rejected:
        table.add_row("(rejected)", str(survey.rejected), _share(survey.rejected, total), "-")
    return table


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@click.command("validate")
@click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))
@FORMAT_OPTION
def validate_command(job_file: Path, output_format: OutputFormat) -> None:
    """Check JOB_FILE and every row of its input; print rows per tier and any problems.

    Nothing is sent and no run directory is created. Exit codes: 0 every row can be sent;
    1 the run would go ahead but some rows would fail or be rejected (listed); 6 the job or the
    input file is unusable (the message says where and why).
    """
    if not check_job(load_job(job_file), output_format=output_format):
        sys.exit(int(ExitCode.SOME_FAILED))


def check_job(job: Job, *, output_format: OutputFormat = "text") -> bool:
    """Survey `job`'s input as `run` would and print what was found; True if every row can go.

    File-level problems raise, as `run` raises them.
    """
    survey = _survey(job)
    summary = survey.summary
    fine = not survey.invalid and not survey.rejected
    if output_format != "text":
        if output_format == "tsv":
            click.echo(frames_tsv(_tier_frame(survey, job=job)), nl=False)
        else:
            click.echo(
                frames_json(
                    {"tiers": _tier_frame(survey, job=job), "problems": survey.problems},
                    path=str(summary.path),
                    format=summary.format,
                    rows=survey.input_rows,
                    invalid_rows=survey.invalid,
                    rejected_rows=survey.rejected,
                    ok=fine,
                )
            )
        return fine
    click.echo(f"{summary.path}: {_plural(survey.input_rows, 'row')} ({summary.format})")
    make_console().print(_tier_table(survey, job=job))
    for note in params.check_job(job.config):  # a known model's rejects, and what run sends
        click.echo(f"request: {note}")
    if fine:
        click.echo("ok: every row can be sent")
        return True
    parts = []
    if survey.invalid:
        parts.append(f"{_plural(survey.invalid, 'row')} would fail without being sent")
    if survey.rejected:
        parts.append(
            f"{_plural(survey.rejected, 'row')} would be set aside in rejects.parquet "
            "(on_invalid_row: skip)"
        )
    listed = survey.problems.height
    more = survey.invalid + survey.rejected - listed
    click.echo("problems: " + "; ".join(parts) + (f"; the first {listed}:" if more else ":"))
    for line, row_id, reason in survey.problems.iter_rows():
        who = f"id {row_id}" if row_id is not None else "rejected"
        click.echo(f"  line {line}, {who}: {reason}")
    if more:
        click.echo(f"  ... and {more} more")
    return False
