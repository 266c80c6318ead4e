"""Every paid attempt is in the reports, whichever session paid: end to end on the simulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from batchroute.cli import main
from tests.conftest import sample_rows

JobFactory = Callable[..., Path]
FAULTS = {"server_error": 0.1, "content_filter": 0.2, "retry_after_s": 0.01}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


def rerun_with_new_fallback(job: Path) -> None:
    """Edit one model's fallback: the bulk tier's rows get new keys and are sent again."""
    data = yaml.safe_load(job.read_text())
    data["models"]["small"]["fallback"] = "big"
    job.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out = run("run", str(job), "--no-cache")  # pay for them again: no cache hits
    assert code in (0, 1), out


def test_totals_reconcile_with_attempts_after_a_rerun_supersedes_answers(
    make_job: JobFactory,
) -> None:
    """Finding 3: an answer a rerun replaced is still money paid, shown apart and in the total."""
    simulator = {"seed": 5, "models": {"small": {"faults": FAULTS}}}
    job = make_job(sample_rows(60), simulator=simulator)
    assert run("run", str(job))[0] in (0, 1)
    first = pl.read_parquet("runs/t/attempts.parquet")
    rerun_with_new_fallback(job)

    attempts = pl.read_parquet("runs/t/attempts.parquet")
    results = pl.read_parquet("runs/t/results.parquet")
    assert attempts.height > first.height  # the bulk rows were paid for twice
    paid = attempts["cost_usd"].sum()
    failed = attempts.filter(pl.col("error_type").is_not_null())["cost_usd"].sum()
    kept_keys = results.filter(pl.col("status") == "ok")["row_key"].implode()
    superseded = attempts.filter(
        pl.col("error_type").is_null() & ~pl.col("row_key").is_in(kept_keys)
    )["cost_usd"].sum()
    assert superseded > 0 and failed > 0

    totals = pl.read_parquet("runs/t/cost_totals.parquet").row(0, named=True)
    assert totals["total_cost_usd"] == paid
    assert totals["cost_usd"] == results["cost_usd"].sum()
    assert totals["failed_cost_usd"] == failed
    assert totals["superseded_cost_usd"] == superseded
    assert totals["cost_usd"] + totals["failed_cost_usd"] + totals["superseded_cost_usd"] == paid
    assert totals["superseded_rows"] == results.filter(pl.col("tier") == "bulk").height

    report = pl.read_parquet("runs/t/cost_report.parquet")
    assert report["total_cost_usd"].sum() == paid
    rerun_rows = report.filter(pl.col("tier").is_null())
    assert rerun_rows["superseded_cost_usd"].sum() == superseded
    assert pl.read_parquet("runs/t/tier_distribution.parquet")["total_cost_usd"].sum() == paid

    savings = pl.read_parquet("runs/t/savings.parquet").row(0, named=True)
    assert savings["total_cost_usd"] == paid
    assert savings["superseded_cost_usd"] == superseded
    assert savings["savings_vs_baseline_usd"] == savings["baseline_cost_usd"] - paid

    manifest = json.loads(Path("runs/t/run.json").read_text())
    assert Decimal(manifest["total_cost_usd"]) == paid
    parts = {k: Decimal(v) for k, v in manifest["spend"].items()}
    assert parts == {
        "answers_kept_usd": totals["cost_usd"],
        "answers_superseded_usd": superseded,
        "failed_attempts_usd": failed,
    }
    assert manifest["sessions"][-1]["sent_rows"] == totals["superseded_rows"]


def test_report_rows_carry_the_run(make_job: JobFactory) -> None:
    """Finding 7: many nights' report files can be queried together and told apart."""
    job = make_job(sample_rows(12))
    assert run("run", str(job))[0] == 0
    manifest = json.loads(Path("runs/t/run.json").read_text())
    for stem in ("cost_report", "cost_totals", "tier_distribution", "savings", "model_attempts"):
        frame = pl.read_parquet(f"runs/t/{stem}.parquet")
        assert frame.height > 0, stem
        assert set(frame["run_id"]) == {manifest["run_id"]}, stem
        assert set(frame["job"]) == {"t"}, stem
        started = frame["started_at"].dt.to_string("%Y-%m-%dT%H:%M:%S%.f").unique().to_list()
        assert len(started) == 1 and manifest["started_at"].startswith(started[0][:19]), stem


def test_a_cap_too_small_for_any_request_sends_no_row(make_job: JobFactory) -> None:
    """Finding 6: rows the budget refused were never sent, and are not counted as sent."""
    job = make_job(sample_rows(30))
    code, out = run("run", str(job), "--max-cost", "0.0000001")
    assert code == 3, out
    assert "sent 0 rows" in out
    manifest = json.loads(Path("runs/t/run.json").read_text())
    assert manifest["sessions"][-1]["sent_rows"] == 0
    assert manifest["counts"]["skipped_budget"] == 30
    assert not Path("runs/t/attempts.parquet").is_file() or (
        pl.read_parquet("runs/t/attempts.parquet").height == 0
    )


def test_a_bad_key_counts_the_one_row_it_sent(
    make_job: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 6: a bad key aborts after one attempt; one row was sent, not all of them."""
    monkeypatch.setenv("BR_TEST_KEY", "sk-wrong")
    job = make_job(sample_rows(30), simulator={"require_api_key": "sk-right"})
    code, out = run("run", str(job))
    assert code == 4, out
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    manifest = json.loads(Path("runs/t/run.json").read_text())
    assert manifest["sessions"][-1]["sent_rows"] == attempts["row_key"].n_unique() == 1
    assert "sent 1 rows" in out
