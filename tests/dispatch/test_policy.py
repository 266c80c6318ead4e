"""Tests for batchroute.dispatch.policy: the taxonomy table, with no network and no clock."""

from __future__ import annotations

import pytest

from batchroute.dispatch.policy import RESPONSES, Action, Decision, Ending, RowState, decide
from batchroute.schema import ErrorType


def state(
    *, attempts: int = 1, retries_here: int = 1, has_next_model: bool = True, max_attempts: int = 8
) -> RowState:
    return RowState(
        attempts=attempts,
        max_attempts=max_attempts,
        retries_here=retries_here,
        max_retries_per_model=3,
        has_next_model=has_next_model,
    )


RETRYABLE = [
    ErrorType.RATE_LIMITED,
    ErrorType.TIMEOUT,
    ErrorType.CONFLICT,
    ErrorType.SERVER_ERROR,
    ErrorType.CONNECTION,
    ErrorType.MALFORMED_RESPONSE,
]
FALL_BACK = [
    ErrorType.MODEL_NOT_FOUND,
    ErrorType.CONTEXT_LENGTH,
    ErrorType.CONTENT_FILTER,
    ErrorType.INVALID_JSON,
]


def test_an_answer_is_done() -> None:
    assert decide(None, state()) == Decision(Action.OK)


@pytest.mark.parametrize("error_type", RETRYABLE)
def test_retryable_errors_retry_then_fall_back_then_fail(error_type: str) -> None:
    assert decide(error_type, state(retries_here=3)) == Decision(Action.RETRY)
    assert decide(error_type, state(retries_here=4)) == Decision(Action.FALLBACK)
    assert decide(error_type, state(retries_here=4, has_next_model=False)) == Decision(
        Action.FAIL, Ending.NO_MODEL_LEFT
    )


@pytest.mark.parametrize("error_type", FALL_BACK)
def test_fall_back_errors_move_on_at_once(error_type: str) -> None:
    assert decide(error_type, state()) == Decision(Action.FALLBACK)
    assert decide(error_type, state(has_next_model=False)) == Decision(
        Action.FAIL, Ending.NO_MODEL_LEFT
    )


def test_auth_aborts_and_other_4xx_fail_the_row() -> None:
    assert decide(ErrorType.AUTH, state()) == Decision(Action.ABORT, Ending.ERROR)
    assert decide(ErrorType.BAD_REQUEST, state()) == Decision(Action.FAIL, Ending.ERROR)
    assert decide("something new", state()) == Decision(Action.FAIL, Ending.ERROR)


def test_the_attempt_cap_outranks_retry_and_fallback() -> None:
    capped = state(attempts=8)
    assert decide(ErrorType.SERVER_ERROR, capped) == Decision(
        Action.FAIL, Ending.ATTEMPTS_EXHAUSTED
    )
    assert decide(ErrorType.MODEL_NOT_FOUND, capped) == Decision(
        Action.FAIL, Ending.ATTEMPTS_EXHAUSTED
    )
    # With no model left, the row says so rather than blaming the attempt cap.
    assert decide(ErrorType.MODEL_NOT_FOUND, state(attempts=8, has_next_model=False)) == Decision(
        Action.FAIL, Ending.NO_MODEL_LEFT
    )


def test_the_table_covers_every_error_a_reply_can_carry() -> None:
    assert set(RETRYABLE) | set(FALL_BACK) | {ErrorType.AUTH, ErrorType.BAD_REQUEST, None} == set(
        RESPONSES
    )
