"""What goes into the dispatcher and what comes out: a row's request, its attempts, its outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = [
    "AttemptRecord",
    "EscalationHook",
    "EscalationProgress",
    "RowOutcome",
    "RowRequest",
    "rejection_message",
]


@dataclass(slots=True)
class RowRequest:
    """One row, classified and ready to send."""

    id: str
    row_index: int
    row_key: str
    tier: str
    messages: list[dict[str, str]]
    prompt_tokens: int
    """The prompt's size from `batchroute.pricing.tokens`, for limits and context checks."""
    prompt_token_bound: int | None = None
    """A true upper bound on the prompt's tokens (`pricing.tokens.message_token_bound`), which
    the budget reserves for; without one it reserves for `prompt_tokens`, an estimate."""
    cache_key: bytes | None = None
    """The response-cache key of the request to its tier's first model, when the runner made
    it to look the row up (`RunCache.lookup_keyed`); the walk stores the answer under it."""


@dataclass(slots=True)
class AttemptRecord:
    """One HTTP attempt, as attempts.parquet records it (the costs module adds the cost)."""

    model: str
    attempt: int
    status_code: int | None
    error_type: str | None
    action: str
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    latency_ms: float
    started_at: datetime
    batch: bool = False
    """Sent through the Batch API (priced at batch rates), not online."""
    tier: str | None = None
    """The tier whose chain the attempt was on (escalation moves a row up its path)."""
    escalation_depth: int = 0
    verify: str | None = None
    """The checks' verdict on this attempt's answer: passed, failed, or None (not checked)."""
    verify_failures: str | None = None
    judge: bool = False
    """Whether the attempt was a judge grading an answer (its cost is reported apart)."""


def rejection_message(why: str, model: str) -> str:
    """How a row's error message words an answer its checks refused (`why`, from `model`)."""
    return f"the answer failed its checks: {why} [{model}]"


@dataclass(frozen=True, slots=True)
class EscalationProgress:
    """How far up its escalation path a row had climbed when an earlier session stopped.

    Read back from the attempts that session made durable (`store.escalations`), so a resumed
    row starts at the tier it reached, with the depth, attempts, failed checks and failed tokens
    an uninterrupted walk would have carried there.
    """

    depth: int
    """Escalations made: the row resumes at the `depth`-th tier of its path."""
    attempts: int
    """Attempts already made (and paid for); the next one is numbered `attempts + 1`."""
    verify_failures: tuple[str, ...] = ()
    """The failed checks so far, as `tier/model: check: why` (`RowOutcome.verify_failures`)."""
    failed_input_tokens: int = 0
    failed_output_tokens: int = 0
    last_message: str | None = None
    """Why the last rejected answer was refused, as the walk words it (a row that then fails
    for want of a model reports it)."""


EscalationHook = Callable[[RowRequest, list[AttemptRecord]], Awaitable[None]]
"""Called when a row climbs a tier, with the attempts made since the last call (taken out of
the outcome): it returns once they are durable, before the next tier is asked."""


class Answer(Protocol):
    """An answer's text and usage, as a completion or the response cache gives them."""

    @property
    def content(self) -> str | None: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...


@dataclass(slots=True)
class RowOutcome:
    """What happened to one row: its answer or the reason it has none, and every attempt."""

    status: str
    model_requested: str
    model_used: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempts: int = 0
    fallback_depth: int = 0
    content: str | None = None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    failed_input_tokens: int = 0
    failed_output_tokens: int = 0
    latency_ms: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    verified: bool | None = None
    """Whether the final answer passed its tier's checks; None when the tier has none."""
    verify_failures: list[str] = field(default_factory=list)
    """Every failed check on the way, as `tier/model: check: why`."""
    escalated_from: str | None = None
    """The row's own tier, when a failed check sent it up its escalation path."""
    escalation_depth: int = 0
    answered_tier: str | None = None
    """The tier whose chain gave the final answer."""
    attempt_records: list[AttemptRecord] = field(default_factory=list)
    batch: bool = False
    """Answered through the Batch API (priced at batch rates)."""
    cache_hit: bool = False
    """Answered from the response cache (`batchroute.cache`): nothing was sent or paid."""
    cost_estimate_usd: float | None = None
    """The answer's cost as a float, priced once by the walk, for the progress display only;
    None where it was not priced (reports use the exact Decimal cost from the usage)."""

    def keep_answer(self, model: str, answer: Answer, *, latency_ms: float | None) -> None:
        """Keep `answer`, from `model`, as the row's answer: its text, finish reason and usage."""
        self.model_used = model
        self.content = answer.content
        self.finish_reason = answer.finish_reason
        self.input_tokens = answer.input_tokens
        self.output_tokens = answer.output_tokens
        self.cached_tokens = answer.cached_tokens
        self.reasoning_tokens = answer.reasoning_tokens
        self.latency_ms = latency_ms
