"""`batchroute run JOB.yaml`: run a job, print a summary, exit with a code a scheduler can read."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import click
from rich.console import Console

from batchroute.cli.summary import print_run_summary
from batchroute.config import load_job
from batchroute.engines.local import RunOptions, run_job
from batchroute.logs import configure_logging
from batchroute.progress import Progress

__all__ = ["run_command"]


@click.command("run")
@click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--limit", type=click.IntRange(min=1), help="Run only the first N rows (a smoke test)."
)
@click.option(
    "--fresh", is_flag=True, help="Start over in a new run directory instead of resuming."
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop sending once this many USD are spent or reserved (overrides budget.max_cost_usd).",
)
@click.option(
    "--keep-failed",
    is_flag=True,
    help="On resume, keep rows that failed in an earlier session instead of retrying them.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per log line, for log collectors.",
)
@click.option("--quiet", is_flag=True, help="Only warnings and the final summary.")
def run_command(
    job_file: Path,
    limit: int | None,
    fresh: bool,
    max_cost: float | None,
    keep_failed: bool,
    log_format: str,
    quiet: bool,
) -> None:
    """Run JOB_FILE: classify every row, send it to its tier's model, write results and reports.

    Running the same job again on the same run directory resumes it: rows already answered are
    not sent again. Exit codes: 0 ok, 1 some rows failed, 3 budget cap hit, 4 aborted,
    5 interrupted, 6 bad job or input, 7 output error.
    """
    configure_logging(log_format="json" if log_format == "json" else "text", quiet=quiet)
    job = load_job(job_file)
    options = RunOptions(
        fresh=fresh,
        limit=limit,
        max_cost_usd=Decimal(str(max_cost)) if max_cost is not None else None,
        retry_failed=not keep_failed,
    )
    console = Console(stderr=True)
    progress = Progress(
        live=console.is_terminal and not quiet,
        enabled=not quiet,
        console=console,
        interval_s=job.config.run.progress_interval_s,
    )
    summary = run_job(job, options, progress=progress)
    print_run_summary(summary, console=Console())
    sys.exit(int(summary.exit_code))
