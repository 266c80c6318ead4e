"""The Python API: run, plan and load a job from a notebook or a pipeline.

    import batchroute

    result = batchroute.run("jobs/tests.yaml", limit=50)
    result.exit_code, result.cost_usd
    result.results().filter(pl.col("status") == "failed").collect()

`run` blocks until the run ends, like `batchroute run`, and returns a `RunResult` instead of
exiting. Called from a thread that already runs an event loop (a Jupyter cell), it runs the
engine in a worker thread, since a second loop cannot start in the first one's thread; the cell
blocks until the run ends, and signals are not watched (a signal reaches only the main thread),
so interrupting the kernel does not stop the run cleanly. In async code that must not block its
loop, `await batchroute.run_async(...)` runs the same engine in a worker thread.

Errors are raised, never printed: a `BatchrouteError` subclass whose `exit_code` is the
command line's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import polars as pl

from batchroute.config import Job, load_job
from batchroute.engines.ending import RunSummary
from batchroute.engines.local import RunOptions, run_job
from batchroute.exitcodes import ExitCode
from batchroute.progress import Progress
from batchroute.report.tables import ReportSummary

__all__ = ["RunResult", "load_job", "plan", "run", "run_async"]


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: where its files are, its exit code, counts and costs."""

    run_id: str
    run_dir: Path
    exit_code: ExitCode
    counts: dict[str, int]
    """Result rows by status (ok, failed, skipped_budget, ...)."""
    cost_usd: Decimal
    """What the answered rows cost, exact (failed attempts are in `report`)."""
    sent_rows: int
    reused_rows: int
    rejected_rows: int
    message: str | None
    """Why the run stopped early, if it did."""
    report: ReportSummary | None
    cached_rows: int = 0
    """Rows the response cache answered in this session: nothing was sent for them."""

    @property
    def ok(self) -> bool:
        """Every row answered."""
        return self.exit_code == ExitCode.OK

    @property
    def total_cost_usd(self) -> Decimal:
        """Answers plus failed attempts: what the provider bills."""
        if self.report is None:
            return self.cost_usd
        return Decimal(self.report.cost_totals["total_cost_usd"][0] or 0)

    def results(self) -> pl.LazyFrame:
        """results.parquet, one row per accepted input row, as a lazy frame."""
        return pl.scan_parquet(self.run_dir / "results.parquet")

    @classmethod
    def from_summary(cls, summary: RunSummary) -> RunResult:
        """The result of the engine's `RunSummary`."""
        return cls(
            run_id=summary.run_id,
            run_dir=summary.run_dir,
            exit_code=ExitCode(summary.exit_code),
            counts=dict(summary.counts),
            cost_usd=summary.cost_usd,
            sent_rows=summary.sent_rows,
            reused_rows=summary.reused_rows,
            rejected_rows=summary.rejected_rows,
            message=summary.message,
            report=summary.report,
            cached_rows=summary.cached_rows,
        )


def _job(job: Job | Path | str) -> Job:
    return job if isinstance(job, Job) else load_job(job)


def _has_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_here(
    job: Job | Path | str,
    *,
    limit: int | None,
    fresh: bool,
    max_cost_usd: Decimal | float | None,
    retry_failed: bool,
    no_cache: bool,
    refresh_cache: bool,
) -> RunResult:
    options = RunOptions(
        fresh=fresh,
        limit=limit,
        max_cost_usd=None if max_cost_usd is None else Decimal(str(max_cost_usd)),
        retry_failed=retry_failed,
        no_cache=no_cache,
        refresh_cache=refresh_cache,
    )
    summary = run_job(_job(job), options, progress=Progress(live=False, enabled=False))
    return RunResult.from_summary(summary)


def run(
    job: Job | Path | str,
    *,
    limit: int | None = None,
    fresh: bool = False,
    max_cost_usd: Decimal | float | None = None,
    retry_failed: bool = True,
    no_cache: bool = False,
    refresh_cache: bool = False,
) -> RunResult:
    """Run a job (a `Job` or the path of a job file) to its end, as `batchroute run` does.

    The keywords are the command line's options: `limit` (`--limit`), `fresh` (`--fresh`),
    `max_cost_usd` (`--max-cost`), `retry_failed=False` (`--keep-failed`), `no_cache`
    (`--no-cache`), `refresh_cache` (`--refresh-cache`).
    """
    work = functools.partial(
        _run_here,
        job,
        limit=limit,
        fresh=fresh,
        max_cost_usd=max_cost_usd,
        retry_failed=retry_failed,
        no_cache=no_cache,
        refresh_cache=refresh_cache,
    )
    if not _has_running_loop():
        return work()
    # A Jupyter cell: this thread's loop is busy running us; the engine gets its own thread.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchroute-run") as pool:
        return pool.submit(work).result()


async def run_async(
    job: Job | Path | str,
    *,
    limit: int | None = None,
    fresh: bool = False,
    max_cost_usd: Decimal | float | None = None,
    retry_failed: bool = True,
    no_cache: bool = False,
    refresh_cache: bool = False,
) -> RunResult:
    """`run` for async code: the engine runs in a worker thread and the caller's loop goes on."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchroute-run") as pool:
        work = functools.partial(
            _run_here,
            job,
            limit=limit,
            fresh=fresh,
            max_cost_usd=max_cost_usd,
            retry_failed=retry_failed,
            no_cache=no_cache,
            refresh_cache=refresh_cache,
        )
        return await loop.run_in_executor(pool, work)


def plan(
    job: Job | Path | str, *, limit: int | None = None, no_cache: bool = False
) -> pl.DataFrame:
    """Forecast a job offline, as `batchroute plan` does: one row per tier (plan.parquet's),
    with the rows the response cache would answer in `cache_hits` unless `no_cache`."""
    from batchroute.engines.forecast import forecast_job
    from batchroute.pricing.prices import resolve_prices

    loaded = _job(job)
    forecast = forecast_job(loaded, resolve_prices(loaded), limit=limit, use_cache=not no_cache)
    return forecast.frame()
