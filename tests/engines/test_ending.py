"""How a session ends: the exit code's precedence, and what run.json records of the end."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batchroute.engines.ending import RunSummary, ending, manifest_figures
from batchroute.exitcodes import ExitCode
from batchroute.schema import Status


def _ending(**seen: Any) -> tuple[ExitCode, str | None]:
    quiet: dict[str, Any] = {
        "batches_open": False,
        "hard_stop": False,
        "stop_status": None,
        "stop_message": "",
        "counts": {Status.OK: 3},
    }
    return ending(**{**quiet, **seen})


def test_a_clean_session_is_ok() -> None:
    assert _ending() == (ExitCode.OK, None)


def test_a_failed_row_is_some_failed() -> None:
    assert _ending(counts={Status.OK: 2, Status.FAILED: 1}) == (ExitCode.SOME_FAILED, None)


@pytest.mark.parametrize(
    ("stop_status", "code"),
    [
        (Status.SKIPPED_INTERRUPTED, ExitCode.INTERRUPTED),
        (Status.SKIPPED_ABORTED, ExitCode.ABORTED),
        (Status.SKIPPED_BUDGET, ExitCode.BUDGET),
    ],
)
def test_a_stop_names_its_reason(stop_status: str, code: ExitCode) -> None:
    # Failed rows are usual after a stop; the stop is what the operator must read.
    seen = _ending(stop_status=stop_status, stop_message="why", counts={Status.FAILED: 1})
    assert seen == (code, "why")


def test_a_second_signal_is_an_interrupt_whatever_stopped_the_run_before() -> None:
    seen = _ending(hard_stop=True, stop_status=Status.SKIPPED_BUDGET, stop_message="budget")
    assert seen[0] == ExitCode.INTERRUPTED


def test_open_batches_outrank_everything() -> None:
    code, message = _ending(batches_open=True, hard_stop=True, counts={Status.FAILED: 1})
    assert code == ExitCode.SUBMITTED
    assert message is not None and "run again later" in message


def test_an_unfinished_session_records_no_ending() -> None:
    # run.json while a session runs (or after it crashed) must not look finished.
    assert manifest_figures(None) == {}


def test_a_finished_session_records_its_ending() -> None:
    summary = RunSummary(
        run_id="r1",
        run_dir=Path("out"),
        exit_code=ExitCode.BUDGET,
        counts={Status.OK: 4, Status.SKIPPED_BUDGET: 6},
        cost_usd=Decimal("1.25"),
        reused_rows=0,
        sent_rows=4,
        message="the budget cap was reached",
        rejected_rows=2,
    )
    assert manifest_figures(summary) == {
        "counts": {Status.OK: 4, Status.SKIPPED_BUDGET: 6},
        "total_cost_usd": Decimal("1.25"),
        "exit_code": ExitCode.BUDGET,
        "stop_reason": "the budget cap was reached",
        "rejected_rows": 2,
    }
