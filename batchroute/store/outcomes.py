"""Turning dispatch outcomes into result and attempt frames, a few thousand rows at a time.

The hot path appends one tuple per finished row; columns are built, joined with the rows'
classification and passthrough metadata, and priced in one vectorised step when a part is flushed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import polars as pl

from batchroute.schema import ATTEMPT_SCHEMA, COST_DTYPE, RESULT_SCHEMA

if TYPE_CHECKING:
    from batchroute.dispatch.dispatcher import RowOutcome
    from batchroute.dispatch.rows import AttemptRecord

__all__ = ["OutcomeBuffer", "ROW_CONTEXT_COLUMNS", "skipped_results"]

ROW_CONTEXT_COLUMNS: tuple[str, ...] = (
    "id",
    "row_index",
    "line",
    "row_key",
    "tier",
    "tier_source",
    "matched_signal",
    "classifier_confidence",
    "model_requested",
)
"""Result columns known before a row is sent; they come from the classified batch."""

_OUTCOME_COLUMNS: tuple[str, ...] = tuple(
    name for name in RESULT_SCHEMA.names() if name not in ROW_CONTEXT_COLUMNS
)
_OUTCOME_SCHEMA = pl.Schema(
    [("row_index", pl.Int64()), *((n, RESULT_SCHEMA[n]) for n in _OUTCOME_COLUMNS)]
)
# Times (`started_at`, `finished_at`) travel as microseconds since the epoch: polars converts
# an aware datetime at about 1.3 us apiece, an int at a twentieth of that (issue 15). The frame
# constructor takes the ints straight into the schema's `Datetime("us", "UTC")` columns, with
# no cast pass afterwards (about 100 us less per commit's frame).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime | None) -> int | None:
    """Microseconds since the epoch; a naive time is taken as UTC, as polars takes it."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


_attempt_usage = attrgetter(
    "model",
    "attempt",
    "status_code",
    "error_type",
    "action",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
)
_attempt_rest = attrgetter(
    "batch",
    "tier",
    "escalation_depth",
    "verify",
    "verify_failures",
    "judge",
)
"""The values of an AttemptRecord, in ATTEMPT_SCHEMA's order after the row's own columns:
before and after `cost_usd` and `priced`, which are priced when the results are assembled
(`latency_ms` and `started_at`, in microseconds, go between the two)."""


def _outcome_values(outcome: RowOutcome) -> tuple[Any, ...]:
    return (
        outcome.model_used,
        outcome.status,
        outcome.error_type,
        outcome.error_message,
        outcome.attempts,
        outcome.fallback_depth,
        outcome.content,
        outcome.finish_reason,
        outcome.input_tokens,
        outcome.output_tokens,
        outcome.cached_tokens,
        outcome.reasoning_tokens,
        outcome.failed_input_tokens,
        outcome.failed_output_tokens,
        None,  # cost_usd: priced from the usage when the results are assembled
        None,  # failed_cost_usd
        None,  # priced
        outcome.latency_ms,
        _micros(outcome.started_at),
        _micros(outcome.finished_at),
        outcome.batch,
        outcome.cache_hit,
        None,  # cache_saved_usd: priced from the usage when the results are assembled
        outcome.verified,
        "; ".join(outcome.verify_failures) if outcome.verify_failures else None,
        outcome.escalated_from,
        outcome.escalation_depth,
        outcome.answered_tier,
    )


