"""Batch mode: a tier's rows through OpenAI's Batch API, at the batch price, within 24 hours.

`BatchRunner` takes the rows of `mode: batch` tiers while the input is read, and once it is read
submits them through the official client (`files.create(purpose="batch")`, `batches.create`),
polls (`batches.retrieve`, with backoff; `batches.cancel` past `batch.deadline_h`), and collects
(`files.content` of the output and the error file), mapping every line back to its row by
`custom_id`, which is the row key. Request
bodies are the online path's (`walk.plan_tiers`, so `params.adapt_body` shaped them).

Held rows are spooled, not kept: each input batch's held rows (context and request) are written
to an Arrow IPC file under `<run_dir>/batch_spool/` as they arrive, and only what is small per row
stays in memory (row key, tier, token counts, the size of its input line). A file's rows are read
back from the spool when it is submitted, collected or sent online, so memory stays bounded
however many rows go through the Batch API. The spool belongs to one session (a rerun reads the
input again) and is removed when `finish` returns.

Every submission is written to the run directory's ledger (`store.batchledger`) before waiting
begins, so a rerun polls what an earlier session submitted and submits no row twice. Each ending:

- a line answered: the row is answered, `batch` true, priced at the batch rates;
- an error line: the failure taxonomy (`policy.RESPONSES`) decides. A retryable error is
  resubmitted, a fall-back error goes online (down the tier's chain), any other fails the row
  with the provider's words and the line number;
- `expired` / `cancelled`: answered lines are kept; the rest are resubmitted up to
  `batch.max_resubmits` times, and go online past that or past `batch.deadline_h`;
- `failed` (validation): the rows fail with the error, which names the line;
- no `output_file_id` (every line failed): only the error file is read.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import anyio
import openai
import polars as pl

from batchroute.config import Job
from batchroute.dispatch.batchfiles import (
    ENDPOINT,
    MAX_FILE_BYTES,
    MAX_FILE_REQUESTS,
    Line,
    file_numbers,
    read_line,
    request_lines,
    split_files,
    validation_error,
)
from batchroute.dispatch.client import scrub_secrets, status_error_type
from batchroute.dispatch.dispatcher import Dispatcher
from batchroute.dispatch.policy import RESPONSES, Action, is_retryable
from batchroute.dispatch.rows import AttemptRecord, RowOutcome, RowRequest
from batchroute.dispatch.walk import plan_tiers
from batchroute.errors import JobError
from batchroute.logs import log_event
from batchroute.pricing.budget import Budget
from batchroute.pricing.costs import FloatRates
from batchroute.pricing.prices import PriceTable
from batchroute.schema import ErrorType, Status
from batchroute.store.batchledger import BatchLedger, Submission, SubmissionState

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_FILE_REQUESTS",
    "BatchRunner",
    "check_no_wait",
    "request_lines",
    "split_files",
]

_TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
_UNANSWERED: Final = "unanswered"
"""A line the batch never ran (expired, cancelled): resubmitted like a retryable error."""
_REQUEST_COLUMNS: Final = ("messages", "prompt_tokens", "prompt_token_bound")
_INDEX_COLUMNS: Final = ("row_key", "tier", "prompt_tokens", "prompt_token_bound", "_bytes")
"""What stays in memory of a held row; the rest waits in the spool."""
SPOOL_DIR: Final = "batch_spool"

logger = logging.getLogger("batchroute")

Settle = Callable[[tuple[Any, ...], RowOutcome], None]


_COLLECT_FLUSH_ROWS: Final = 5_000
"""Collected answers are committed to the journal this many lines at a time."""


@dataclass(slots=True)
class _Queued:
    """A file of rows waiting to be submitted (or resubmitted)."""

    submission: Submission
    rows: pl.DataFrame
    """The file's rows as the index holds them (`_INDEX_COLUMNS`): no messages."""
    reserved_usd: float = 0.0


def _now() -> datetime:
    return datetime.now(UTC)


def check_no_wait(job: Job) -> None:
    """`--no-wait` leaves batches open for a later run: the endpoint must outlive this one.

    The embedded simulator ends with the run; rehearse `--no-wait` against `batchroute sim`.
    """
    cfg = job.config
    embedded = [
        tier
        for tier in cfg.tiers
        if cfg.tier_mode(tier) == "batch" and cfg.endpoint_for(cfg.tier(tier).model).is_simulator
    ]
    if embedded:
        raise JobError(
            f"--no-wait leaves batches open for a later run, but tier {embedded[0]} is served "
            "by the embedded simulator, which ends with this run; start `batchroute sim` and "
            "set endpoint.base_url to its URL, or run without --no-wait",
            path=job.path,
        )


