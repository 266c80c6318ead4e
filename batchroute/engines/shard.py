"""A Ray worker's session: one shard of classified rows, sent by batchroute's own dispatcher.

`run_shard` is what the Ray engine runs as a task. It is the single-process session (`Session` in
`local.py`) with four things changed: its rows come already classified from the driver; its
journal shares the driver's ordinal and leaves the other workers' journals alone; its limiters
pace at the share of each model's rate leased from the cluster's `ClusterLimits` actor, and its
budget is leased from the same actor; and it stops when the driver says so (polled from the
`RunControl` actor) instead of on its own signals. It writes its answers to the run directory's
journal like any session; the driver compacts and assembles them. Its response cache is the
driver node's `CacheHost` (`cache/cluster.py`): the driver already served the rows whose first
request was answered, so a shard looks up only fallbacks there, and stores what it is answered.

A task that dies is retried by Ray. The retry first compacts the journals its shard's earlier
attempts left behind, then sends only the rows of the shard that are not already answered. A row
caught mid-escalation resumes at the tier it reached, as on the local engine: the shard journals
a climbing row's attempts before the next tier is asked (`Session._escalated`, inherited), and
reads back the climbs left pending (`store.escalations`), whether by its own dead attempt or by
an earlier session of the run on either engine.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import polars as pl

from batchroute.cache.cluster import RemoteResponses
from batchroute.cache.runs import RunCache, endpoint_keys
from batchroute.cache.store import cache_settings
from batchroute.config import Job
from batchroute.dataset import Batch
from batchroute.dispatch.dispatcher import Dispatcher
from batchroute.dispatch.walk import plan_tiers
from batchroute.engines.leases import LeasedBudget, LeasedLimiter, LeaseKeeper
from batchroute.engines.local import BatchSource, Classify, RunOptions, Session
from batchroute.logs import run_id_var
from batchroute.pricing.prices import PriceTable
from batchroute.progress import Progress, TierCounts
from batchroute.schema import Status
from batchroute.store.escalations import pending_escalations
from batchroute.store.journal import JOURNAL_GLOB, Journal, compact_journal
from batchroute.store.parts import completed_keys
from batchroute.store.rundir import PARTS_DIR

__all__ = ["ShardResult", "ShardSpec", "run_shard"]

CONTROL_POLL_S = 0.25
"""How often a worker reports its progress to the driver and asks whether to stop."""

logger = logging.getLogger("batchroute")


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """What the driver hands a worker besides its rows."""

    index: int
    run_id: str
    run_dir: Path
    ordinal: int
    base_urls: dict[str, str]
    cache_host: Any = None
    """The run's `CacheHost` actor, or None when the response cache is off (`--no-cache`)."""


@dataclass(frozen=True, slots=True)
class ShardResult:
    """How a shard's session ended, for the driver's summary."""

    index: int
    node: str
    pid: int
    sent_rows: int
    reused_rows: int
    stop_status: str | None
    stop_message: str
    hard_stop: bool
    warnings: tuple[str, ...]


def shard_session_prefix(run_id: str, index: int) -> str:
    return f"{run_id}-w{index:03d}-"


def run_shard(
    job: Job,
    options: RunOptions,
    prices: PriceTable,
    spec: ShardSpec,
    rows: pl.DataFrame,
    limits: Any,
    control: Any,
) -> ShardResult:
    """Send one shard's rows (a Ray task: `limits`/`control` are actor handles)."""
    run_id_var.set(spec.run_id)
    # The driver logs this worker's warnings (relayed through `RunControl`, and in the
    # result), once each, in the run's log format; Ray would print them again, unformatted.
    logger.setLevel(max(logger.getEffectiveLevel(), logging.ERROR))
    session = _ShardRun(job, options, prices=prices, spec=spec, limits=limits, control=control)
    return session.run(rows)


