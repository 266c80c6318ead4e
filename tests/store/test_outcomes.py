"""OutcomeBuffer: finished rows become result and attempt frames in the schemas' order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import polars as pl

from batchroute.dispatch.rows import AttemptRecord, RowOutcome
from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA
from batchroute.store.outcomes import OutcomeBuffer

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def classified(n: int, **extra: list[object]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "row_index": list(range(n)),
            "line": [i + 1 for i in range(n)],
            "row_key": [f"k{i}" for i in range(n)],
            "tier": ["standard"] * n,
            "tier_source": ["rules"] * n,
            "matched_signal": [None] * n,
            "classifier_confidence": [None] * n,
            "model_requested": ["m"] * n,
            **extra,
        },
        schema_overrides={"matched_signal": pl.String, "classifier_confidence": pl.Float64},
    )


def answered(i: int) -> RowOutcome:
    outcome = RowOutcome(status="ok", model_requested="m", started_at=NOW, finished_at=NOW)
    outcome.attempt_records.append(
        AttemptRecord("fb", 1, 500, "server_error", "retry", None, None, None, None, 1.5, NOW)
    )
    outcome.attempt_records.append(
        AttemptRecord("m", 2, 200, None, "ok", 10 + i, 20, 3, 4, 2.5, NOW, tier="standard")
    )
    outcome.keep_answer("m", _Answer(), latency_ms=2.5)
    outcome.attempts = 2
    return outcome


class _Answer:
    content = "hi"
    finish_reason = "stop"
    input_tokens = 10
    output_tokens = 20
    cached_tokens = 3
    reasoning_tokens = 4


def test_take_builds_frames_in_the_schemas_order() -> None:
    buffer = OutcomeBuffer(metadata_columns=())
    for i, context in enumerate(buffer.contexts(classified(3)).iter_rows()):
        buffer.add(context, answered(i))
    results, attempts = buffer.take()
    assert results.schema == RESULT_SCHEMA
    assert attempts.schema == ATTEMPT_SCHEMA
    assert results["row_key"].to_list() == ["k0", "k1", "k2"]
    assert results["model_used"].to_list() == ["m"] * 3
    assert results["output_tokens"].to_list() == [20] * 3
    assert attempts.height == 6
    first, second = attempts.row(0, named=True), attempts.row(1, named=True)
    assert (first["id"], first["row_index"], first["row_key"]) == ("r0", 0, "k0")
    assert (first["model"], first["status_code"], first["error_type"]) == (
        "fb",
        500,
        "server_error",
    )
    assert (second["input_tokens"], second["reasoning_tokens"]) == (10, 4)
    assert (second["latency_ms"], second["started_at"], second["tier"]) == (2.5, NOW, "standard")
    assert (second["judge"], second["batch"], second["escalation_depth"]) == (False, False, 0)
    assert attempts["cost_usd"].null_count() == 6, "priced when the results are assembled"
    assert attempts["priced"].null_count() == 6
    assert len(buffer) == 0


def test_metadata_columns_follow_the_result_columns() -> None:
    buffer = OutcomeBuffer(metadata_columns=("team",))
    frame = classified(2, team=["a", "b"])
    for i, context in enumerate(buffer.contexts(frame).iter_rows()):
        buffer.add(context, answered(i))
    results, _ = buffer.take()
    assert results.columns == [*RESULT_SCHEMA.names(), "team"]
    assert results["team"].to_list() == ["a", "b"]
    assert results["status"].to_list() == ["ok", "ok"]


def test_times_are_kept_to_the_microsecond_in_any_time_zone() -> None:
    """Times travel as epoch microseconds: aware ones in any zone, and naive ones (read as UTC,
    as polars reads them), come back as the same instants."""
    moments = [
        datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(2026, 1, 2, 5, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 2, 3, 4, 5, 678901),
    ]
    buffer = OutcomeBuffer(metadata_columns=())
    for context, moment in zip(buffer.contexts(classified(3)).iter_rows(), moments, strict=True):
        outcome = RowOutcome(
            status="ok", model_requested="m", started_at=moment, finished_at=moment
        )
        outcome.attempt_records.append(
            AttemptRecord("m", 1, 200, None, "ok", 1, 1, 0, 0, 1.0, moment)
        )
        buffer.add(context, outcome)
    results, attempts = buffer.take()
    same = [moments[0]] * 3
    assert results["started_at"].to_list() == same
    assert results["finished_at"].to_list() == same
    assert attempts["started_at"].to_list() == same
    assert results.schema["started_at"] == RESULT_SCHEMA["started_at"]
    assert attempts.schema["started_at"] == ATTEMPT_SCHEMA["started_at"]
