"""`batchroute run` end to end: the real AsyncOpenAI client over loopback to the simulator."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.dispatch import Dispatcher, RowOutcome, RowRequest
from batchroute.pricing.tokens import message_token_bound
from batchroute.schema import RESULT_SCHEMA
from tests.conftest import sample_rows

JobFactory = Callable[..., Path]


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_every_input_row_gets_one_result_in_input_order(make_job: JobFactory) -> None:
    job = make_job(sample_rows(60))
    code, out, err = run_cli("run", str(job))
    assert code == 0, err
    results = pl.read_parquet("runs/t/results.parquet")
    assert results["id"].to_list() == [f"r{i:04d}" for i in range(60)]
    assert results["row_index"].to_list() == list(range(60))
    assert (results["status"] == "ok").all()
    for column in ("tier", "model_used", "cost_usd", "content", "finish_reason"):
        assert results[column].null_count() == 0, column
    assert results.columns[: len(RESULT_SCHEMA)] == RESULT_SCHEMA.names()
    assert results["team"].to_list() == ["data"] * 60  # metadata passes through
    assert results.filter(pl.col("id") == "r0009")["tier"].item() == "bulk"  # metadata hint
    assert results.filter(pl.col("id") == "r0009")["tier_source"].item() == "metadata"
    assert "results.parquet" in out or "runs/t" in out


def test_structured_rows_get_json_from_the_simulator(make_job: JobFactory) -> None:
    job = make_job(sample_rows(20))
    assert run_cli("run", str(job))[0] == 0
    structured = pl.read_parquet("runs/t/results.parquet").filter(pl.col("tier") == "structured")
    assert structured.height > 0
    for content in structured["content"]:
        json.loads(content)


def test_cost_report_totals_equal_the_sum_of_the_rows(make_job: JobFactory) -> None:
    job = make_job(sample_rows(50))
    assert run_cli("run", str(job))[0] == 0
    results = pl.read_parquet("runs/t/results.parquet")
    report = pl.read_parquet("runs/t/cost_report.parquet")
    detail = report.filter(pl.col("tier") != "TOTAL") if "tier" in report.columns else report
    assert detail["cost_usd"].sum() == results["cost_usd"].sum()
    assert detail["rows"].sum() == results.height
    distribution = pl.read_parquet("runs/t/tier_distribution.parquet")
    assert distribution["rows"].sum() == results.height


def test_attempts_log_agrees_with_what_the_server_saw(make_job: JobFactory) -> None:
    """With faults injected, every HTTP attempt the server counted is in attempts.parquet."""
    faults = {"server_error": 0.2, "rate_limit": 0.1, "retry_after_s": 0.05}
    simulator = {"seed": 3, "models": {"small": {"faults": faults}, "mid": {"faults": faults}}}
    job = make_job(sample_rows(80), simulator=simulator)
    code, _, err = run_cli("run", str(job))
    assert code in (0, 1), err
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    results = pl.read_parquet("runs/t/results.parquet")
    assert results["attempts"].sum() == attempts.height
    assert attempts.filter(pl.col("error_type").is_not_null()).height > 0
    manifest = json.loads(Path("runs/t/run.json").read_text())
    assert manifest["counts"]["ok"] + manifest["counts"].get("failed", 0) == 80


def test_limit_runs_only_the_first_rows(make_job: JobFactory) -> None:
    job = make_job(sample_rows(30))
    assert run_cli("run", str(job), "--limit", "7")[0] == 0
    results = pl.read_parquet("runs/t/results.parquet")
    assert results["id"].to_list() == [f"r{i:04d}" for i in range(7)]


def test_rerun_resumes_without_sending_again(make_job: JobFactory) -> None:
    job = make_job(sample_rows(25))
    assert run_cli("run", str(job))[0] == 0
    first = pl.read_parquet("runs/t/results.parquet")
    assert run_cli("run", str(job))[0] == 0
    manifest = json.loads(Path("runs/t/run.json").read_text())
    assert manifest["sessions"][-1]["sent_rows"] == 0
    assert manifest["sessions"][-1]["reused_rows"] == 25
    second = pl.read_parquet("runs/t/results.parquet")
    assert second["content"].to_list() == first["content"].to_list()


def test_bad_job_is_one_clear_line_and_exit_6(make_job: JobFactory) -> None:
    job = make_job(sample_rows(5))
    job.write_text(job.read_text().replace("fallback: mid", "fallback: gpt-9", 1))
    code, out, err = run_cli("run", str(job))
    assert code == 6
    assert "no price for 'gpt-9'" in err
    assert "Traceback" not in err + out


def test_cron_style_subprocess_run_logs_json_with_run_id(make_job: JobFactory) -> None:
    job = make_job(sample_rows(30))
    env = {k: v for k, v in os.environ.items() if k != "BR_TEST_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job), "--log-format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert pl.read_parquet("runs/t/results.parquet").height == 30
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    manifest = json.loads(Path("runs/t/run.json").read_text())
    assert all(entry["run_id"] == manifest["run_id"] for entry in lines)


def test_forecast_equals_actual_when_usage_matches_the_estimate(make_job: JobFactory) -> None:
    """With the simulator answering exactly max_tokens, plan.parquet's forecast is the bill."""
    job = make_job(sample_rows(40), simulator={"default": {"completion_tokens": "max_tokens"}})
    assert run_cli("run", str(job))[0] == 0
    plan = pl.read_parquet("runs/t/plan.parquet")
    results = pl.read_parquet("runs/t/results.parquet")
    assert results["output_tokens"].to_list() == [64] * 40
    assert plan["forecast_cost_usd"].sum() == results["cost_usd"].sum()
    savings = pl.read_parquet("runs/t/savings.parquet")
    assert savings["forecast_delta_usd"].item() == 0


def test_a_run_leaves_garbage_collection_as_it_found_it(make_job: JobFactory) -> None:
    """The request loop tunes the collector (see local._request_loop_gc) and restores it."""
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    code, _, err = run_cli("run", str(make_job(sample_rows(10))))
    assert code == 0, err
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == frozen


def test_each_request_carries_its_prompts_byte_bound_for_the_budget(
    make_job: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner hands the dispatcher a true bound on each prompt's tokens to reserve for."""
    seen: list[RowRequest] = []
    dispatch = Dispatcher.dispatch

    async def recording(self: Dispatcher, row: RowRequest) -> RowOutcome:
        seen.append(row)
        return await dispatch(self, row)

    monkeypatch.setattr(Dispatcher, "dispatch", recording)
    job = make_job(sample_rows(12))
    assert run_cli("run", str(job))[0] == 0
    assert len(seen) == 12
    assert all(row.prompt_token_bound == message_token_bound(row.messages) for row in seen)
    assert all(
        row.prompt_token_bound is not None and row.prompt_token_bound >= row.prompt_tokens
        for row in seen
    )


def test_a_session_that_fails_before_sending_leaves_run_json_as_it_was(
    make_job: JobFactory, tmp_path: Path
) -> None:
    """The response cache cannot be opened (its path is a directory): nothing was sent, so the
    run directory's record of the earlier session stands, unchanged."""
    assert run_cli("run", str(make_job(sample_rows(10))), "--run-dir", "runs/t")[0] == 0
    before = Path("runs/t/run.json").read_text()
    (tmp_path / "not-a-file").mkdir()
    job = make_job(sample_rows(20), cache={"path": str(tmp_path / "not-a-file")})
    code, _, err = run_cli("run", str(job), "--run-dir", "runs/t")
    assert code != 0 and "not-a-file" in err
    assert Path("runs/t/run.json").read_text() == before