class _ShardRun(Session):
    def __init__(
        self,
        job: Job,
        options: RunOptions,
        *,
        prices: PriceTable,
        spec: ShardSpec,
        limits: Any,
        control: Any,
    ) -> None:
        self.spec = spec
        self.worker = f"w{spec.index}#{uuid.uuid4().hex[:8]}"
        self._limits_actor = limits
        self._control = control
        super().__init__(
            job,
            # Not the cache file: the driver node's host stands in for it (below).
            replace(options, limit=None, no_cache=True),
            run_id=spec.run_id,
            run_dir=spec.run_dir,
            prices=prices,
            progress=Progress(live=False, enabled=False),
            total_rows=0,
        )
        if self.budget.max_cost_usd is not None:
            self.budget = LeasedBudget(self._lease_budget)
        self._responses: RemoteResponses | None = None
        if spec.cache_host is not None:
            settings = cache_settings(
                job.config.cache, no_cache=options.no_cache, refresh_cache=options.refresh_cache
            )
            self._responses = RemoteResponses(
                spec.cache_host, read=settings.read, write=settings.write
            )
            self.cache = RunCache(
                self._responses,
                plans=plan_tiers(job.config),
                endpoints=endpoint_keys(job.config),
            )

    def _lease_budget(self, want_usd: float) -> float:
        import ray

        granted: float = ray.get(self._limits_actor.lease_budget.remote(want_usd))
        return granted

    def _open_journal(self) -> Journal:
        # Answers of this shard's earlier attempts (a worker that died) become parts first.
        prefix = shard_session_prefix(self.spec.run_id, self.spec.index)
        pattern = re.compile(rf"^journal-[0-9]+-{re.escape(prefix)}")
        parts_dir = self.spec.run_dir / PARTS_DIR
        parts_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(parts_dir.glob(JOURNAL_GLOB)):
            if pattern.match(path.name):
                compact_journal(path, part_rows=self.job.config.output.checkpoint_rows)
        return Journal(
            self.spec.run_dir,
            session=prefix + self.worker.split("#", 1)[1],
            metadata_columns=self.metadata_columns,
            part_rows=self.job.config.output.checkpoint_rows,
            recover=False,
            ordinal=self.spec.ordinal,
        )

    def run(self, rows: pl.DataFrame) -> ShardResult:
        done = completed_keys(self.run_dir, retry_failed=self.options.retry_failed)
        self.climbs = pending_escalations(self.run_dir, done=done)
        answered = rows["row_key"].is_in(done.implode())
        self.reused_rows = int(answered.sum())
        self.progress.settled(rows.filter(answered)["tier"], status="reused")
        rows = rows.filter(~answered)

        def batches(*, batch_rows: int) -> Iterator[Batch]:
            empty = pl.DataFrame()
            for start in range(0, rows.height, batch_rows):
                yield Batch(rows=rows.slice(start, batch_rows), rejects=empty)

        try:
            anyio.run(self._dispatch_all, batches, _unchanged, done, self.spec.base_urls)
        finally:
            self.journal.close(compact=False)  # the driver compacts every journal at the end
            if self._responses is not None:
                self._responses.close()  # the host has every answer before the driver closes it
                if self._responses.failed:  # a lost store costs a request later, never an answer
                    self.warnings.append(
                        f"worker {self.spec.index}: the response cache's host could not be "
                        "reached; answers it was sent may not be stored, and a later run sends "
                        "those requests again"
                    )
            try:
                import ray

                budget = self.budget
                calls = [self._limits_actor.finish.remote(self.worker)]
                if isinstance(budget, LeasedBudget):
                    calls.append(
                        self._limits_actor.return_budget.remote(budget.unused_usd, budget.spent_usd)
                    )
                ray.get(calls)
            except Exception:  # the driver may be gone; the lease then simply expires
                logger.debug("could not return the shard's leases", exc_info=True)
        return ShardResult(
            index=self.spec.index,
            node=socket.gethostname() + ":" + _node_id(),
            pid=os.getpid(),
            sent_rows=self.sent_rows,
            reused_rows=self.reused_rows,
            stop_status=self.stop_status,
            stop_message=self.stop_message,
            hard_stop=self.hard_stop,
            warnings=tuple(self.warnings),
        )

    def _prepare(self, rows: pl.DataFrame, classify: Classify, done: pl.Series) -> pl.DataFrame:
        return rows  # classified, indexed and filtered by the driver

    async def _serve_cached(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame  # the driver served the rows whose first request the cache answers

    async def _feed(
        self,
        dispatcher: Dispatcher,
        batches: BatchSource,
        classify: Classify,
        done: pl.Series,
    ) -> None:
        fleet = dispatcher.fleet
        leased: dict[str, LeasedLimiter] = {}
        for name, limiter in list(fleet.limiters.items()):
            if limiter.rpm is None and limiter.tpm is None:
                continue  # an unpaced model needs no share of a rate
            leased[name] = LeasedLimiter(limiter)
            fleet.limiters[name] = fleet.models[name].limiter = leased[name]
        actor = self._limits_actor

        async def call(method: str, *args: Any) -> Any:
            return await getattr(actor, method).remote(*args)

        keeper = LeaseKeeper(leased, worker=self.worker, call=call)
        await keeper.start()
        async with anyio.create_task_group() as leases:
            leases.start_soon(keeper.run)
            try:
                await super()._feed(dispatcher, batches, classify, done)
            finally:
                leases.cancel_scope.cancel()

    def _start_watchers(self, watchers: anyio.abc.TaskGroup) -> None:
        watchers.start_soon(self._watch_driver, watchers)

    async def _watch_driver(self, watchers: anyio.abc.TaskGroup) -> None:
        """Report progress to the driver; stop sending when it asks (its SIGTERM/SIGINT)."""
        stops = 0
        while True:
            tiers = {tier: astuple(counts) for tier, counts in self.progress.tiers.items()}
            in_flight = {name: lim.in_flight for name, lim in self._dispatcher.limiters.items()}
            warnings = tuple(self._dispatcher.warnings)
            wanted: int = await self._control.report.remote(
                self.spec.index, tiers, in_flight, warnings
            )
            while stops < wanted:
                stops += 1
                self._interrupt(watchers)
            await anyio.sleep(CONTROL_POLL_S)

    def _interrupt(self, watchers: anyio.abc.TaskGroup) -> None:
        """The driver's first stop request stops sending (as the local engine's first signal
        does: in-flight requests get `run.grace_s`); a second stops at once."""
        if self.stop_status != Status.SKIPPED_INTERRUPTED:
            self.stop_status = None  # an interrupt outranks a budget or abort stop
            self._dispatcher.stop()
            self._stop(
                Status.SKIPPED_INTERRUPTED,
                "the driver received SIGTERM or SIGINT; finishing in-flight requests "
                f"(up to {self.job.config.run.grace_s:g} s), then writing results",
            )
            watchers.start_soon(self._cancel_in_flight_after_grace)
        else:
            self.hard_stop = True
            self._run_scope.cancel()


def _unchanged(frame: pl.DataFrame) -> pl.DataFrame:
    return frame


def _node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())[:12]
    except Exception:
        return "?"


