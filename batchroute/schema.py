"""The stable Parquet schemas of a run's row-level files, and the words used in them.

These are a public contract: finance queries them with DuckDB or polars, and the README documents
each column. Add columns at the end; never rename or retype one.
"""

from __future__ import annotations

from typing import Final

import polars as pl
from polars._typing import PolarsDataType

__all__ = [
    "ATTEMPT_SCHEMA",
    "COST_DTYPE",
    "INPUT_SCHEMA",
    "RESULT_SCHEMA",
    "ErrorType",
    "Status",
    "TierSource",
]

COST_DTYPE: Final = pl.Decimal(38, 12)
"""Money is exact: USD as a decimal with 12 places (a picodollar), summed without drift."""

_TIME = pl.Datetime("us", "UTC")


def _schema(columns: dict[str, PolarsDataType]) -> pl.Schema:
    return pl.Schema(columns)


class Status:
    """A result row's `status`."""

    OK: Final = "ok"
    FAILED: Final = "failed"
    SKIPPED_BUDGET: Final = "skipped_budget"
    """Not sent: the budget cap was reached first."""
    SKIPPED_INTERRUPTED: Final = "skipped_interrupted"
    """Not sent: SIGTERM/SIGINT stopped the run first. A rerun sends it."""
    SKIPPED_ABORTED: Final = "skipped_aborted"
    """Not sent: the run aborted first (bad key, every model unavailable)."""

    ALL: Final = (OK, FAILED, SKIPPED_BUDGET, SKIPPED_INTERRUPTED, SKIPPED_ABORTED)


class TierSource:
    """How a row's tier was chosen."""

    METADATA: Final = "metadata"
    RULE: Final = "rule"
    CLASSIFIER: Final = "classifier"
    DEFAULT: Final = "default"


class ErrorType:
    """The taxonomy of what went wrong, shared by results.error_type and attempts.error_type."""

    RATE_LIMITED: Final = "rate_limited"  # 429
    TIMEOUT: Final = "timeout"  # 408, or no answer within timeout_s
    CONFLICT: Final = "conflict"  # 409
    SERVER_ERROR: Final = "server_error"  # 5xx
    CONNECTION: Final = "connection"  # refused, reset, closed without a response
    MALFORMED_RESPONSE: Final = "malformed_response"  # a 2xx body that is not a completion
    MODEL_NOT_FOUND: Final = "model_not_found"  # 404
    CONTEXT_LENGTH: Final = "context_length"  # 400 context_length_exceeded
    CONTENT_FILTER: Final = "content_filter"  # finish_reason content_filter
    INVALID_JSON: Final = "invalid_json"  # JSON was asked for, the answer is not JSON
    BAD_REQUEST: Final = "bad_request"  # any other 4xx
    AUTH: Final = "auth"  # 401/403
    VERIFICATION_FAILED: Final = "verification_failed"  # an answer failed its tier's checks
    ATTEMPTS_EXHAUSTED: Final = "attempts_exhausted"  # the row's attempt budget ran out
    NO_MODEL_AVAILABLE: Final = "no_model_available"  # every model on the chain was skipped
    INVALID_ROW: Final = "invalid_row"  # empty prompt, unknown tier hint: never sent
    BUDGET: Final = "budget"  # skipped_budget rows
    INTERRUPTED: Final = "interrupted"
    ABORTED: Final = "aborted"


INPUT_SCHEMA: Final = _schema(
    {
        "row_index": pl.Int64,
        "line": pl.Int64,
        "id": pl.String,
        "prompt": pl.String,
        "system_prompt": pl.String,
        "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
        "tier_hint": pl.String,
        "json_output": pl.Boolean,
        "invalid_reason": pl.String,
    }
)
"""The normalised frame `dataset` yields, before the passthrough metadata columns."""

RESULT_SCHEMA: Final = _schema(
    {
        "id": pl.String,
        "row_index": pl.Int64,
        "line": pl.Int64,
        "row_key": pl.String,
        "tier": pl.String,
        "tier_source": pl.String,
        "matched_signal": pl.String,
        "classifier_confidence": pl.Float64,
        "model_requested": pl.String,
        "model_used": pl.String,
        "status": pl.String,
        "error_type": pl.String,
        "error_message": pl.String,
        "attempts": pl.Int32,
        "fallback_depth": pl.Int32,
        "content": pl.String,
        "finish_reason": pl.String,
        "input_tokens": pl.Int64,
        "output_tokens": pl.Int64,
        "cached_tokens": pl.Int64,
        "reasoning_tokens": pl.Int64,
        "failed_input_tokens": pl.Int64,
        "failed_output_tokens": pl.Int64,
        "cost_usd": COST_DTYPE,
        "failed_cost_usd": COST_DTYPE,
        "priced": pl.Boolean,
        "latency_ms": pl.Float64,
        "started_at": _TIME,
        "finished_at": _TIME,
        "batch": pl.Boolean,
        "cache_hit": pl.Boolean,
        "cache_saved_usd": COST_DTYPE,
        "verified": pl.Boolean,
        "verify_failures": pl.String,
        "escalated_from": pl.String,
        "escalation_depth": pl.Int32,
        "answered_tier": pl.String,
    }
)
"""results.parquet, before the passthrough metadata columns, which follow in input order."""

ATTEMPT_SCHEMA: Final = _schema(
    {
        "id": pl.String,
        "row_index": pl.Int64,
        "row_key": pl.String,
        "model": pl.String,
        "attempt": pl.Int32,
        "status_code": pl.Int32,
        "error_type": pl.String,
        "action": pl.String,
        "input_tokens": pl.Int64,
        "output_tokens": pl.Int64,
        "cached_tokens": pl.Int64,
        "reasoning_tokens": pl.Int64,
        "cost_usd": COST_DTYPE,
        "priced": pl.Boolean,
        "latency_ms": pl.Float64,
        "started_at": _TIME,
        "batch": pl.Boolean,
        "tier": pl.String,
        "escalation_depth": pl.Int32,
        "verify": pl.String,
        "verify_failures": pl.String,
        "judge": pl.Boolean,
    }
)
"""attempts.parquet: one row per HTTP attempt. `action` is what followed: ok, retry, fallback,
escalate, fail or abort. `error_type` is null for a successful attempt. `verify` is the checks'
verdict on the attempt's answer (passed, failed; null when it had none or was not checked);
`judge` marks a judge's grading call."""
