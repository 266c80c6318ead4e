"""`batchroute run JOB.yaml`: run a job, print a summary, exit with a code a scheduler can read."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import click

from batchroute.config import load_job
from batchroute.engines.local import RunOptions, run_job
from batchroute.exitcodes import ExitCode
from batchroute.logs import configure_logging
from batchroute.progress import Progress
from batchroute.report.terminal import make_console

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
    "--no-cache",
    is_flag=True,
    help="Neither read nor write the response cache: send every request, store no answer.",
)
@click.option(
    "--refresh-cache",
    is_flag=True,
    help="Send every request, even one the response cache holds, and store the fresh answers.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate the job and every row, and print the forecast; send nothing, write nothing.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: every stderr line is a JSON event (run_started, progress, warning, "
    "rows_rejected, run_finished) and stdout stays empty.",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Batch-mode tiers: wait for the Batch API and collect (default), or submit and exit 9; "
    "a later run collects.",
)
@click.option("--quiet", is_flag=True, help="Only warnings and the closing lines; no tables.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    help="Send from this process (local) or from a Ray cluster (ray); overrides engine.kind.",
)
@click.option(
    "--address",
    help="The Ray cluster to join (auto, HOST:6379, ray://HOST:10001); overrides engine.address.",
)
def run_command(
    job_file: Path,
    limit: int | None,
    fresh: bool,
    run_dir: Path | None,
    max_cost: float | None,
    keep_failed: bool,
    no_cache: bool,
    refresh_cache: bool,
    dry_run: bool,
    log_format: str,
    wait: bool,
    quiet: bool,
    engine: str | None,
    address: str | None,
) -> None:
    """Run JOB_FILE: classify every row, send it to its tier's model, write results and reports.

    Running the job again resumes its newest unfinished run (whatever its date), or the run
    directory --run-dir names: rows already answered are not sent again. --fresh starts a new
    run. Exit codes: 0 ok, 1 some rows failed, 3 budget cap hit, 4 aborted, 5 interrupted,
    6 bad job or input, 7 output error, 9 batches submitted (run again to collect).
    """
    if fresh and run_dir is not None:
        raise click.UsageError(
            "--fresh and --run-dir exclude each other: a named directory resumes"
        )
    if no_cache and refresh_cache:
        raise click.UsageError(
            "--no-cache and --refresh-cache exclude each other: --refresh-cache writes the cache"
        )
    json_logs = log_format == "json"
    # A JSON log has no tables to drop: --quiet drops its progress events, never the run's end.
    configure_logging(log_format="json" if json_logs else "text", quiet=quiet and not json_logs)
    job = load_job(job_file)
    if dry_run:
        from batchroute.cli.plan import show_plan
        from batchroute.cli.validate import check_job

        fine = check_job(job, output_format="json" if json_logs else "text")
        if not json_logs:
            show_plan(job, limit=limit, output_format="text", out_dir=None)
        sys.exit(int(ExitCode.OK if fine else ExitCode.SOME_FAILED))
    options = RunOptions(
        fresh=fresh,
        run_dir=run_dir,
        limit=limit,
        max_cost_usd=Decimal(str(max_cost)) if max_cost is not None else None,
        retry_failed=not keep_failed,
        wait=wait,
        no_cache=no_cache,
        refresh_cache=refresh_cache,
        engine=engine,
        address=address,
    )
    console = make_console(stderr=True)
    progress = Progress(
        live=console.is_terminal and not quiet and not json_logs,
        enabled=not quiet,
        console=console,
        interval_s=job.config.run.progress_interval_s,
    )
    summary = run_job(job, options, progress=progress)
    if not json_logs:  # the run_finished event carries the summary; stdout stays empty
        from batchroute.cli.summary import print_run_summary

        print_run_summary(summary, console=make_console(), tables=not quiet)
    sys.exit(int(summary.exit_code))
