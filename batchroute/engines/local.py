"""`run_job`: the one entry point of a run, from input file to reports.

The data flow is input → classify → dispatch → results → reports. The input is read in bounded
batches; each batch is classified as a whole, rows already answered by an earlier session of the
same run directory are dropped, and the rest are sent through the dispatcher with at most
`run.max_in_flight` requests in flight. Each finished row goes to the session's journal
(`store.journal`) in group commits (`commits.py`), and keeps its in-flight slot until its commit
is durable. At the end the journal is compacted into Parquet parts, the parts are assembled into
results.parquet in input order, and the reports are written.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import polars as pl

from batchroute.cache.runs import Hit, RunCache
from batchroute.config import Job
from batchroute.dataset import Batch
from batchroute.dispatch.dispatcher import AttemptRecord, Dispatcher, RowOutcome, RowRequest
from batchroute.dispatch.rows import EscalationProgress
from batchroute.engines.commits import GroupCommit
from batchroute.engines.ending import RunSummary, ending, log_finished, manifest_figures
from batchroute.engines.startup import check_run, claim_run_dir
from batchroute.engines.workers import Backlog, Lane, WorkerPool, acquire
from batchroute.logs import log_event
from batchroute.pricing.budget import Budget
from batchroute.pricing.costs import FloatRates
from batchroute.pricing.forecast import ForecastAccumulator, forecast_totals
from batchroute.pricing.prices import PriceTable
from batchroute.pricing.tokens import messages_token_bound_expr, messages_tokens_expr
from batchroute.progress import Progress
from batchroute.report import ReportSummary, write_reports
from batchroute.report.notes import overrun_warning
from batchroute.schema import ErrorType, Status
from batchroute.store.assembly import assemble_results
from batchroute.store.escalations import pending_escalations
from batchroute.store.journal import Journal
from batchroute.store.keys import row_keys, tier_contexts
from batchroute.store.manifest import RunManifest, read_manifest, write_manifest
from batchroute.store.outcomes import OutcomeBuffer, skipped_results
from batchroute.store.parts import completed_keys
from batchroute.store.plan import write_plan
from batchroute.store.rundir import atomic_file

if TYPE_CHECKING:
    from batchroute.dispatch.batch import BatchRunner

__all__ = [
    "BatchSource",
    "Classify",
    "RunOptions",
    "Session",
    "run_job",
]

BatchSource = Callable[..., Iterator[Batch]]
"""The input read in batches (`Dataset.batches`), as a session reads it."""
Classify = Callable[[pl.DataFrame], pl.DataFrame]
"""A batch of rows with their tiers added (`Router.classify`)."""
_Row = tuple[RowRequest, tuple[Any, ...]]
"""A row on its way to a model: its request, and its context for `OutcomeBuffer.add`."""

_CACHE_KEY = "_cache_key"
"""A queued row's response-cache key for its first model, from its batch's lookup."""
_YOUNG_GC_THRESHOLD = 10_000
"""Allocations between young-generation collections during the request loop (Python's: 700)."""

logger = logging.getLogger("batchroute")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What the command line may change about a run."""

    fresh: bool = False
    run_dir: Path | None = None
    """`--run-dir`: the run directory to use, instead of choosing one (see `select_run_dir`)."""
    limit: int | None = None
    max_cost_usd: Decimal | None = None
    retry_failed: bool = True
    wait: bool = True
    """`--no-wait`: submit batch-mode rows and end with `ExitCode.SUBMITTED` instead of waiting."""
    no_cache: bool = False
    """`--no-cache`: the response cache is neither read nor written."""
    refresh_cache: bool = False
    """`--refresh-cache`: every request is sent, and its answer stored over the old one."""
    engine: str | None = None
    """`--engine`: `local` or `ray`, over the job's `engine.kind`."""
    address: str | None = None
    """`--address`: the Ray cluster to join, over the job's `engine.address`."""


def run_job(job: Job, options: RunOptions, *, progress: Progress) -> RunSummary:
    """Run a job to the end (or to a clean stop) and write its results and reports."""
    if (options.engine or job.config.engine.kind) == "ray":
        from batchroute.engines.ray import run_job_on_ray

        return run_job_on_ray(job, options, progress=progress)
    inputs = check_run(job, options)
    with claim_run_dir(job, options) as claim:
        run = Session(
            job,
            options,
            run_id=claim.run_id,
            run_dir=claim.run_dir,
            prices=inputs.prices,
            progress=progress,
            total_rows=inputs.total_rows,
        )
        claim.announce(job, rows=run.total_rows, max_cost_usd=run.budget.max_cost_usd)
        summary = run.execute(inputs.dataset.batches, inputs.router.classify)
    log_finished(summary)
    return summary


class Session:
    """The state of one session of a run: counters, buffers, and how it is stopping.

    The Ray engine's driver and its shards are sessions too (`ray._DriverRun` reads and
    reports without sending, `shard._ShardRun` sends one shard's rows).
    """

    def __init__(
        self,
        job: Job,
        options: RunOptions,
        *,
        run_id: str,
        run_dir: Path,
        prices: PriceTable,
        progress: Progress,
        total_rows: int,
    ) -> None:
        cfg = job.config
        self.job = job
        self.options = options
        self.run_id = run_id
        self.run_dir = run_dir
        self.prices = prices
        self.progress = progress
        self.total_rows = total_rows
        self.metadata_columns = cfg.input.metadata_columns
        cap = options.max_cost_usd if options.max_cost_usd is not None else cfg.budget.max_cost_usd
        self.budget = Budget(cap)
        self.buffer = OutcomeBuffer(metadata_columns=self.metadata_columns)
        self.journal = self._open_journal()
        self.forecast = ForecastAccumulator(job, prices)
        self.rejects: list[pl.DataFrame] = []
        self.stop_status: str | None = None  # a Status.SKIPPED_* once the run stops sending
        self.stop_message = ""
        self.hard_stop = False
        self.sent_rows = 0
        self.reused_rows = 0
        self.cached_rows = 0
        self.cache = RunCache.for_job(
            job, no_cache=options.no_cache, refresh_cache=options.refresh_cache
        )
        self.warnings: list[str] = []
        self.climbs: dict[str, EscalationProgress] = {}
        """Rows an earlier session left mid-escalation, by key (`store.escalations`)."""
        self.started_at = datetime.now(UTC)
        self._contexts = tier_contexts(cfg)
        self.batch: BatchRunner | None = None
        if any(cfg.tier_mode(tier) == "batch" for tier in cfg.tiers):
            # Imported only for a job with batch-mode tiers: a run without them does not pay for
            # loading the Batch API runner at start-up (issue 15).
            from batchroute.dispatch.batch import BatchRunner

            self.batch = BatchRunner(job, run_dir=run_dir, prices=prices, budget=self.budget)
        self._requested = {tier: cfg.tier(tier).model for tier in cfg.tiers}
        self._float_rates = {  # for the progress display only
            model: FloatRates.of(price)
            for model in cfg.models
            if (price := prices.get(model)) is not None
        }

    def _open_journal(self) -> Journal:
        return Journal(
            self.run_dir,
            session=self.run_id,
            metadata_columns=self.metadata_columns,
            part_rows=self.job.config.output.checkpoint_rows,
        )

    # -- the session -------------------------------------------------------------------------

    def execute(self, batches: BatchSource, classify: Classify) -> RunSummary:
        previous = read_manifest(self.run_dir)
        done = completed_keys(self.run_dir, retry_failed=self.options.retry_failed)
        self.climbs = pending_escalations(self.run_dir, done=done)
        write_manifest(self.run_dir, self._manifest(previous, finished=False))
        with self._sending(previous) as base_urls:
            with self.progress.live(run_id=self.run_id, total_rows=self.total_rows):
                with _request_loop_gc():
                    anyio.run(self._dispatch_all, batches, classify, done, base_urls)
        if self._batches_left():
            summary = self._summary(counts={}, report=None)
            write_manifest(self.run_dir, self._manifest(previous, finished=False))
            return summary
        if self.hard_stop:
            summary = self._summary(counts={}, report=None)
            write_manifest(self.run_dir, self._manifest(previous, finished=True, summary=summary))
            return summary
        counts, report = self._assemble_and_report()
        self._warn_if_over_forecast(report)
        summary = self._summary(counts=counts, report=report)
        write_manifest(self.run_dir, self._manifest(previous, finished=True, summary=summary))
        return summary

    @contextmanager
    def _sending(self, previous: RunManifest | None) -> Iterator[dict[str, str]]:
        """While requests are sent: the response cache open, and the embedded simulator up (its
        base URL, by name, is yielded); then the journal is closed. A session that failed before
        sending anything (a missing key, a bad endpoint) leaves run.json as it was."""
        try:
            with ExitStack() as stack:
                base_urls: dict[str, str] = {}
                if self.cache is not None:  # a file it cannot use stops the run before a request
                    stack.enter_context(self.cache)
                if self._uses_simulator():
                    from batchroute.sim import EmbeddedSimulator

                    sim = stack.enter_context(EmbeddedSimulator(self.job.config.simulator))
                    base_urls["simulator"] = sim.base_url
                yield base_urls
        except BaseException:
            self.journal.close()
            if self.sent_rows == 0 and previous is not None:
                write_manifest(self.run_dir, previous)
            raise
        self.journal.close()

    def _assemble_and_report(self) -> tuple[dict[str, int], ReportSummary]:
        """Assemble results.parquet from the parts, then write the side files and the reports."""
        counts = assemble_results(self.run_dir, prices=self.prices)
        self._write_side_files()
        report = write_reports(
            self.run_dir,
            job=self.job,
            prices=self.prices,
            budget_hit=self.stop_status == Status.SKIPPED_BUDGET,
        )
        return counts, report

    def _warn_if_over_forecast(self, report: ReportSummary) -> None:
        """Warn when the whole run's spend passed its forecast by more than the threshold."""
        warning = overrun_warning(report, threshold_pct=self.job.config.run.warn_overrun_pct)
        if warning is None:
            return
        self.warnings.append(warning)
        log_event(
            logger,
            "warning",
            warning,
            level=logging.WARNING,
            reason="over_forecast",
            forecast_cost_usd=report.savings["forecast_cost_usd"][0],
            cost_usd=report.savings["total_cost_usd"][0],
        )

    def _uses_simulator(self) -> bool:
        cfg = self.job.config
        return any(cfg.endpoint_for(model).is_simulator for model in cfg.models)

    async def _dispatch_all(
        self,
        batches: BatchSource,
        classify: Classify,
        done: pl.Series,
        base_urls: dict[str, str],
    ) -> None:
        async with (
            Dispatcher(
                self.job,
                prices=self.prices,
                budget=self.budget,
                base_urls=base_urls,
                cache=self.cache,
                resumed=self.climbs,
                on_escalate=self._escalated,
            ) as dispatcher,
            anyio.create_task_group() as watchers,
        ):
            self._dispatcher = dispatcher
            # fast_acquire: the feeder takes a free slot without yielding, so a batch's rows are
            # all handed to the dispatcher at once instead of one per event-loop turn.
            self._slots = anyio.Semaphore(self.job.config.run.max_in_flight, fast_acquire=True)
            self.group_commit = GroupCommit(
                self.journal,
                self.buffer,
                self._slots,
                interval_s=self.job.config.output.commit_interval_ms / 1000,
            )
            self.progress.watch(
                lambda: {name: limiter.in_flight for name, limiter in dispatcher.limiters.items()},
                tier_models={str(tier): model for tier, model in self._requested.items()},
                budget=self.budget,
            )
            self._start_watchers(watchers)
            watchers.start_soon(self.group_commit.run)
            try:
                with anyio.CancelScope() as self._run_scope:
                    await self._feed(dispatcher, batches, classify, done)
                    if self.batch is not None and self.stop_status is None:
                        await self.batch.finish(
                            dispatcher,
                            wait=self.options.wait,
                            settle=self._settle_batch_row,
                            flush=self.group_commit.commit,
                            stopping=lambda: self.stop_status is not None,
                            context_columns=self.buffer.context_columns,
                        )
            finally:
                self.warnings = list(dispatcher.warnings)
            # rows already in flight when the run had to stop still report how it ended
            if dispatcher.abort is not None:
                self._stop(Status.SKIPPED_ABORTED, str(dispatcher.abort))
            elif self.budget.exhausted:
                self._stop(Status.SKIPPED_BUDGET, "the budget cap was reached")
            watchers.cancel_scope.cancel()
        await self.group_commit.commit()

    async def _feed(
        self,
        dispatcher: Dispatcher,
        batches: BatchSource,
        classify: Classify,
        done: pl.Series,
    ) -> None:
        cfg = self.job.config
        remaining = self.options.limit
        source = iter(batches(batch_rows=cfg.run.batch_rows))
        # One lane per tier, each with its own cap: a tier whose model is slow or paused holds
        # at most its cap of the run's slots, never the slots the other tiers need.
        self._lanes: dict[str, Lane] = {
            tier: Lane(tier, capacity=self._lane_capacity(tier)) for tier in cfg.tiers
        }
        # As many senders as rows can be sent at once: a row holds a slot of the run and of its
        # lane while it is sent, so it always finds an idle sender. Senders no row could use
        # are not started (each costs ~25 us to start; issue 15).
        senders: WorkerPool[_Row] = WorkerPool(
            min(cfg.run.max_in_flight, sum(lane.capacity for lane in self._lanes.values())),
            functools.partial(self._send, dispatcher),
        )
        self._pending = Backlog(cfg.run.batch_rows)
        """Rows queued on the lanes: the reader waits while a batch's worth is queued."""
        try:
            async with anyio.create_task_group() as in_flight:
                self._in_flight_scope = in_flight.cancel_scope
                senders.start(in_flight)
                async with anyio.create_task_group() as pumps:
                    for lane in self._lanes.values():
                        pumps.start_soon(self._pump, lane, dispatcher, senders)
                    while remaining is None or remaining > 0:
                        batch: Batch | None = await anyio.to_thread.run_sync(next, source, None)
                        if batch is None:
                            break
                        rows = batch.rows if remaining is None else batch.rows.head(remaining)
                        if remaining is not None:
                            remaining -= rows.height
                        if batch.rejects.height:
                            self.rejects.append(batch.rejects)
                        sendable = self._prepare(rows, classify, done)
                        if self.cache is not None and self.cache.reads:
                            sendable = await self._serve_cached(sendable)
                        await self._queue_batch(sendable)
                    for lane in self._lanes.values():
                        lane.close()
                senders.close()
        finally:
            for request, context in senders.drain():  # queued when the senders were cancelled
                self._lane_of(request.tier).release()
                self._interrupted(context, "the run was stopped before this request was sent")

    def _lane_of(self, tier: str) -> Lane:
        # A tier the job does not map goes where unmatched rows go (`standard` is required).
        return self._lanes.get(tier) or self._lanes["standard"]

    def _lane_capacity(self, tier: str) -> int:
        """A tier's share of the run's slots: its first model's concurrency, at most a fair
        share of `run.max_in_flight` among the tiers."""
        cfg = self.job.config
        head = cfg.models[cfg.tier(tier).model]
        fair = max(1, -(-cfg.run.max_in_flight // len(cfg.tiers)))
        return min(head.max_concurrency, fair)

    def _prepare(self, rows: pl.DataFrame, classify: Classify, done: pl.Series) -> pl.DataFrame:
        """Classify a batch, record it, settle invalid and already-answered rows; return others."""
        frame = classify(rows)
        frame = frame.with_columns(
            row_keys(frame, context=self._contexts).alias("row_key"),
            pl.col("tier").replace_strict(self._requested, default=None).alias("model_requested"),
        )
        self.journal.add_index(frame)
        self.forecast.add(frame)
        forecast = forecast_totals(self.forecast.frame()).cost_usd
        self.progress.forecast_usd = None if forecast is None else float(forecast)
        invalid = frame.filter(pl.col("invalid_reason").is_not_null())
        if invalid.height:
            self.buffer.add_frame(
                skipped_results(
                    invalid,
                    status=Status.FAILED,
                    error_type=ErrorType.INVALID_ROW,
                    message=pl.col("invalid_reason"),
                    metadata_columns=self.metadata_columns,
                )
            )
            self.progress.settled(invalid["tier"], status=Status.FAILED)
        valid = frame.filter(pl.col("invalid_reason").is_null())
        answered = pl.col("row_key").is_in(done.implode())
        reused = valid.filter(answered)
        if reused.height:
            self.reused_rows += reused.height
            self.progress.settled(reused["tier"], status="reused")
        return valid.filter(~answered).with_columns(
            messages_tokens_expr(pl.col("messages")).alias("prompt_tokens"),
            messages_token_bound_expr(pl.col("messages")).alias("prompt_token_bound"),
        )

    async def _serve_cached(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Settle the rows the response cache answers (no slot, limiter or budget); the rest."""
        assert self.cache is not None
        if frame.height == 0:
            return frame
        hits, keys = await anyio.to_thread.run_sync(
            self.cache.lookup_keyed, frame["tier"].to_list(), frame["messages"].to_list()
        )
        # Each row carries its key to the walk, which stores the answer under it (issue 15).
        frame = frame.with_columns(pl.Series(_CACHE_KEY, keys, dtype=pl.Binary))
        rest = self._settle_cached(frame, hits)
        if rest.height < frame.height:
            self.group_commit.want()
        return rest

    def _settle_cached(self, frame: pl.DataFrame, hits: list[Hit | None]) -> pl.DataFrame:
        """Settle the rows of `frame` that `hits` (`RunCache.lookup`) answers; the rest."""
        assert self.cache is not None
        found = pl.Series([hit is not None for hit in hits], dtype=pl.Boolean)
        if not found.any():
            return frame
        served = frame.filter(found)
        for context, tier, hit in zip(
            self.buffer.contexts(served).iter_rows(),
            served["tier"],
            (hit for hit in hits if hit is not None),
            strict=True,
        ):
            self.buffer.add(context, self.cache.outcome(tier, hit))
        self.cached_rows += served.height
        self.progress.settled(served["tier"], status="cached")
        return frame.filter(~found)

    async def _queue_batch(self, frame: pl.DataFrame) -> None:
        """Queue a batch's rows on their tiers' lanes; wait while a batch's worth is queued."""
        if frame.height == 0:
            return
        if self.stop_status is not None:
            self._skip_rest(frame)
            return
        if self.batch is not None:  # batch-mode tiers wait for the Batch API, not a lane
            held = pl.col("tier").is_in(list(self.batch.tiers))
            self.buffer.contexts(frame.head(0))
            await self.batch.hold(frame.filter(held), self.buffer.context_columns)
            frame = frame.filter(~held)
            if frame.height == 0:
                return
        await self._pending.wait_below_capacity()
        tiers = frame["tier"].replace_strict(
            {tier: tier for tier in self._lanes}, default="standard", return_dtype=pl.String
        )
        for (tier,), part in (
            frame.with_columns(lane=tiers)
            .partition_by("lane", as_dict=True, include_key=False)
            .items()
        ):
            self._pending.add(part.height)
            self._lanes[str(tier)].put(part)

    async def _pump(self, lane: Lane, dispatcher: Dispatcher, senders: WorkerPool[_Row]) -> None:
        """Hand a lane's rows to the senders, one per free slot of the lane and of the run."""
        while (frame := await lane.get()) is not None:
            await self._send_frame(frame, lane, dispatcher, senders)

    async def _send_frame(
        self,
        frame: pl.DataFrame,
        lane: Lane,
        dispatcher: Dispatcher,
        senders: WorkerPool[_Row],
    ) -> None:
        if self.stop_status is not None:
            self._pending.remove(frame.height)
            self._skip_rest(frame)
            return
        slots = self._slots
        contexts = self.buffer.contexts(frame).iter_rows()
        requests = frame.select(
            "id",
            "row_index",
            "row_key",
            "tier",
            "messages",
            "prompt_tokens",
            "prompt_token_bound",
            pl.col(_CACHE_KEY) if _CACHE_KEY in frame.columns else pl.lit(None, pl.Binary),
        )
        for position, (
            context,
            (row_id, row_index, row_key, tier, messages, tokens, bound, cache_key),
        ) in enumerate(zip(contexts, requests.iter_rows(), strict=True)):
            await lane.acquire()
            await acquire(slots)
            if self.stop_status is None and dispatcher.abort is not None:
                self._stop(Status.SKIPPED_ABORTED, str(dispatcher.abort))
            if self.stop_status is None and self.budget.exhausted:
                self._stop(Status.SKIPPED_BUDGET, "the budget cap was reached")
            if self.stop_status is not None:
                slots.release()
                lane.release()
                self._pending.remove(frame.height - position)
                self._skip_rest(frame.slice(position))
                return
            self._pending.remove(1)
            request = RowRequest(
                id=row_id,
                row_index=row_index,
                row_key=row_key,
                tier=tier,
                messages=messages,
                prompt_tokens=tokens,
                prompt_token_bound=bound,
                cache_key=cache_key,
            )
            self.progress.sent(tier)
            senders.put((request, context))

    async def _send(self, dispatcher: Dispatcher, row: _Row) -> None:
        request, context = row
        try:
            outcome = await dispatcher.dispatch(request)
        except anyio.get_cancelled_exc_class():
            self._interrupted(context, "the run was stopped while this request was in flight")
            raise
        except BaseException:
            self._slots.release()
            raise
        finally:
            self._lane_of(request.tier).release()
        if outcome.attempts:  # a row refused by the budget or an abort was never sent
            self.sent_rows += 1
        self.buffer.add(context, outcome)
        self.progress.finished(
            request.tier,
            status=outcome.status,
            cost_usd=self._cost_estimate(outcome),
            attempts=outcome.attempt_records,
        )
        self.group_commit.hold()  # its slot comes back with the commit that keeps this answer

    def _settle_batch_row(self, context: tuple[Any, ...], outcome: RowOutcome) -> None:
        """A batch-mode row's outcome (collected, or sent online after the Batch API)."""
        if outcome.attempts:
            self.sent_rows += 1
        self.buffer.add(context, outcome)
        self.progress.sent(str(context[4]))
        self.progress.finished(
            str(context[4]),
            status=outcome.status,
            cost_usd=self._cost_estimate(outcome),
            attempts=outcome.attempt_records,
        )

    def _batches_left(self) -> bool:
        """Whether batches are still open at the Batch API: the run is submitted, not finished."""
        return (
            self.batch is not None
            and self.batch.open_left > 0
            and not self.hard_stop
            and self.stop_status is None
        )

    def _interrupted(self, context: tuple[Any, ...], message: str) -> None:
        """Settle a row that holds a slot but will get no answer: the run was stopped."""
        self._slots.release()
        self.buffer.add_unsent(
            context,
            status=Status.SKIPPED_INTERRUPTED,
            error_type=ErrorType.INTERRUPTED,
            message=message,
        )

    def _cost_estimate(self, outcome: RowOutcome) -> float:
        """A float cost for the progress display; reports use the exact Decimal cost."""
        if outcome.cost_estimate_usd is not None:  # priced once, by the walk
            return outcome.cost_estimate_usd
        rates = self._float_rates.get(outcome.model_used) if outcome.model_used else None
        if rates is None:
            return 0.0
        return rates.usage_usd(
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            cached_tokens=outcome.cached_tokens,
            reasoning_tokens=outcome.reasoning_tokens,
        )

    def _stop(self, status: str, message: str) -> None:
        if self.stop_status is None:
            self.stop_status = status
            self.stop_message = message
            self.progress.stopping(message)
            log_event(
                logger, "warning", f"stopping: {message}", level=logging.WARNING, reason="stopping"
            )

    def _skip_rest(self, frame: pl.DataFrame) -> None:
        assert self.stop_status is not None
        error_type = {
            Status.SKIPPED_BUDGET: ErrorType.BUDGET,
            Status.SKIPPED_ABORTED: ErrorType.ABORTED,
            Status.SKIPPED_INTERRUPTED: ErrorType.INTERRUPTED,
        }[self.stop_status]
        self.buffer.add_frame(
            skipped_results(
                frame,
                status=self.stop_status,
                error_type=error_type,
                message=self.stop_message,
                metadata_columns=self.metadata_columns,
            )
        )
        self.progress.settled(frame["tier"], status=self.stop_status)

    # -- durability ---------------------------------------------------------------------------

    async def _escalated(self, row: RowRequest, attempts: list[AttemptRecord]) -> None:
        """A row climbs a tier: return once its attempts so far are durable (with the next group
        commit), so a crash from here on resumes it at that tier (`store.escalations`)."""
        self.buffer.add_attempts((row.id, row.row_index, row.row_key), attempts)
        await self.group_commit.durable()

    # -- stopping -----------------------------------------------------------------------------

    def _start_watchers(self, watchers: anyio.abc.TaskGroup) -> None:
        # Signals reach only the main thread (anyio refuses elsewhere): the Python API runs
        # a job in a worker thread when the caller's thread already has an event loop.
        if threading.current_thread() is threading.main_thread():
            watchers.start_soon(self._watch_signals, watchers)

    async def _watch_signals(self, watchers: anyio.abc.TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stop_status != Status.SKIPPED_INTERRUPTED:
                    self.stop_status = None  # an interrupt outranks a budget or abort stop
                    # No new request leaves: rows waiting on a limiter or a backoff come back
                    # skipped_interrupted at once; only requests already sent get the grace.
                    self._dispatcher.stop()
                    self._stop(
                        Status.SKIPPED_INTERRUPTED,
                        f"{name} received; finishing in-flight requests "
                        f"(up to {self.job.config.run.grace_s:g} s), then writing results",
                    )
                    watchers.start_soon(self._cancel_in_flight_after_grace)
                else:
                    self.hard_stop = True
                    logger.warning("%s received again; stopping now", name)
                    self._run_scope.cancel()

    async def _cancel_in_flight_after_grace(self) -> None:
        await anyio.sleep(self.job.config.run.grace_s)
        self._in_flight_scope.cancel()

    # -- the end ------------------------------------------------------------------------------

    def _write_side_files(self) -> None:
        write_plan(self.forecast.frame(), self.run_dir)
        if self.rejects:
            path = self.run_dir / "rejects.parquet"
            with atomic_file(path) as handle:
                pl.concat(self.rejects).write_parquet(handle)
            rejected = self._rejected_rows
            log_event(
                logger,
                "rows_rejected",
                f"{rejected} input line{'s' if rejected != 1 else ''} could not be read and "
                f"{'were' if rejected != 1 else 'was'} set aside in {path} (on_invalid_row: skip)",
                level=logging.WARNING,
                rows=rejected,
                path=str(path),
            )

    @property
    def _rejected_rows(self) -> int:
        return sum(frame.height for frame in self.rejects)

    def _summary(self, *, counts: dict[str, int], report: ReportSummary | None) -> RunSummary:
        code, message = ending(
            batches_open=self._batches_left(),
            hard_stop=self.hard_stop,
            stop_status=self.stop_status,
            stop_message=self.stop_message,
            counts=counts,
        )
        return RunSummary(
            run_id=self.run_id,
            run_dir=self.run_dir,
            exit_code=code,
            counts=counts,
            cost_usd=report.total_cost_usd if report is not None else Decimal(0),
            reused_rows=self.reused_rows,
            sent_rows=self.sent_rows,
            message=message,
            report=report,
            rejected_rows=self._rejected_rows,
            warnings=tuple(self.warnings),
            cached_rows=self.cached_rows,
        )

    def _manifest(
        self, previous: RunManifest | None, *, finished: bool, summary: RunSummary | None = None
    ) -> RunManifest:
        return RunManifest.for_session(
            previous,
            job_path=self.job.path,
            job_sha256=self.job.text_sha256,
            run_id=self.run_id,
            started_at=self.started_at,
            finished_at=datetime.now(UTC) if finished else None,
            budget_hit=self.stop_status == Status.SKIPPED_BUDGET,
            price_source=self.prices.source,
            price_sha256=self.prices.sha256,
            sent_rows=self.sent_rows,
            reused_rows=self.reused_rows,
            pid=os.getpid(),
            warnings=tuple(self.warnings),
            cached_rows=self.cached_rows,
            **manifest_figures(summary),
        )


@contextmanager
def _request_loop_gc() -> Iterator[None]:
    """Garbage collection tuned for the request loop, restored afterwards.

    Everything alive when the loop starts (modules, the SDK's hundreds of model classes, the
    job) lives to the end, yet every full collection walks it again; and each request allocates
    a few hundred short-lived objects, so the youngest generation fills every few requests.
    Freezing the survivors and collecting the young less often saves about a tenth of the CPU
    of a run (`benchmarks/bench_overhead.py`); reference counting still frees almost everything
    a request allocates at once.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(_YOUNG_GC_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
