"""Climbs in progress read back from the attempts parts: which rows resume, and where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchroute.dispatch.rows import EscalationProgress
from batchroute.errors import OutputError
from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA, Status
from batchroute.store.escalations import pending_escalations
from batchroute.store.parts import PartWriter

NONE_DONE = pl.Series("row_key", [], dtype=pl.String)


def _attempt(key: str, attempt: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ATTEMPT_SCHEMA.names())
    row |= {"row_key": key, "id": key, "row_index": 0, "attempt": attempt, "action": "ok"}
    row |= {"model": "small", "tier": "bulk", "escalation_depth": 0, "judge": False}
    return row | values


def _rejected(key: str, attempt: int, *, tier: str, model: str, depth: int) -> dict[str, Any]:
    return _attempt(
        key,
        attempt,
        tier=tier,
        model=model,
        escalation_depth=depth,
        action="escalate",
        error_type="verification_failed",
        verify="failed",
        verify_failures=f"not_truncated: cut at {attempt}",
        input_tokens=10 * attempt,
        output_tokens=attempt,
        status_code=200,
    )


def _result(key: str, status: str) -> pl.DataFrame:
    row: dict[str, Any] = dict.fromkeys(RESULT_SCHEMA.names())
    row |= {"row_key": key, "id": key, "row_index": 0, "status": status}
    return pl.DataFrame([row], schema=RESULT_SCHEMA)


def _session(
    run_dir: Path, name: str, attempts: list[dict[str, Any]], *results: pl.DataFrame
) -> None:
    with PartWriter(run_dir, session=name) as store:
        frame = pl.DataFrame(attempts, schema=ATTEMPT_SCHEMA) if attempts else None
        empty = pl.DataFrame(schema=RESULT_SCHEMA)
        store.add(pl.concat(results) if results else empty, frame)


def test_a_climb_made_durable_without_its_result_resumes_where_it_reached(tmp_path: Path) -> None:
    _session(
        tmp_path,
        "s1",
        [
            _rejected("a", 1, tier="bulk", model="small", depth=0),
            _attempt(
                "a",
                2,
                model="mid",
                tier="standard",
                escalation_depth=1,
                error_type="timeout",
                action="retry",
            ),
            _rejected("a", 3, tier="standard", model="mid", depth=1),
        ],
    )
    assert pending_escalations(tmp_path, done=NONE_DONE) == {
        "a": EscalationProgress(
            depth=2,
            attempts=3,
            verify_failures=(
                "bulk/small: not_truncated: cut at 1",
                "standard/mid: not_truncated: cut at 3",
            ),
            failed_input_tokens=40,
            failed_output_tokens=4,
            last_message="the answer failed its checks: not_truncated: cut at 3 [mid]",
        )
    }
    done = pl.Series("row_key", ["a"])
    assert pending_escalations(tmp_path, done=done) == {}


def test_a_climb_across_sessions_counts_every_session_since_the_row_began(tmp_path: Path) -> None:
    _session(tmp_path, "s1", [_rejected("a", 1, tier="bulk", model="small", depth=0)])
    _session(tmp_path, "s2", [_rejected("a", 2, tier="standard", model="mid", depth=1)])
    progress = pending_escalations(tmp_path, done=NONE_DONE)["a"]
    assert (progress.depth, progress.attempts) == (2, 2)


def test_a_finished_row_and_a_failed_row_retried_from_scratch_are_not_pending(
    tmp_path: Path,
) -> None:
    _session(
        tmp_path,
        "s1",
        [
            _rejected("ok", 1, tier="bulk", model="small", depth=0),
            _rejected("failed", 1, tier="bulk", model="small", depth=0),
            _rejected("retried", 1, tier="bulk", model="small", depth=0),
        ],
        _result("ok", Status.OK),
        _result("failed", Status.FAILED),
        _result("retried", Status.FAILED),
    )
    # session 2 retried one failed row from its own tier and crashed before it climbed
    _session(tmp_path, "s2", [_attempt("retried", 1, error_type="timeout", action="retry")])
    assert pending_escalations(tmp_path, done=NONE_DONE) == {}


def test_an_interrupted_climb_resumes_after_its_skipped_record(tmp_path: Path) -> None:
    """A stop (SIGTERM) settles a climbing row as skipped: that is no final answer."""
    _session(
        tmp_path,
        "s1",
        [_rejected("a", 1, tier="bulk", model="small", depth=0)],
        _result("a", Status.SKIPPED_INTERRUPTED),
    )
    assert pending_escalations(tmp_path, done=NONE_DONE)["a"].depth == 1


def test_attempts_parts_from_before_verification_are_read_beside_new_ones(tmp_path: Path) -> None:
    old = pl.DataFrame(
        {"row_key": ["a"], "id": ["a"], "row_index": [0], "model": ["small"], "attempt": [1]},
        schema_overrides={"attempt": pl.Int32},
    ).with_columns(action=pl.lit("retry"), error_type=pl.lit("timeout"))
    (tmp_path / "parts").mkdir()
    old.write_parquet(tmp_path / "parts" / "attempts-0001-s1-000001.parquet")  # no verify columns
    _session(tmp_path, "s2", [_rejected("b", 1, tier="bulk", model="small", depth=0)])
    assert list(pending_escalations(tmp_path, done=NONE_DONE)) == ["b"]
    assert pending_escalations(tmp_path / "never-ran", done=NONE_DONE) == {}


def test_a_failed_row_retried_and_caught_climbing_again_resumes_its_new_climb(
    tmp_path: Path,
) -> None:
    _session(
        tmp_path,
        "s1",
        [
            _rejected("a", 1, tier="bulk", model="small", depth=0),
            _rejected("a", 2, tier="standard", model="mid", depth=1),
        ],
        _result("a", Status.FAILED),
    )
    _session(tmp_path, "s2", [_rejected("a", 1, tier="bulk", model="small", depth=0)])
    progress = pending_escalations(tmp_path, done=NONE_DONE)["a"]
    assert (progress.depth, progress.attempts) == (1, 1)
    assert progress.verify_failures == ("bulk/small: not_truncated: cut at 1",)


def test_a_damaged_attempts_part_is_a_clear_error(tmp_path: Path) -> None:
    _session(tmp_path, "s1", [_rejected("a", 1, tier="bulk", model="small", depth=0)])
    _session(tmp_path, "s2", [_rejected("b", 1, tier="bulk", model="small", depth=0)])
    damaged = sorted((tmp_path / "parts").glob("attempts-0002-*"))[0]
    damaged.write_bytes(b"PAR1 not a part")
    with pytest.raises(OutputError, match="cannot be read"):
        pending_escalations(tmp_path, done=NONE_DONE)