class BatchRunner:
    """The rows of a run's batch-mode tiers, their submissions, and how each ended."""

    def __init__(self, job: Job, *, run_dir: Any, prices: PriceTable, budget: Budget) -> None:
        cfg = job.config
        self.config = cfg
        self.tiers = frozenset(t for t in cfg.tiers if cfg.tier_mode(t) == "batch")
        self.plans = plan_tiers(cfg)
        self.prices = prices
        self.budget = budget
        self.ledger = BatchLedger(run_dir)
        self.run_name = f"{cfg.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        self.spool_dir = Path(run_dir) / SPOOL_DIR
        self._spooled: list[Path] = []
        self._frames: list[pl.DataFrame] = []
        """The index of held rows (`_INDEX_COLUMNS`), one frame per input batch."""
        self._context_columns: tuple[str, ...] = ()
        self._queue: list[_Queued] = []
        self._open: dict[str, tuple[Submission, float]] = {}
        self._history: dict[str, list[AttemptRecord]] = {}
        self._online: list[str] = []
        self._pending_ledger: list[Submission] = []
        """Collected submissions whose ledger record waits until their rows are durable."""
        self.open_left = 0
        """Submissions not yet collected when `finish` returned (`--no-wait`, a stop)."""
        self.submitted_rows = 0
        self.collected_rows = 0

    def __repr__(self) -> str:
        return (
            f"<BatchRunner tiers={sorted(self.tiers)} [spooled files: {len(self._spooled)}, "
            f"held in memory: {self.held_bytes()} bytes, queued: {len(self._queue)}, "
            f"open: {len(self._open)}, submitted rows: {self.submitted_rows}, "
            f"collected rows: {self.collected_rows}]>"
        )

    def wants(self, tier: str) -> bool:
        """Whether the tier's rows go through the Batch API."""
        return tier in self.tiers

    async def hold(self, frame: pl.DataFrame, context_columns: Sequence[str]) -> None:
        """Spool rows of batch-mode tiers (context and request) until the input is read."""
        if frame.height == 0:
            return
        self._context_columns = tuple(context_columns)
        rows = frame.select(*context_columns, *_REQUEST_COLUMNS)
        path = self.spool_dir / f"{len(self._spooled):06d}.arrow"
        await anyio.to_thread.run_sync(self._spool, rows, path)
        self._spooled.append(path)
        self._frames.append(rows.with_columns(_bytes=self._line_bytes(rows)).select(_INDEX_COLUMNS))

    def held_bytes(self) -> int:
        """The in-memory size of the rows held so far (their index; the rows are spooled)."""
        return sum(int(frame.estimated_size()) for frame in self._frames)

    def _spool(self, rows: pl.DataFrame, path: Path) -> None:
        if not self._spooled:  # an earlier session's spool: this session reads the input again
            shutil.rmtree(self.spool_dir, ignore_errors=True)
            self.spool_dir.mkdir(parents=True)
        rows.write_ipc(path)

    def _line_bytes(self, rows: pl.DataFrame) -> pl.Series:
        """Each row's input line size in bytes, newline included: files are cut by it."""
        sizes = pl.Series("_bytes", [0] * rows.height, dtype=pl.Int64)
        if rows.height == 0:
            return sizes
        position = pl.int_range(pl.len()).alias("_position")
        parts = []
        for (tier,), part in rows.with_columns(position).partition_by("tier", as_dict=True).items():
            plan = self.plans.get(str(tier)) or self.plans["standard"]
            lines = request_lines(part, plan.bodies[plan.chain[0]])
            parts.append(
                pl.DataFrame({"_position": part["_position"], "_bytes": lines.str.len_bytes() + 1})
            )
        return pl.concat(parts).sort("_position")["_bytes"].cast(pl.Int64)

    def _read(self, keys: Sequence[str]) -> pl.DataFrame:
        """The spooled rows of these keys, in the keys' order, read one spool file at a time."""
        wanted = pl.DataFrame({"row_key": list(keys)}, schema={"row_key": pl.String})
        found = [
            pl.scan_ipc(path).filter(pl.col("row_key").is_in(wanted["row_key"])).collect()
            for path in self._spooled
        ]
        rows = pl.concat(found, how="vertical_relaxed")
        return wanted.join(rows, on="row_key", how="inner", maintain_order="left")

    def _contexts_of(self, keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """Each key's context tuple (the columns the outcome buffer expects), from the spool."""
        if not keys:
            return {}
        rows = self._read(keys)
        contexts = rows.select(self._context_columns).iter_rows()
        return dict(zip(rows["row_key"], contexts, strict=True))

    # -- the whole life ------------------------------------------------------------------------

    async def finish(
        self,
        dispatcher: Dispatcher,
        *,
        wait: bool,
        settle: Settle,
        flush: Callable[[], Awaitable[None]],
        stopping: Callable[[], bool],
        context_columns: Sequence[str],
    ) -> None:
        """Submit what is new, resume what was submitted, and (waiting) collect everything."""
        self._context_columns = tuple(context_columns)
        try:
            await self._finish(dispatcher, wait=wait, settle=settle, flush=flush, stopping=stopping)
        finally:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
            self._spooled = []

    async def _finish(
        self,
        dispatcher: Dispatcher,
        *,
        wait: bool,
        settle: Settle,
        flush: Callable[[], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        rows = pl.concat(self._frames, how="vertical_relaxed") if self._frames else None
        self._frames = []
        if rows is None:
            rows = pl.DataFrame(schema={"row_key": pl.String})
        self._rows = rows
        self._positions = {key: i for i, key in enumerate(rows["row_key"])} if rows.height else {}
        self._settle = settle
        self._flush = flush
        self._dispatcher = dispatcher
        earlier = self.ledger.uncollected()
        known = {key for sub in earlier for key in sub.row_keys}
        for sub in earlier:
            await self._resume(sub)
        if rows.height:
            fresh = rows.filter(~pl.col("row_key").is_in(list(known)))
            self._enqueue(fresh, round=0, first_submitted_at=_now())
        delay = self.config.batch.poll_initial_s
        while True:
            submitted = await self._submit_queued()
            if not wait or stopping():
                break
            changed = await self._poll_open()
            await self._go_online(flush)
            await flush()
            if not self._open and not self._queue:
                break
            delay = self.config.batch.poll_initial_s if submitted or changed else delay
            self._log_progress(delay)
            await _sleep_unless(delay, stopping)
            delay = min(delay * 2, self.config.batch.poll_max_s)
        self.open_left = len(self._open) + len(self._queue)
        if stopping():
            self._settle_stopped()
            await flush()

    def _settle_stopped(self) -> None:
        """The run was stopped while batches were open: say where each waiting row is."""
        for sub, _ in self._open.values():
            contexts = self._contexts_of([k for k in sub.row_keys if k in self._positions])
            for key, context in contexts.items():
                self._settle_row(
                    key,
                    self._unsent(
                        sub,
                        f"submitted in batch {sub.batch_id}, still open when the run was "
                        "stopped; rerun the same command to collect it",
                    ),
                    context,
                )
        for item in self._queue:
            for key, context in self._contexts_of(item.rows["row_key"].to_list()).items():
                self._settle_row(
                    key, self._unsent(item.submission, "not sent: the run was stopped"), context
                )

    def _unsent(self, sub: Submission, message: str) -> RowOutcome:
        outcome = self._outcome(sub, Status.SKIPPED_INTERRUPTED)
        outcome.error_type, outcome.error_message = ErrorType.INTERRUPTED, message
        return outcome

    def _log_progress(self, delay: float) -> None:
        open_rows = sum(len(sub.row_keys) for sub, _ in self._open.values())
        log_event(
            logger,
            "batch_progress",
            f"batches: {len(self._open)} open ({open_rows} rows), {len(self._queue)} waiting "
            f"to be submitted, {self.collected_rows} rows collected; next poll in {delay:g} s",
            open_batches=len(self._open),
            open_rows=open_rows,
            collected_rows=self.collected_rows,
        )

    # -- submitting ----------------------------------------------------------------------------

    def _enqueue(self, rows: pl.DataFrame, *, round: int, first_submitted_at: datetime) -> None:
        """Cut rows into files per tier (and so per model) within the API's limits; queue them."""
        if rows.height == 0:
            return
        for (tier,), part in rows.partition_by("tier", as_dict=True).items():
            plan = self.plans.get(str(tier)) or self.plans["standard"]
            model = plan.chain[0]
            tokens = part["prompt_tokens"] + plan.reserved_output_tokens[model]
            limit = self.config.models[model].batch_max_enqueued_tokens
            files = file_numbers(part["_bytes"], tokens, max_tokens=limit)
            for (_,), chunk in (
                part.with_columns(_file=files, _tokens=tokens)
                .partition_by("_file", as_dict=True, maintain_order=True)
                .items()
            ):
                sub = Submission(
                    name="",
                    tier=str(tier),
                    model=model,
                    row_keys=chunk["row_key"].to_list(),
                    first_submitted_at=first_submitted_at.isoformat(),
                    round=round,
                    tokens=int(chunk["_tokens"].sum()),
                )
                self._queue.append(_Queued(sub, chunk.drop("_file", "_tokens")))

    async def _submit_queued(self) -> bool:
        """Submit queued files the enqueued-token limits allow; True if any was submitted."""
        submitted = False
        waiting: list[_Queued] = []
        for item in self._queue:
            sub = item.submission
            limit = self.config.models[sub.model].batch_max_enqueued_tokens
            enqueued = sum(s.tokens for s, _ in self._open.values() if s.model == sub.model)
            if limit is not None and enqueued and enqueued + sub.tokens > limit:
                waiting.append(item)  # the provider would refuse it until a batch finishes
                continue
            if not self._reserve(item):
                self._settle_skipped(
                    item.rows,
                    Status.SKIPPED_BUDGET,
                    ErrorType.BUDGET,
                    "not sent: the budget cap was reached",
                )
                continue
            await self._submit(item)
            submitted = True
        self._queue = waiting
        return submitted

    def _reserve(self, item: _Queued) -> bool:
        """Reserve the file's worst case at batch prices before it is submitted."""
        price = self.prices.get(item.submission.model)
        if price is None or self.budget.max_cost_usd is None:
            return True
        rates = FloatRates.of(price.batch_price())
        plan = self.plans.get(item.submission.tier) or self.plans["standard"]
        bound = item.rows["prompt_token_bound"].fill_null(item.rows["prompt_tokens"]).sum()
        cost = rates.worst_case_usd(
            prompt_tokens=int(bound),
            output_tokens=item.rows.height * plan.reserved_output_tokens[item.submission.model],
        )
        if not self.budget.reserve(cost):
            return False
        item.reserved_usd = cost
        return True

    async def _submit(self, item: _Queued) -> None:
        sub = item.submission
        sub.name = self.ledger.next_name()
        self.ledger.record(sub)  # preparing: a crash from here re-uploads, nothing is billed
        plan = self.plans.get(sub.tier) or self.plans["standard"]
        rows = await anyio.to_thread.run_sync(self._read, sub.row_keys)
        lines = request_lines(rows, plan.bodies[sub.model])
        data = ("\n".join(lines.to_list()) + "\n").encode()
        del rows, lines
        client = self._client(sub.model)
        try:
            uploaded = await client.files.create(
                file=(f"{self.run_name}-{sub.name}.jsonl", data), purpose="batch"
            )
            sub.input_file_id, sub.state = uploaded.id, SubmissionState.UPLOADED
            self.ledger.record(sub)
            await self._create_batch(sub)
        except openai.APIError as exc:
            self._refused(sub, item, exc)
            return
        self._open[sub.name] = (sub, item.reserved_usd)
        self.submitted_rows += len(sub.row_keys)
        log_event(
            logger,
            "batch_submitted",
            f"submitted batch {sub.batch_id}: {len(sub.row_keys)} {sub.tier} rows for "
            f"{sub.model} ({len(data)} bytes)",
            batch_id=sub.batch_id,
            rows=len(sub.row_keys),
            model=sub.model,
        )

    async def _create_batch(self, sub: Submission) -> None:
        assert sub.input_file_id is not None
        batch = await self._client(sub.model).batches.create(
            input_file_id=sub.input_file_id,
            endpoint=ENDPOINT,
            completion_window="24h",
            metadata={"batchroute_submission": sub.name},
        )
        sub.batch_id, sub.status, sub.state = batch.id, batch.status, SubmissionState.OPEN
        sub.submitted_at = _now().isoformat()
        self.ledger.record(sub)

    def _refused(self, sub: Submission, item: _Queued, exc: openai.APIError) -> None:
        """The endpoint refused the submission: its rows go online instead."""
        said = scrub_secrets(str(exc), secret=self._client(sub.model).api_key)[:300]
        self.budget.settle(item.reserved_usd, 0.0)
        sub.state = SubmissionState.COLLECTED
        sub.notes.append(f"not submitted: {said}")
        self.ledger.record(sub)
        log_event(
            logger,
            "warning",
            f"the Batch API refused {len(sub.row_keys)} {sub.tier} rows ({said}); "
            "sending them online",
            level=logging.WARNING,
            reason="batch_refused",
        )
        self._online.extend(sub.row_keys)

    async def _resume(self, sub: Submission) -> None:
        """Take up a submission an earlier session recorded, from the step it reached."""
        if sub.state == SubmissionState.OPEN:
            self._open[sub.name] = (sub, 0.0)
            return
        if sub.state == SubmissionState.UPLOADED:
            found = await self._batch_for_file(sub)
            if found is not None:
                sub.batch_id, sub.state = found, SubmissionState.OPEN
                self.ledger.record(sub)
            else:
                await self._create_batch(sub)
            self._open[sub.name] = (sub, 0.0)
            return
        # preparing: nothing reached the provider; submit the rows again if they are here
        present = [key for key in sub.row_keys if key in self._positions]
        sub.state = SubmissionState.COLLECTED
        sub.notes.append("never uploaded; its rows were queued again")
        self.ledger.record(sub)
        if present:
            rows = self._rows.filter(pl.col("row_key").is_in(present))
            self._enqueue(rows, round=sub.round, first_submitted_at=_now())

    async def _batch_for_file(self, sub: Submission) -> str | None:
        """The batch an earlier session created from this input file, if it got that far."""
        async for batch in self._client(sub.model).batches.list(limit=100):
            if batch.input_file_id == sub.input_file_id:
                return batch.id
        return None

    def _client(self, model: str) -> openai.AsyncOpenAI:
        return self._dispatcher.models[model].client

    # -- polling and collecting ----------------------------------------------------------------

    async def _poll_open(self) -> bool:
        """Retrieve every open batch; collect the finished ones. True if any finished."""
        changed = False
        for name, (sub, reserved) in list(self._open.items()):
            assert sub.batch_id is not None
            batch: Any
            try:
                batch = await self._client(sub.model).batches.retrieve(sub.batch_id)
            except openai.NotFoundError:
                # The provider no longer knows the batch: its rows were never answered.
                logger.warning(
                    "batch %s is gone from the endpoint; its rows go again", sub.batch_id
                )
                batch = SimpleNamespace(
                    id=sub.batch_id, status="expired", output_file_id=None, error_file_id=None
                )
            except openai.APIError as exc:
                said = scrub_secrets(str(exc), secret=self._client(sub.model).api_key)[:200]
                logger.warning(
                    "polling batch %s failed (%s); polling again later", sub.batch_id, said
                )
                continue
            if batch.status not in _TERMINAL:
                if batch.status != "cancelling" and self._past_deadline(sub):
                    await self._cancel(sub)
                continue
            sub.status = batch.status
            await self._collect(sub, batch, reserved)
            del self._open[name]
            changed = True
        return changed

    async def _collect(self, sub: Submission, batch: Any, reserved: float) -> None:
        client = self._client(sub.model)
        lines: dict[str, Line] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:  # a batch whose every line failed has no output file
                # streamed, each line cut to what the row needs: memory stays near the answers
                async with client.files.with_streaming_response.content(file_id) as response:
                    async for raw in response.iter_lines():
                        if raw.strip():
                            custom_id, line = read_line(raw)
                            lines[custom_id] = line
        validation = validation_error(batch) if batch.status == "failed" else None
        spent = 0.0
        resubmit: list[str] = []
        submitted_at = datetime.fromisoformat(sub.submitted_at or sub.first_submitted_at)
        latency_ms = (_now() - submitted_at).total_seconds() * 1000
        price = self.prices.get(sub.model)
        rates = FloatRates.of(price.batch_price()) if price is not None else None
        here = [key for key in sub.row_keys if key in self._positions]
        contexts = await anyio.to_thread.run_sync(self._contexts_of, here)
        for number, key in enumerate(sub.row_keys, 1):
            if key not in self._positions:
                continue  # not in this session's input (--limit): left for the run that has it
            outcome, error_type = self._line_outcome(
                sub,
                lines.get(key),
                number=number,
                validation=validation,
                batch_id=batch.id,
                started_at=submitted_at,
                latency_ms=latency_ms,
            )
            if outcome is not None and outcome.status == Status.OK and rates is not None:
                spent += rates.usage_usd(
                    input_tokens=outcome.input_tokens,
                    output_tokens=outcome.output_tokens,
                    cached_tokens=outcome.cached_tokens,
                    reasoning_tokens=outcome.reasoning_tokens,
                )
            if outcome is not None:
                self._settle_row(key, outcome, contexts[key])
                if number % _COLLECT_FLUSH_ROWS == 0:
                    await self._flush()  # bounded: answers go to the journal as they are read
            elif error_type is not None:
                resubmit.append(key)
        self.budget.settle(reserved, spent)
        self._retry_or_online(sub, resubmit)
        sub.state = SubmissionState.COLLECTED
        self._pending_ledger.append(sub)

    def _line_outcome(
        self,
        sub: Submission,
        line: Line | None,
        *,
        number: int,
        validation: tuple[int | None, str] | None,
        batch_id: str,
        started_at: datetime,
        latency_ms: float,
    ) -> tuple[RowOutcome | None, str | None]:
        """A settled outcome, or (None, error type) for a row to try again."""
        record = AttemptRecord(
            model=sub.model,
            attempt=sub.round + 1,
            status_code=None,
            error_type=None,
            action=Action.OK,
            input_tokens=None,
            output_tokens=None,
            cached_tokens=None,
            reasoning_tokens=None,
            latency_ms=latency_ms,
            started_at=started_at,
            batch=True,
        )
        self._history.setdefault(_key_of(sub, number), []).append(record)
        if validation is not None:
            line_no, message = validation
            where = (
                f"line {number}, this row's"
                if line_no == number
                else f"line {line_no} (this row is line {number})"
            )
            record.error_type, record.action = ErrorType.BAD_REQUEST, Action.FAIL
            text = f"batch {batch_id} failed validation at {where}: {message}"
            return self._failed(sub, ErrorType.BAD_REQUEST, text), None
        if line is None or line.status is None:
            record.error_type, record.action = _UNANSWERED, Action.RETRY
            return None, _UNANSWERED
        status = line.status
        record.status_code = status
        if status == 200:
            completion = line.completion
            if completion is None:
                record.error_type, record.action = ErrorType.MALFORMED_RESPONSE, Action.RETRY
                return None, ErrorType.MALFORMED_RESPONSE
            record.input_tokens = completion.input_tokens
            record.output_tokens = completion.output_tokens
            record.cached_tokens = completion.cached_tokens
            record.reasoning_tokens = completion.reasoning_tokens
            if completion.finish_reason == "content_filter":
                record.error_type, record.action = ErrorType.CONTENT_FILTER, Action.FALLBACK
                return None, ErrorType.CONTENT_FILTER
            outcome = self._outcome(sub, Status.OK)
            outcome.keep_answer(sub.model, completion, latency_ms=latency_ms)
            outcome.batch = True
            return outcome, None
        key = self._client(sub.model).api_key
        said = scrub_secrets(line.message, secret=key) if line.message else None
        error_type = status_error_type(status, line.code)
        record.error_type = error_type
        response_kind = RESPONSES.get(error_type)
        if is_retryable(error_type) or response_kind == "fall back":
            record.action = Action.RETRY if is_retryable(error_type) else Action.FALLBACK
            return None, error_type
        record.action = Action.FAIL
        return self._failed(
            sub, error_type, f"HTTP {status}: batch {batch_id} line {number}: {said or error_type}"
        ), None

    def _outcome(self, sub: Submission, status: str) -> RowOutcome:
        return RowOutcome(status=status, model_requested=sub.model, started_at=_now())

    def _failed(self, sub: Submission, error_type: str, message: str) -> RowOutcome:
        outcome = self._outcome(sub, Status.FAILED)
        outcome.error_type, outcome.error_message = error_type, message
        return outcome

    def _past_deadline(self, sub: Submission) -> bool:
        """Whether `batch.deadline_h` has passed since the rows were first submitted."""
        hours = self.config.batch.deadline_h
        first = datetime.fromisoformat(sub.first_submitted_at)
        return hours is not None and _now() > first + timedelta(hours=hours)

    async def _cancel(self, sub: Submission) -> None:
        """Cancel a batch still running past the deadline: its unanswered rows go online."""
        assert sub.batch_id is not None
        client = self._client(sub.model)
        try:
            await client.batches.cancel(sub.batch_id)
        except openai.APIError as exc:
            said = scrub_secrets(str(exc), secret=client.api_key)[:200]
            logger.warning("cancelling batch %s failed (%s)", sub.batch_id, said)
            return
        log_event(
            logger,
            "warning",
            f"batch {sub.batch_id} is past batch.deadline_h; cancelled it, and its unanswered "
            "rows go online once it has stopped",
            level=logging.WARNING,
            reason="batch_deadline",
            batch_id=sub.batch_id,
        )

    def _retry_or_online(self, sub: Submission, keys: list[str]) -> None:
        """Resubmit rows the batch left unanswered, or past the limits send them online."""
        if not keys:
            return
        batch_cfg = self.config.batch
        first = datetime.fromisoformat(sub.first_submitted_at)
        past_deadline = self._past_deadline(sub)
        history = self._history
        again = [
            key
            for key in keys
            if history[key][-1].action == Action.RETRY
            and sub.round < batch_cfg.max_resubmits
            and not past_deadline
        ]
        online = sorted(set(keys) - set(again), key=keys.index)
        for key in online:
            history[key][-1].action = Action.FALLBACK
        self._online.extend(online)
        if again:
            rows = self._rows.filter(pl.col("row_key").is_in(again))
            self._enqueue(rows, round=sub.round + 1, first_submitted_at=first)

    def _settle_row(self, key: str, outcome: RowOutcome, context: tuple[Any, ...]) -> None:
        records = self._history.pop(key, [])
        online = outcome.attempt_records
        for record in online:
            record.attempt += len(records)
        outcome.attempt_records = [*records, *online]
        outcome.attempts += len(records)
        self.collected_rows += 1
        self._settle(context, outcome)

    def _settle_skipped(
        self, rows: pl.DataFrame, status: str, error_type: str, message: str
    ) -> None:
        for key, context in self._contexts_of(rows["row_key"].to_list()).items():
            outcome = RowOutcome(
                status=status,
                model_requested=self._rows["tier"][self._positions[key]] and "",
                error_type=error_type,
                error_message=message,
            )
            self._settle_row(key, outcome, context)

    async def _go_online(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Send rows the Batch API could not answer down their tier's chain, online."""
        keys, self._online = self._online, []
        if keys:
            limiter = anyio.CapacityLimiter(self.config.run.max_in_flight)
            rows = await anyio.to_thread.run_sync(self._read, keys)
            contexts = rows.select(self._context_columns)

            async def send(row: dict[str, Any], context: tuple[Any, ...]) -> None:
                async with limiter:
                    request = RowRequest(
                        id=row["id"],
                        row_index=row["row_index"],
                        row_key=row["row_key"],
                        tier=row["tier"],
                        messages=row["messages"],
                        prompt_tokens=row["prompt_tokens"],
                        prompt_token_bound=row["prompt_token_bound"],
                    )
                    outcome = await self._dispatcher.dispatch(request, durable_climb=False)
                    self._settle_row(row["row_key"], outcome, context)

            async with anyio.create_task_group() as group:
                for row, context in zip(
                    rows.iter_rows(named=True), contexts.iter_rows(), strict=True
                ):
                    group.start_soon(send, row, context)
        await flush()
        for sub in self._pending_ledger:  # their rows are durable in the journal now
            self.ledger.record(sub)
        self._pending_ledger.clear()


async def _sleep_unless(delay: float, stopping: Callable[[], bool]) -> None:
    """Sleep `delay` seconds, waking early once `stopping()` is true (a signal arrived)."""
    step = 0.1
    for _ in range(max(1, math.ceil(delay / step))):
        if stopping():
            return
        await anyio.sleep(step)


def _key_of(sub: Submission, number: int) -> str:
    return sub.row_keys[number - 1]
