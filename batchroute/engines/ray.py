"""The Ray engine: the same job, results and reports, with rows sent from a Ray cluster.

The driver (this process) starts as the local engine does (`startup.py`: the same checks, then
the same run-directory choice, lock and stale-lock warning), refusing only what Ray cannot run
(batch-mode tiers). It does what the single-process session does before and after sending:
it reads and classifies the input, records the rows it read, settles invalid and already
answered rows, and at the end compacts every journal, assembles results.parquet and writes the
reports and run.json. While it reads, it cuts the input into `workers` shards by row-index range
and, as soon as a shard's last row is read, runs the shard's rows left to send as a Ray task
(`shard.run_shard`), which sends them through batchroute's own dispatcher. One `ClusterLimits`
actor (`leases.py`) holds each model's rate and the budget cap for the whole cluster; one
`RunControl` actor carries progress to the driver and stop requests to the workers.

The run directory must be one directory that the driver and every worker see (a shared
filesystem, see the README): workers write their journals there, fsynced, and the driver reads
them back. The response cache need not be shared: the driver looks each batch up before cutting
it into shards, and a `CacheHost` actor on the driver's node keeps the file for the workers
(`cache/cluster.py` says why).

The end of a run is the local engine's (`Session._assemble_and_report`, the over-forecast check).
The warnings the workers' fleets raise (a model gone for the run, spend running past the
forecast) reach the driver with their progress (`RunControl`). The driver logs each one once,
as it arrives, and records it in run.json, as a local run does.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import FrameType
from typing import Any

import polars as pl

from batchroute.cache.cluster import start_cache_host
from batchroute.config import Job
from batchroute.engines.ending import RunSummary, log_finished
from batchroute.engines.leases import ClusterLimits
from batchroute.engines.local import BatchSource, Classify, RunOptions, Session
from batchroute.engines.shard import (
    RunControl,
    ShardResult,
    ShardSpec,
    add_counts,
    run_shard,
)
from batchroute.engines.startup import check_run, claim_run_dir
from batchroute.errors import EngineUnavailableError, JobError, OutputError
from batchroute.logs import log_event
from batchroute.progress import Progress, TierCounts
from batchroute.schema import Status
from batchroute.store.journal import recover_journals
from batchroute.store.manifest import read_manifest, write_manifest
from batchroute.store.parts import completed_keys

__all__ = ["run_job_on_ray"]

CONNECT_TIMEOUT_S = 5.0
"""How long `--address HOST:PORT` may take to accept a connection before the run gives up."""
TASK_RETRIES = 3
"""How many times Ray runs a shard again whose worker died."""

logger = logging.getLogger("batchroute")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EngineUnavailableError(
            "the Ray engine needs the ray package, which is not installed here; install it "
            "with: pip install 'batchroute[ray]'  (or run with --engine local)"
        ) from None
    return ray


def run_job_on_ray(job: Job, options: RunOptions, *, progress: Progress) -> RunSummary:
    """`run_job` on a Ray cluster (`engine.kind: ray` or `--engine ray`)."""
    ray = _import_ray()
    inputs = check_run(job, options)
    _check_online_only(job)
    engine = job.config.engine
    address = options.address or engine.address
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineUnavailableError(
                f"cannot reach the Ray cluster at {address or '(a new local instance)'}: {exc}; "
                "start one with `ray start --head`, or check engine.address / --address"
            ) from None
    workers = engine.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    with claim_run_dir(job, options) as claim:
        run = _DriverRun(
            job,
            options,
            run_id=claim.run_id,
            run_dir=claim.run_dir,
            prices=inputs.prices,
            progress=progress,
            total_rows=inputs.total_rows,
        )
        claim.announce(
            job,
            rows=run.total_rows,
            max_cost_usd=run.budget.max_cost_usd,
            engine="ray",
            workers=workers,
        )
        summary = run.execute_on_ray(ray, workers, inputs.dataset.batches, inputs.router.classify)
    log_finished(summary)
    return summary


def _check_online_only(job: Job) -> None:
    """Refuse batch-mode tiers: the Ray engine sends every row online.

    Its shards would each spool and submit batches into the one run directory (they clobber each
    other's spool), and with `--no-wait` the driver would report a run whose batches are open.
    """
    cfg = job.config
    batched = [tier for tier in cfg.tiers if cfg.tier_mode(tier) == "batch"]
    if batched:
        raise JobError(
            f"tier {batched[0]} goes through the Batch API (mode: batch), which the Ray engine "
            "does not do yet; run this job with --engine local, or set the tier's mode: online",
            path=job.path,
        )


def _check_reachable(address: str | None) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise EngineUnavailableError(
            f"cannot reach the Ray cluster at {address} ({reason}); start one with "
            "`ray start --head` there, or check engine.address / --address"
        ) from None


class _DriverRun(Session):
    """The driver's session: everything a session does except sending."""

    engine_record: dict[str, Any] | None = None
    limiter_calls = 0
    """Calls the lease actor served (rate leases, budget leases, returns)."""

    def execute_on_ray(
        self, ray: Any, workers: int, batches: BatchSource, classify: Classify
    ) -> RunSummary:
        previous = read_manifest(self.run_dir)
        done = completed_keys(self.run_dir, retry_failed=self.options.retry_failed)
        write_manifest(self.run_dir, self._manifest(previous, finished=False))
        with self._sending(previous) as base_urls:
            results = self._send_on_cluster(ray, workers, batches, classify, done, base_urls)
        recover_journals(self.run_dir, part_rows=self.job.config.output.checkpoint_rows)
        self.engine_record = {
            "kind": "ray",
            "workers": workers,
            "nodes": sorted({result.node for result in results}),
            "limiter_calls": self.limiter_calls,
        }
        if self.hard_stop:
            summary = self._summary(counts={}, report=None)
            write_manifest(self.run_dir, self._ray_manifest(previous, summary))
            return summary
        counts, report = self._assemble_and_report()
        self._warn_if_over_forecast(report)
        summary = self._summary(counts=counts, report=report)
        write_manifest(self.run_dir, self._ray_manifest(previous, summary))
        return summary

    def _ray_manifest(self, previous: Any, summary: RunSummary) -> Any:
        manifest = self._manifest(previous, finished=True, summary=summary)
        return manifest.model_copy(update={"engine": self.engine_record})

    def _read(
        self,
        batches: BatchSource,
        classify: Classify,
        done: pl.Series,
        *,
        shards: int,
        shard_rows: int,
        submit: Callable[[int, pl.DataFrame], None],
    ) -> None:
        """Read and classify the input, settle invalid and answered rows, and hand the rest to
        `submit` shard by shard (`shard_rows` input rows each) as soon as a shard is read."""
        remaining = self.options.limit
        shard, held = 0, list[pl.DataFrame]()
        for batch in batches(batch_rows=self.job.config.run.batch_rows):
            if remaining is not None and remaining <= 0:
                break
            rows = batch.rows if remaining is None else batch.rows.head(remaining)
            if remaining is not None:
                remaining -= rows.height
            if batch.rejects.height:
                self.rejects.append(batch.rejects)
            sendable = self._prepare(rows, classify, done)
            if self.cache is not None and self.cache.reads and sendable.height:
                hits = self.cache.lookup(sendable["tier"].to_list(), sendable["messages"].to_list())
                sendable = self._settle_cached(sendable, hits)
            results, attempts = self.buffer.take()
            self.journal.commit(results, attempts)  # the index, invalid and cached rows
            parts = sendable.with_columns(_shard=pl.col("row_index") // shard_rows)
            for (index,), part in parts.partition_by(
                "_shard", as_dict=True, include_key=False, maintain_order=True
            ).items():
                while shard < int(index):
                    submit(shard, _concat(held))
                    shard, held = shard + 1, []
                held.append(part)
        submit(shard, _concat(held))
        for index in range(shard + 1, shards):
            submit(index, pl.DataFrame())  # nothing left to send in it

    def _send_on_cluster(
        self,
        ray: Any,
        workers: int,
        batches: BatchSource,
        classify: Classify,
        done: pl.Series,
        base_urls: dict[str, str],
    ) -> list[ShardResult]:
        cfg = self.job.config
        cap = self.budget.max_cost_usd
        models = {name: (model.rpm, model.tpm) for name, model in cfg.models.items()}
        workers = max(1, min(workers, self.total_rows))
        limits = (
            ray.remote(ClusterLimits)
            .options(num_cpus=0)
            .remote(models, workers=workers, max_cost_usd=cap)
        )
        control = ray.remote(RunControl).options(num_cpus=0).remote()
        task = ray.remote(run_shard).options(
            num_cpus=1, max_retries=TASK_RETRIES, scheduling_strategy="SPREAD"
        )
        options = replace(self.options, limit=None)
        refs: list[Any] = []

        def submit(index: int, rows: pl.DataFrame) -> None:
            if rows.height == 0:
                limits.finish.remote(f"w{index}#empty")  # its share goes to the others
                return
            spec = ShardSpec(
                index=index,
                run_id=self.run_id,
                run_dir=self.run_dir.resolve(),
                ordinal=self.journal.ordinal,
                base_urls=base_urls,
                cache_host=cache_host(),
            )
            refs.append(task.remote(self.job, options, self.prices, spec, rows, limits, control))

        progress = self.progress
        in_flight: dict[str, int] = {}
        progress.watch(
            lambda: in_flight,
            tier_models={str(tier): model for tier, model in self._requested.items()},
        )
        with (
            self._cache_host(ray) as cache_host,
            progress.live(run_id=self.run_id, total_rows=self.total_rows),
            _stop_on_signals(ray, control, refs, self),
        ):
            self._read(
                batches,
                classify,
                done,
                shards=workers,
                shard_rows=max(1, -(-self.total_rows // workers)),
                submit=submit,
            )
            # The driver's own counts (invalid and reused rows) plus every worker's.
            base = {tier: replace(counts) for tier, counts in progress.tiers.items()}
            pending = list(refs)
            while pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.25)
                tiers, in_flight, warnings = ray.get(control.progress.remote())
                self._take_warnings(tuple(warnings))  # as they happen, as a local run logs them
                for tier, counts in base.items():
                    progress.tiers[tier] = add_counts(counts, tiers.get(tier, TierCounts()))
        results: list[ShardResult] = []
        for ref in refs:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.TaskCancelledError:
                self.hard_stop = True
            except ray.exceptions.RayError as exc:
                raise OutputError(
                    f"a Ray worker's shard failed after {TASK_RETRIES} retries ({exc}); "
                    "its answered rows are kept: run the job again to resume",
                    path=self.run_dir,
                ) from None
        self.limiter_calls = int(ray.get(limits.stats.remote())["calls"])
        for result in results:
            self.sent_rows += result.sent_rows
            self.reused_rows += result.reused_rows
            self._take_warnings(result.warnings)
            self.hard_stop = self.hard_stop or result.hard_stop
        self._take_stop(results)
        return results

    @contextmanager
    def _cache_host(self, ray: Any) -> Iterator[Callable[[], Any]]:
        """The run's `CacheHost` while shards run, started when the first shard with rows to
        send is handed out (a run the cache answers whole starts no actor); None when the
        cache is off. Closed after the last shard ended: every answer stored is committed."""
        started: list[Any] = []

        def host() -> Any:
            if self.cache is None:
                return None
            if not started:
                options = self.options
                started.append(
                    start_cache_host(
                        ray,
                        self.job,
                        no_cache=options.no_cache,
                        refresh_cache=options.refresh_cache,
                    )
                )
            return started[0]

        try:
            yield host
        finally:
            for actor in started:
                try:
                    ray.get(actor.close.remote())
                except ray.exceptions.RayError as exc:
                    self._take_warnings(
                        (
                            f"the response cache's host failed ({type(exc).__name__}): answers "
                            "sent in this run may not be stored, and a later run sends them again",
                        )
                    )
                finally:
                    ray.kill(actor)

    def _take_warnings(self, warnings: tuple[str, ...]) -> None:
        """A worker's warnings, each logged and recorded once however many workers raised it
        (every worker's fleet finds the same model gone)."""
        for warning in warnings:
            if warning not in self.warnings:
                self.warnings.append(warning)
                logger.warning("%s", warning)  # as the local engine's fleet logs it

    def _take_stop(self, results: list[ShardResult]) -> None:
        """The run's stop: an interrupt outranks an abort, which outranks the budget cap."""
        for status in (Status.SKIPPED_INTERRUPTED, Status.SKIPPED_ABORTED, Status.SKIPPED_BUDGET):
            for result in results:
                if result.stop_status == status:
                    self.stop_status = status
                    self.stop_message = result.stop_message
                    return


@contextmanager
def _stop_on_signals(ray: Any, control: Any, refs: list[Any], run: _DriverRun) -> Iterator[None]:
    """SIGTERM/SIGINT at the driver: the first tells every worker to stop sending (they finish
    what is in flight within `run.grace_s`), the second cancels them at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[str] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        if len(received) == 1:
            run.stop_status = Status.SKIPPED_INTERRUPTED
            run.progress.stopping(f"{name} received; the workers finish their in-flight requests")
            log_event(
                logger,
                "warning",
                f"stopping: {name} received; the Ray workers finish their in-flight requests "
                f"(up to {run.job.config.run.grace_s:g} s), then results are written",
                level=logging.WARNING,
                reason="stopping",
            )
            control.stop.remote()
        else:
            logger.warning("%s received again; stopping the Ray workers now", name)
            control.stop.remote()
            for ref in refs:
                ray.cancel(ref, force=True)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
