"""`batchroute runs [JOB.yaml]`: runs with their status, rows and spend, and which resumes next."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from batchroute.config import load_job
from batchroute.store.rundir import RunInfo, find_runs, runs_below, select_run_dir

__all__ = ["runs_command"]


@click.command("runs")
@click.argument("job_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("runs"),
    show_default=True,
    help="Without JOB_FILE: list every run below this folder.",
)
def runs_command(job_file: Path | None, folder: Path) -> None:
    """List runs, oldest first: directory, status, rows by status, spend and sessions.

    With JOB_FILE, the runs of that job (every directory its output.dir matches at any date),
    and the one a plain `batchroute run JOB_FILE` would use next.
    """
    console = Console()
    if job_file is not None:
        job = load_job(job_file)
        runs = find_runs(job)
        nxt = select_run_dir(job)
        title = f"runs of {job.name}"
    else:
        runs = runs_below(folder)
        nxt = None
        title = f"runs below {folder}"
    if not runs:
        console.print(f"no runs ({title})")
        return
    table = Table(title=title)
    for column in ("run directory", "status", "last started", "rows", "ok", "failed", "cost $"):
        table.add_column(
            column, justify="right" if column[0] in "rofc" else "left", no_wrap=column[0] in "rs"
        )
    table.add_column("sessions", justify="right")
    for run in runs:
        table.add_row(*_row(run))
    console.print(table)
    if nxt is not None:
        verb = "resumes" if nxt.resumes else "starts"
        console.print(
            f"`batchroute run {job_file}` {verb} {_shown(nxt.path)} ({nxt.reason})", soft_wrap=True
        )


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _row(run: RunInfo) -> list[str]:
    manifest = run.manifest
    started = run.last_started.strftime("%Y-%m-%d %H:%M")
    if manifest is None:
        return [_shown(run.path), run.status, started, "", "", "", "", ""]
    counts = manifest.counts
    return [
        _shown(run.path),
        run.status,
        started,
        str(sum(counts.values())) if counts else "",
        str(counts.get("ok", 0)) if counts else "",
        str(counts.get("failed", 0)) if counts else "",
        f"{manifest.total_cost_usd:.4f}",
        str(len(manifest.sessions)),
    ]
