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
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Use (and resume) this run directory instead of choosing one from output.dir.",
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
    run_dir: Path | None,
    max_cost: float | None,
    keep_failed: bool,
    log_format: str,
    quiet: bool,
) -> None:
    """Run JOB_FILE: classify every row, send it to its tier's model, write results and reports.

    Running the job again resumes its newest unfinished run (whatever its date), or the run
    directory --run-dir names: rows already answered are not sent again. --fresh starts a new
    run. Exit codes: 0 ok, 1 some rows failed, 3 budget cap hit, 4 aborted, 5 interrupted,
    6 bad job or input, 7 output error.
    """
    if fresh and run_dir is not None:
        raise click.UsageError(
            "--fresh and --run-dir exclude each other: a named directory resumes"
        )
    configure_logging(log_format="json" if log_format == "json" else "text", quiet=quiet)
    job = load_job(job_file)
    options = RunOptions(
        fresh=fresh,
        run_dir=run_dir,
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
