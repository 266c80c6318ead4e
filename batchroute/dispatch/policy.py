"""The failure taxonomy: what a row does after each reply, as one table and one pure function.

    reply                                   response      then
    ok                                      done          the row is answered
    429, 408, 409, 5xx, timeout,            retry         the same model, after a backoff (a
    connection error, malformed 2xx body                  429's retry-after is a minimum); once
                                                          `retry.max_retries_per_model` retries
                                                          are used up, the next model
    404 model not found                     fall back     the next model; the model is skipped
                                                          for the rest of the run
    400 context_length_exceeded             fall back     the next model whose window fits
    finish_reason content_filter            fall back     the next model
    JSON asked for, answer not JSON         fall back     the next model
    401, 403                                abort         the run stops (a bad key)
    any other 4xx                           fail          the row fails with the provider's words

Whatever the table says, a row never makes more than `retry.max_attempts_per_row` attempts, and
a row with no model left fails with the last error. `decide` knows nothing of networks, clocks
or limiters: the walk (`walk.py`) applies the side effects (a 429 slows the model, a 404 retires
it) and asks `decide` what the row does next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from batchroute.schema import ErrorType

__all__ = ["RESPONSES", "Action", "Decision", "Ending", "RowState", "decide", "is_retryable"]


class Action:
    """What followed an attempt, as attempts.parquet records it."""

    OK: Final = "ok"
    RETRY: Final = "retry"
    FALLBACK: Final = "fallback"
    ESCALATE: Final = "escalate"
    """The answer failed its tier's checks: the row goes up its escalation path."""
    FAIL: Final = "fail"
    ABORT: Final = "abort"


class Ending:
    """Why a row's walk ended without an answer, when it did."""

    ERROR: Final = "error"
    """The reply's own error ends the row (a 400, a 401, a 404 that aborted the run)."""
    ATTEMPTS_EXHAUSTED: Final = "attempts_exhausted"
    """`retry.max_attempts_per_row` attempts were made."""
    NO_MODEL_LEFT: Final = "no_model_left"
    """The chain has no model left that this row may call."""


_RETRY: Final = "retry"
_FALL_BACK: Final = "fall back"
_FAIL: Final = "fail"
_ABORT: Final = "abort"

RESPONSES: Final[dict[str | None, str]] = {
    None: "done",
    ErrorType.RATE_LIMITED: _RETRY,
    ErrorType.TIMEOUT: _RETRY,
    ErrorType.CONFLICT: _RETRY,
    ErrorType.SERVER_ERROR: _RETRY,
    ErrorType.CONNECTION: _RETRY,
    ErrorType.MALFORMED_RESPONSE: _RETRY,
    ErrorType.MODEL_NOT_FOUND: _FALL_BACK,
    ErrorType.CONTEXT_LENGTH: _FALL_BACK,
    ErrorType.CONTENT_FILTER: _FALL_BACK,
    ErrorType.INVALID_JSON: _FALL_BACK,
    ErrorType.AUTH: _ABORT,
    ErrorType.BAD_REQUEST: _FAIL,
}
"""The taxonomy: each error type's response; a type not listed fails the row."""


@dataclass(frozen=True, slots=True)
class RowState:
    """What `decide` needs to know about a row after one reply."""

    attempts: int
    """HTTP attempts made so far, this one included."""
    max_attempts: int
    retries_here: int
    """Retryable errors on the current model so far, this one included."""
    max_retries_per_model: int
    has_next_model: bool
    """Whether the chain still has a model this row may call after the current one."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The action to record for the attempt, and why the row ends (None: it goes on)."""

    action: str
    ending: str | None = None


_DONE: Final = Decision(Action.OK)
_RETRY_NOW: Final = Decision(Action.RETRY)
_FALLBACK: Final = Decision(Action.FALLBACK)
_EXHAUSTED: Final = Decision(Action.FAIL, Ending.ATTEMPTS_EXHAUSTED)
_NO_MODEL: Final = Decision(Action.FAIL, Ending.NO_MODEL_LEFT)


def decide(error_type: str | None, row: RowState) -> Decision:
    """What the row does after a reply of `error_type` (None: a good answer)."""
    response = RESPONSES.get(error_type, _FAIL)
    if response == "done":
        return _DONE
    if response == _ABORT:
        return Decision(Action.ABORT, Ending.ERROR)
    if response == _FAIL:
        return Decision(Action.FAIL, Ending.ERROR)
    if row.attempts >= row.max_attempts and (response == _RETRY or row.has_next_model):
        return _EXHAUSTED
    if response == _RETRY and row.retries_here <= row.max_retries_per_model:
        return _RETRY_NOW
    if not row.has_next_model:
        return _NO_MODEL
    return _FALLBACK


def is_retryable(error_type: str | None) -> bool:
    """Whether the table answers `error_type` with a retry of the same model."""
    return RESPONSES.get(error_type) == _RETRY
