"""How every engine starts a run: check the job, then claim a run directory.

Both engines (`local.run_job`, `ray.run_job_on_ray`) start through these two steps, so their
checks cannot drift apart again:

1. `check_run`: the price table, the router, the input read once, the API key variables, and
   `--no-wait`'s need of an endpoint that outlives the run. Each failure is a user error that
   stops the run before a run directory exists.
2. `claim_run_dir`: a new run id; the run directory chosen (`store.rundir.select_run_dir`) and
   created; its lock taken, refused at once while another live process holds it; and the
   directory removed again if the session fails before anything is paid. `RunClaim.announce`
   logs `run_started`, then warns when the lock was taken over from a dead process.

Between the two, an engine does what is its own (the Ray engine joins its cluster), so a cluster
it cannot reach leaves no directory behind either.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from batchroute.classify import Router, build_router
from batchroute.config import Job
from batchroute.dataset import Dataset, open_dataset
from batchroute.errors import OutputError
from batchroute.logs import log_event, run_id_var
from batchroute.pricing.prices import PriceTable, resolve_prices
from batchroute.store.lock import RunLock
from batchroute.store.manifest import new_run_id
from batchroute.store.rundir import PARTS_DIR, RunDirChoice, select_run_dir

if TYPE_CHECKING:
    from batchroute.engines.local import RunOptions

__all__ = ["RunClaim", "RunInputs", "check_run", "claim_run_dir"]

logger = logging.getLogger("batchroute")


@dataclass(frozen=True, slots=True)
class RunInputs:
    """What a run is made of, checked: its prices, its router and its input."""

    prices: PriceTable
    router: Router
    dataset: Dataset
    total_rows: int
    """The rows this session reads: the input's, or `--limit` if fewer."""


def check_run(job: Job, options: RunOptions) -> RunInputs:
    """Check everything that needs no run directory; raise the user error that stops the run."""
    prices = resolve_prices(job)
    router = build_router(job)
    dataset = open_dataset(job)
    checked = dataset.check()  # file-level problems stop here, before a run dir exists
    job.check_api_keys()
    if not options.wait:
        from batchroute.dispatch.batch import check_no_wait  # only with --no-wait (issue 15)

        check_no_wait(job)
    return RunInputs(
        prices=prices,
        router=router,
        dataset=dataset,
        total_rows=min(checked.rows, options.limit or checked.rows),
    )


@dataclass(frozen=True, slots=True)
class RunClaim:
    """A run directory this process holds for one session of a run."""

    run_id: str
    choice: RunDirChoice
    lock: RunLock

    @property
    def run_dir(self) -> Path:
        return self.choice.path

    def announce(
        self,
        job: Job,
        *,
        rows: int,
        max_cost_usd: float | None,
        engine: str = "local",
        workers: int | None = None,
    ) -> None:
        """Log `run_started`, and warn if the lock was taken over from a dead process."""
        source = job.resolve(job.config.input.path)
        on = f" on Ray, {workers} workers" if engine == "ray" else ""
        extra = {} if workers is None else {"workers": workers}
        log_event(
            logger,
            "run_started",
            f"run {self.run_id}: {rows} rows from {source} -> {self.run_dir}{on} "
            f"({'resuming' if self.choice.resumes else 'starting'}: {self.choice.reason})",
            job=job.config.name,
            engine=engine,
            **extra,
            resumes=self.choice.resumes,
            run_dir_reason=self.choice.reason,
            job_path=str(job.path),
            input=str(source),
            rows=rows,
            run_dir=str(self.run_dir),
            max_cost_usd=max_cost_usd,
        )
        if self.lock.stale_pid is not None:
            log_event(
                logger,
                "warning",
                f"{self.run_dir}: took over a lock left by process {self.lock.stale_pid}, "
                "which is no longer running; resuming its work",
                level=logging.WARNING,
                reason="stale_lock",
                stale_pid=self.lock.stale_pid,
            )


@contextmanager
def claim_run_dir(job: Job, options: RunOptions) -> Iterator[RunClaim]:
    """Choose, create and lock the run directory for a new session (a new run id), for as long
    as the session lasts; a directory created here is removed if the session fails unpaid."""
    run_id = new_run_id()
    run_id_var.set(run_id)
    choice = select_run_dir(job, run_dir=options.run_dir, fresh=options.fresh)
    with _removed_unless_used(choice.path), RunLock(choice.path, run_id=run_id) as lock:
        yield RunClaim(run_id=run_id, choice=choice, lock=lock)


@contextmanager
def _removed_unless_used(run_dir: Path) -> Iterator[None]:
    """Create the run directory; remove it again if the session fails before anything is paid.

    A run that never started (a missing key variable, a refused lock, a bad endpoint) so leaves
    nothing for `runs` or `report` to stumble on. A directory that existed is left alone.
    """
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the run directory ({exc.strerror}); check output.dir in the job",
            path=run_dir,
        ) from None
    try:
        yield
    except BaseException:
        parts = run_dir / PARTS_DIR
        # Attempts alone are paid for too (a row's climb is made durable before its result).
        if created and not any(parts.glob("results-*")) and not any(parts.glob("attempts-*")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
