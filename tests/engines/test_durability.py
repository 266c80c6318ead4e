"""The runner's side of durability: group commits during the run, slots held until durable."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.dispatch.dispatcher import Dispatcher
from batchroute.store.journal import Journal
from tests.conftest import sample_rows

JobFactory = Callable[..., Path]
MAX_IN_FLIGHT = 4
STALL_S = 0.4


def test_a_slot_is_held_until_its_answer_is_durable(
    make_job: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the first commit is stuck, no more than `max_in_flight` requests are ever sent."""
    dispatched: list[int] = []
    seen_during_stall: list[int] = []
    commits: list[int] = []
    real_dispatch, real_commit = Dispatcher.dispatch, Journal.commit

    async def counting_dispatch(self: Dispatcher, row: Any) -> Any:
        dispatched.append(row.row_index)
        return await real_dispatch(self, row)

    def slow_commit(self: Journal, results: pl.DataFrame, attempts: pl.DataFrame) -> None:
        if results.height and not commits:  # the first commit with answers: a slow disk
            time.sleep(STALL_S)
            seen_during_stall.append(len(dispatched))
        commits.append(results.height)
        real_commit(self, results, attempts)

    monkeypatch.setattr(Dispatcher, "dispatch", counting_dispatch)
    monkeypatch.setattr(Journal, "commit", slow_commit)
    job = make_job(sample_rows(30), run={"max_in_flight": MAX_IN_FLIGHT})
    result = CliRunner().invoke(main, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert seen_during_stall == [MAX_IN_FLIGHT]  # answered rows kept their slots meanwhile
    assert sum(commits) == 30
    assert len([n for n in commits if n]) >= 30 // MAX_IN_FLIGHT  # committed as answers came
    assert pl.read_parquet("runs/t/results.parquet").height == 30
