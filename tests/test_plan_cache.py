"""`batchroute plan` and the response cache: rows the cache would answer are shown as cache hits
costing $0, apart from the forecast, found by key without a request."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from click.testing import CliRunner

import batchroute
from batchroute.cli import main
from tests.conftest import sample_rows

ROOM = {"max_tokens": 1024}
"""Room to finish (`stop`, not `length`): only complete answers are stored."""


def _plan(job: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["plan", str(job), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_plan_counts_the_rows_the_cache_would_answer(
    make_job: Callable[..., Path], _private_response_cache: Path
) -> None:
    """Yesterday's rows are hits at $0; the forecast is exactly today's new rows'."""
    rows = sample_rows(50)
    job = make_job(rows[:40], request=ROOM)
    before = _plan(job)
    assert before["totals"]["cache_hits"] == 0 and before["totals"]["rows"] == 40
    assert not _private_response_cache.exists(), "plan never creates the cache file"
    ran = CliRunner().invoke(main, ["run", str(job), "--quiet"])
    assert ran.exit_code == 0, ran.output
    new_only = _plan(make_job(rows[40:], request=ROOM))["totals"]
    job = make_job(rows, request=ROOM)  # yesterday's file plus today's rows
    totals = _plan(job)["totals"]
    assert (totals["cache_hits"], totals["rows"]) == (40, 10)
    assert Decimal(totals["forecast_cost_usd"]) == Decimal(new_only["forecast_cost_usd"]) > 0
    every_row = _plan(job, "--no-cache")["totals"]
    assert (every_row["cache_hits"], every_row["rows"]) == (0, 50)
    assert Decimal(every_row["forecast_cost_usd"]) > Decimal(totals["forecast_cost_usd"])
    text = CliRunner().invoke(main, ["plan", str(job)]).stdout
    assert "40 rows would be answered by the response cache: $0" in text
    frame = batchroute.plan(job)  # the Python API plans as the command does
    assert int(frame["cache_hits"].sum()) == 40 and int(frame["rows"].sum()) == 10
    assert int(batchroute.plan(job, no_cache=True)["cache_hits"].sum()) == 0


def test_a_tier_with_checks_is_not_counted_as_a_hit(
    make_job: Callable[..., Path],
) -> None:
    """A run never serves a tier with checks from the cache, so plan does not count it."""
    job = make_job(sample_rows(20), request=ROOM)
    assert CliRunner().invoke(main, ["run", str(job), "--quiet"]).exit_code == 0
    assert _plan(job)["totals"]["cache_hits"] == 20
    job = make_job(sample_rows(20), request=ROOM, verify={"default": ["not_truncated"]})
    totals = _plan(job)["totals"]
    assert (totals["cache_hits"], totals["rows"]) == (0, 20)
