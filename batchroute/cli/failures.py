"""`batchroute failures RUN_DIR`: the rows that did not get an answer, and why."""

from __future__ import annotations

from pathlib import Path

import click
import polars as pl
from rich.table import Table

from batchroute.cli.plan import FORMAT_OPTION
from batchroute.errors import OutputError
from batchroute.report.terminal import OutputFormat, frames_json, frames_tsv, make_console
from batchroute.schema import Status

__all__ = ["failed_rows", "failures_command"]

COLUMNS = (
    "id",
    "line",
    "tier",
    "model_requested",
    "status",
    "error_type",
    "error_message",
    "attempts",
)


def failed_rows(run_dir: Path, *, include_skipped: bool = False) -> pl.DataFrame:
    """Failed rows of a run's results.parquet (and, if asked, rows never sent)."""
    path = run_dir / "results.parquet"
    if not path.is_file():
        raise OutputError(
            "no results.parquet here; point at a run directory (runs/<name>/<date>) whose run "
            "has ended",
            path=run_dir,
        )
    wanted = pl.col("status") == Status.FAILED
    if include_skipped:
        wanted = pl.col("status") != Status.OK
    return pl.scan_parquet(path).filter(wanted).select(COLUMNS).collect()  # in input order


@click.command("failures")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--all",
    "include_skipped",
    is_flag=True,
    help="Also list rows never sent (skipped_budget, skipped_interrupted, skipped_aborted).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Show only the first N rows.")
@FORMAT_OPTION
def failures_command(
    run_dir: Path, include_skipped: bool, limit: int | None, output_format: OutputFormat
) -> None:
    """List RUN_DIR's failed rows with their reasons, and the input lines it rejected."""
    rows = failed_rows(run_dir, include_skipped=include_skipped)
    rejects_path = run_dir / "rejects.parquet"
    rejects = pl.read_parquet(rejects_path) if rejects_path.is_file() else None
    shown = rows.head(limit) if limit else rows
    if output_format == "tsv":
        click.echo(frames_tsv(shown), nl=False)
        return
    if output_format == "json":
        frames = {"rows": shown}
        if rejects is not None:
            frames["rejected"] = rejects
        click.echo(frames_json(frames, total=rows.height))
        return
    console = make_console()
    if rows.height == 0:
        console.print(f"{run_dir}: no failed rows")
    else:
        table = Table(title=f"{rows.height} rows without an answer", title_justify="left")
        for column in COLUMNS:
            table.add_column(column, overflow="fold")
        for row in shown.iter_rows():
            table.add_row(*("" if value is None else str(value) for value in row))
        console.print(table)
        if shown.height < rows.height:
            console.print(f"... and {rows.height - shown.height} more (--limit)")
        by_type = rows.group_by("error_type").len().sort("len", descending=True)
        console.print(
            "by error_type: "
            + ", ".join(f"{kind or 'none'} {count}" for kind, count in by_type.iter_rows())
        )
    if rejects is not None and rejects.height:
        console.print(f"{rejects.height} input lines were rejected ({rejects_path}):")
        for line, reason in rejects.select("line", "reason").head(limit or 20).iter_rows():
            console.print(f"  line {line}: {reason}")