class RunControl:
    """The driver's side channel to its workers (a Ray actor): progress and warnings in, stop
    requests out."""

    def __init__(self) -> None:
        self.stops = 0
        self.shards: dict[int, tuple[dict[str, tuple[Any, ...]], dict[str, int]]] = {}
        self.warnings: list[str] = []
        """Every worker's warnings so far, each once, in the order they were first reported."""

    def __repr__(self) -> str:
        return (
            f"<RunControl [shards reporting: {len(self.shards)}, stops: {self.stops}, "
            f"warnings: {len(self.warnings)}]>"
        )

    def report(
        self,
        shard: int,
        tiers: dict[str, tuple[Any, ...]],
        in_flight: dict[str, int],
        warnings: tuple[str, ...] = (),
    ) -> int:
        """A worker's progress counters (`TierCounts` as tuples) and the warnings its fleet
        raised so far; returns the stop requests."""
        self.shards[shard] = (tiers, in_flight)
        self.warnings.extend(w for w in dict.fromkeys(warnings) if w not in self.warnings)
        return self.stops

    def stop(self) -> None:
        self.stops += 1

    def progress(self) -> tuple[dict[str, TierCounts], dict[str, int], list[str]]:
        """Every worker's counters added up per tier, their in-flight requests per model, and
        the warnings (`warnings`)."""
        tiers: dict[str, TierCounts] = {}
        in_flight: dict[str, int] = {}
        for counts, flying in self.shards.values():
            for tier, values in counts.items():
                tiers[tier] = add_counts(tiers.get(tier, TierCounts()), TierCounts(*values))
            for model, value in flying.items():
                in_flight[model] = in_flight.get(model, 0) + value
        return tiers, in_flight, self.warnings


def add_counts(a: TierCounts, b: TierCounts) -> TierCounts:
    return TierCounts(*(x + y for x, y in zip(astuple(a), astuple(b), strict=True)))
