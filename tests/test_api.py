"""The Python API: batchroute.run / plan / load_job, from plain code and from a running loop."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import batchroute
from batchroute.errors import JobError
from batchroute.exitcodes import ExitCode
from tests.conftest import sample_rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sample_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped sample job and its data, copied into an empty working directory."""
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "jobs" / "tests.yaml"


def test_public_names_are_exported_with_a_sorted_all() -> None:
    assert batchroute.__all__ == sorted(batchroute.__all__)
    for name in batchroute.__all__:
        assert getattr(batchroute, name) is not None
    from batchroute import RunResult, load_job, plan, run  # noqa: F401  (the issue's ImportError)


def test_run_from_inside_a_running_event_loop(sample_job: Path) -> None:
    """A Jupyter cell runs inside a loop: batchroute.run must still run the sample job."""

    async def cell() -> batchroute.RunResult:
        return batchroute.run(sample_job)

    result = asyncio.run(cell())
    assert result.exit_code == ExitCode.OK, result.message
    rows = pl.read_ndjson(sample_job.parent.parent / "sample_data" / "prompts.jsonl").height
    frame = result.results().collect()
    assert frame.height == rows == result.counts["ok"]
    assert result.cost_usd == frame["cost_usd"].sum() > 0
    assert result.run_dir.is_dir() and (result.run_dir / "run.json").is_file()


def test_run_async_and_plan_and_load_job(make_job: Callable[..., Path]) -> None:
    job_path = make_job(sample_rows(20))
    job = batchroute.load_job(job_path)
    forecast = batchroute.plan(job)
    assert forecast["rows"].sum() == 20
    assert not Path("plan.parquet").exists()
    result = asyncio.run(batchroute.run_async(job, limit=10, max_cost_usd=100))
    assert result.ok and result.results().collect().height == 10
    assert result.total_cost_usd >= result.cost_usd
    again = batchroute.run(job_path, limit=10)
    assert again.reused_rows == 10 and again.sent_rows == 0


def test_a_bad_job_raises_the_cli_error_instead_of_exiting(tmp_path: Path) -> None:
    with pytest.raises(JobError) as caught:
        batchroute.run(tmp_path / "missing.yaml")
    assert caught.value.exit_code == 6