class OutcomeBuffer:
    """Finished rows waiting to be written, each with its context from the classified batch.

    A row's context (`ROW_CONTEXT_COLUMNS` and the passthrough metadata) travels with it as a
    tuple, so building a part is one frame constructor: no join against the batches in flight.
    """

    def __init__(self, *, metadata_columns: Sequence[str]) -> None:
        self.metadata_columns = tuple(metadata_columns)
        self.context_columns = (*ROW_CONTEXT_COLUMNS, *self.metadata_columns)
        self._schema: pl.Schema | None = None
        self._rows: list[tuple[Any, ...]] = []
        self._attempts: list[tuple[Any, ...]] = []
        self._frames: list[pl.DataFrame] = []

    def __len__(self) -> int:
        return len(self._rows) + sum(frame.height for frame in self._frames)

    def __repr__(self) -> str:
        return f"<OutcomeBuffer [rows: {len(self._rows)}, frames: {len(self._frames)}]>"

    def contexts(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The context columns of a classified batch, in the order `add` expects them."""
        context = frame.select(self.context_columns)
        if self._schema is None:
            self._schema = pl.Schema([*context.schema.items(), *list(_OUTCOME_SCHEMA.items())[1:]])
        return context

    def add(self, context: tuple[Any, ...], outcome: RowOutcome) -> None:
        """Record one finished row (its context tuple, as `contexts` gives it) and its attempts."""
        self._rows.append(context + _outcome_values(outcome))
        row_id, row_index, _, row_key = context[:4]
        self.add_attempts((row_id, row_index, row_key), outcome.attempt_records)

    def add_attempts(self, row: tuple[str, int, str], records: Iterable[AttemptRecord]) -> None:
        """Record attempts of a row (`(id, row_index, row_key)`), in ATTEMPT_SCHEMA's order: a
        settled row's, or the rejected answers of a row that climbs a tier, made durable before
        it goes on."""
        for record in records:
            self._attempts.append(
                (
                    *row,
                    *_attempt_usage(record),
                    None,
                    None,
                    record.latency_ms,
                    _micros(record.started_at),
                    *_attempt_rest(record),
                )
            )

    @property
    def is_empty(self) -> bool:
        """Nothing to write: no row, and no attempt of a row still on its way."""
        return not (self._rows or self._frames or self._attempts)

    def add_unsent(
        self, context: tuple[Any, ...], *, status: str, error_type: str, message: str
    ) -> None:
        """Record a row whose request was abandoned before it was answered."""
        now = _micros(datetime.now(UTC))
        self._rows.append(
            context
            + (None, status, error_type, message, 0, 0, None, None)
            + (0, 0, 0, 0, 0, 0, None, None, None, None, None, now, False, False, None)
            + (None, None, None, 0, None)
        )

    def add_frame(self, frame: pl.DataFrame) -> None:
        """Record rows that were settled without being sent, already in RESULT_SCHEMA form."""
        if frame.height:
            self._frames.append(frame)

    def take(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Everything buffered, as (results, attempts) frames; the buffer is left empty."""
        parts = list(self._frames)
        if self._rows:
            assert self._schema is not None, "contexts() comes before add()"
            sent = pl.DataFrame(self._rows, schema=self._schema, orient="row")
            if self.metadata_columns:  # else the rows are in RESULT_SCHEMA's order already
                sent = sent.select(*RESULT_SCHEMA.names(), *self.metadata_columns)
            parts.append(sent)
        # Built in ATTEMPT_SCHEMA's order (see `add`): a commit every few milliseconds pays no
        # select on top of the frame constructor (issue 15).
        attempts = pl.DataFrame(self._attempts, schema=ATTEMPT_SCHEMA, orient="row")
        results = (
            pl.concat(parts, how="vertical_relaxed")
            if parts
            else pl.DataFrame(schema={**RESULT_SCHEMA, **_empty_metadata(self.metadata_columns)})
        )
        self._rows, self._attempts, self._frames = [], [], []
        return results, attempts


def _empty_metadata(columns: Iterable[str]) -> dict[str, pl.DataType]:
    return dict.fromkeys(columns, pl.String())


def skipped_results(
    frame: pl.DataFrame,
    *,
    status: str,
    error_type: str,
    message: str | pl.Expr,
    metadata_columns: Sequence[str],
) -> pl.DataFrame:
    """Result rows for classified rows that are settled without a request (vectorised)."""
    now = datetime.now(UTC)
    message_expr = message if isinstance(message, pl.Expr) else pl.lit(message, pl.String)
    return frame.select(
        *ROW_CONTEXT_COLUMNS,
        pl.lit(None, pl.String).alias("model_used"),
        pl.lit(status, pl.String).alias("status"),
        pl.lit(error_type, pl.String).alias("error_type"),
        message_expr.cast(pl.String).alias("error_message"),
        pl.lit(0, pl.Int32).alias("attempts"),
        pl.lit(0, pl.Int32).alias("fallback_depth"),
        pl.lit(None, pl.String).alias("content"),
        pl.lit(None, pl.String).alias("finish_reason"),
        *(
            pl.lit(0, pl.Int64).alias(name)
            for name in (
                "input_tokens",
                "output_tokens",
                "cached_tokens",
                "reasoning_tokens",
                "failed_input_tokens",
                "failed_output_tokens",
            )
        ),
        pl.lit(0, COST_DTYPE).alias("cost_usd"),
        pl.lit(0, COST_DTYPE).alias("failed_cost_usd"),
        pl.lit(True).alias("priced"),
        pl.lit(None, pl.Float64).alias("latency_ms"),
        pl.lit(None, RESULT_SCHEMA["started_at"]).alias("started_at"),
        pl.lit(now, RESULT_SCHEMA["finished_at"]).alias("finished_at"),
        pl.lit(False).alias("batch"),
        pl.lit(False).alias("cache_hit"),
        pl.lit(0, COST_DTYPE).alias("cache_saved_usd"),
        pl.lit(None, pl.Boolean).alias("verified"),
        pl.lit(None, pl.String).alias("verify_failures"),
        pl.lit(None, pl.String).alias("escalated_from"),
        pl.lit(0, pl.Int32).alias("escalation_depth"),
        pl.lit(None, pl.String).alias("answered_tier"),
        *metadata_columns,
    )
