from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchroute.config import Job, parse_job
from batchroute.errors import OutputError
from batchroute.pricing.costs import price_outcomes
from batchroute.pricing.forecast import ForecastAccumulator
from batchroute.pricing.prices import resolve_prices
from batchroute.report import load_summary, write_reports
from batchroute.report.schemas import (
    COST_REPORT_SCHEMA,
    COST_TOTALS_SCHEMA,
    SAVINGS_SCHEMA,
    TIER_DISTRIBUTION_SCHEMA,
)
from batchroute.report.trend import DAILY_SCHEMA, daily_totals, read_runs
from batchroute.schema import ATTEMPT_SCHEMA, INPUT_SCHEMA, RESULT_SCHEMA
from batchroute.store.plan import write_plan

MODELS = {
    "claude-opus-4-7": {
        "input_per_mtok": 5,
        "output_per_mtok": 25,
        "fallback": "claude-sonnet-4-6",
    },
    "claude-sonnet-4-6": {"input_per_mtok": 3, "output_per_mtok": 15},
    "gpt-5.5": {"input_per_mtok": 3, "output_per_mtok": 12},
    "deepseek-chat": {"input_per_mtok": 0.27, "output_per_mtok": 1.10, "fallback": "gpt-5.5"},
}
TIERS = {
    "complex": "claude-opus-4-7",
    "standard": "claude-sonnet-4-6",
    "structured": "gpt-5.5",
    "bulk": "deepseek-chat",
}
START = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def make_job(*, bulk_model: str = "deepseek-chat", allow_unpriced: bool = False) -> Job:
    data: dict[str, Any] = {
        "name": "nightly",
        "input": {"path": "in.jsonl"},
        "tiers": {**TIERS, "bulk": bulk_model},
        "models": {**MODELS, "local": {"fallback": "gpt-5.5"}},
        "baseline_model": "claude-sonnet-4-6",
        "prices": {"allow_unpriced": allow_unpriced},
    }
    if not allow_unpriced:
        del data["models"]["local"]
    path = Path("jobs/nightly.yaml")
    return Job(parse_job(data, path=path), path=path, text_sha256="0" * 64)


def _rows(records: list[dict[str, Any]], schema: pl.Schema) -> pl.DataFrame:
    return pl.DataFrame([{n: r.get(n) for n in schema} for r in records], schema=schema)


def make_run(
    run_dir: Path,
    *,
    bulk_model: str = "deepseek-chat",
    start: datetime = START,
    with_plan: bool = False,
) -> Job:
    """A run directory of six hand-made rows: fallback, retries, a failure and a budget skip."""
    job = make_job(bulk_model=bulk_model, allow_unpriced=bulk_model == "local")
    prices = resolve_prices(job)
    t = {"started_at": start, "finished_at": start + timedelta(seconds=1), "tier_source": "rule"}
    results = _rows(
        [
            {
                **t,
                "id": "a",
                "tier": "complex",
                "model_requested": "claude-opus-4-7",
                "model_used": "claude-opus-4-7",
                "status": "ok",
                "attempts": 1,
                "fallback_depth": 0,
                "input_tokens": 1000,
                "cached_tokens": 400,
                "output_tokens": 500,
                "reasoning_tokens": 200,
                "latency_ms": 900.0,
            },
            {
                **t,
                "id": "b",
                "tier": "complex",
                "model_requested": "claude-opus-4-7",
                "model_used": "claude-sonnet-4-6",
                "status": "ok",
                "attempts": 2,
                "fallback_depth": 1,
                "input_tokens": 200,
                "output_tokens": 100,
                "latency_ms": 1500.0,
            },
            {
                **t,
                "id": "c",
                "tier": "standard",
                "tier_source": "default",
                "model_requested": "claude-sonnet-4-6",
                "model_used": "claude-sonnet-4-6",
                "status": "ok",
                "attempts": 1,
                "fallback_depth": 0,
                "input_tokens": 300,
                "output_tokens": 150,
                "latency_ms": 400.0,
            },
            {
                **t,
                "id": "d",
                "tier": "structured",
                "tier_source": "metadata",
                "model_requested": "gpt-5.5",
                "model_used": "gpt-5.5",
                "status": "ok",
                "attempts": 2,
                "fallback_depth": 0,
                "input_tokens": 100,
                "output_tokens": 40,
                "failed_input_tokens": 100,
                "failed_output_tokens": 40,
                "latency_ms": 600.0,
            },
            {
                **t,
                "id": "e",
                "tier": "bulk",
                "model_requested": bulk_model,
                "status": "failed",
                "error_type": "server_error",
                "attempts": 2,
                "fallback_depth": 1,
                "failed_input_tokens": 50,
                "failed_output_tokens": 20,
                "latency_ms": 700.0,
            },
            {
                "id": "f",
                "tier": "bulk",
                "tier_source": "rule",
                "model_requested": bulk_model,
                "status": "skipped_budget",
                "error_type": "budget",
                "attempts": 0,
            },
        ],
        RESULT_SCHEMA,
    ).with_columns(row_key=pl.col("id"), row_index=pl.int_range(6, dtype=pl.Int64))
    attempts = _rows(
        [
            {
                "id": "a",
                "model": "claude-opus-4-7",
                "attempt": 1,
                "action": "ok",
                "input_tokens": 1000,
                "cached_tokens": 400,
                "output_tokens": 500,
                "reasoning_tokens": 200,
            },
            {
                "id": "b",
                "model": "claude-opus-4-7",
                "attempt": 1,
                "status_code": 500,
                "error_type": "server_error",
                "action": "fallback",
            },
            {
                "id": "b",
                "model": "claude-sonnet-4-6",
                "attempt": 2,
                "action": "ok",
                "input_tokens": 200,
                "output_tokens": 100,
            },
            {
                "id": "c",
                "model": "claude-sonnet-4-6",
                "attempt": 1,
                "action": "ok",
                "input_tokens": 300,
                "output_tokens": 150,
            },
            {
                "id": "d",
                "model": "gpt-5.5",
                "attempt": 1,
                "error_type": "invalid_json",
                "action": "retry",
                "input_tokens": 100,
                "output_tokens": 40,
            },
            {
                "id": "d",
                "model": "gpt-5.5",
                "attempt": 2,
                "action": "ok",
                "input_tokens": 100,
                "output_tokens": 40,
            },
            {
                "id": "e",
                "model": bulk_model,
                "attempt": 1,
                "error_type": "invalid_json",
                "action": "fallback",
                "input_tokens": 50,
                "output_tokens": 20,
            },
            {
                "id": "e",
                "model": "gpt-5.5",
                "attempt": 2,
                "status_code": 429,
                "error_type": "rate_limited",
                "action": "fail",
            },
        ],
        ATTEMPT_SCHEMA,
    ).with_columns(row_key=pl.col("id"))
    results, attempts = price_outcomes(results, attempts, prices)
    run_dir.mkdir(parents=True, exist_ok=True)
    results.write_parquet(run_dir / "results.parquet")
    attempts.write_parquet(run_dir / "attempts.parquet")
    if with_plan:
        forecast = ForecastAccumulator(job, prices)
        schema = pl.Schema({**INPUT_SCHEMA, "tier": pl.String})
        forecast.add(
            _rows(
                [
                    {"prompt": "x" * 400, "tier": tier}
                    for tier in ("complex", "complex", "standard", "bulk")
                ],
                schema,
            )
        )
        write_plan(forecast.frame(), run_dir)
    return job


def test_cost_report_worked_example(tmp_path: Path) -> None:
    job = make_run(tmp_path)
    summary = write_reports(tmp_path, job=job, prices=resolve_prices(job))
    report = summary.cost_report
    assert report.schema == COST_REPORT_SCHEMA
    assert report.select("tier", "model").rows() == [
        ("complex", "claude-opus-4-7"),
        ("complex", "claude-sonnet-4-6"),
        ("standard", "claude-sonnet-4-6"),
        ("structured", "gpt-5.5"),
        ("bulk", "deepseek-chat"),
    ]
    # a: 600×5 + 400×5 (no cached price: input price) + 300×25 + 200×25 = 17,500 µ$
    # b: 200×3 + 100×15 = 2,100;  c: 300×3 + 150×15 = 3,150;  d: 100×3 + 40×12 = 780
    assert report["cost_usd"].to_list() == [
        Decimal("0.0175"),
        Decimal("0.0021"),
        Decimal("0.00315"),
        Decimal("0.00078"),
        Decimal(0),
    ]
    # d's invalid JSON attempt 780 µ$; e's invalid JSON on deepseek 50×0.27 + 20×1.10 = 35.5 µ$
    assert report["failed_cost_usd"].to_list() == [
        Decimal(0),
        Decimal(0),
        Decimal(0),
        Decimal("0.00078"),
        Decimal("0.0000355"),
    ]
    bulk = report.row(4, named=True)
    assert (bulk["rows"], bulk["ok"], bulk["failed"], bulk["skipped"]) == (2, 0, 1, 1)
    assert report["fallback_rows"].to_list() == [0, 1, 0, 0, 1]
    assert report["cached_tokens"].to_list() == [400, 0, 0, 0, 0]
    assert report["latency_p50_ms"][0] == 900.0
    assert not report["unpriced"].any()
    assert set(report["price_sha256"]) == {resolve_prices(job).sha256}


def test_totals_equal_the_sums_of_the_rows_exactly(tmp_path: Path) -> None:
    job = make_run(tmp_path)
    summary = write_reports(tmp_path, job=job, prices=resolve_prices(job))
    totals = summary.cost_totals.row(0, named=True)
    assert summary.cost_totals.schema == COST_TOTALS_SCHEMA
    for column in (
        "rows",
        "ok",
        "failed",
        "input_tokens",
        "cost_usd",
        "failed_cost_usd",
        "total_cost_usd",
        "baseline_cost_usd",
    ):
        assert totals[column] == summary.cost_report[column].sum(), column
    assert totals["cost_usd"] == Decimal("0.02353")
    assert totals["total_cost_usd"] == Decimal("0.0243455")
    results = pl.read_parquet(tmp_path / "results.parquet")
    assert totals["cost_usd"] == results["cost_usd"].sum()
    assert totals["failed_cost_usd"] == results["failed_cost_usd"].sum()
    assert summary.tier_distribution["total_cost_usd"].sum() == totals["total_cost_usd"]


def test_savings_price_the_same_tokens_on_baseline_and_strongest(tmp_path: Path) -> None:
    job = make_run(tmp_path)
    s = write_reports(tmp_path, job=job, prices=resolve_prices(job)).savings.row(0, named=True)
    # answered tokens: input 1600 (400 cached), output 790 (200 reasoning)
    # sonnet: 1600×3 + 790×15 = 16,650 µ$;  opus: 1600×5 + 790×25 = 27,750 µ$
    assert s["actual_cost_usd"] == Decimal("0.02353")
    assert (s["baseline_model"], s["baseline_cost_usd"]) == (
        "claude-sonnet-4-6",
        Decimal("0.01665"),
    )
    # the saving is counted on total spend: kept 23,530 + failed 815.5 µ$ = 24,345.5 µ$
    assert s["total_cost_usd"] == Decimal("0.0243455")
    assert s["savings_vs_baseline_usd"] == Decimal("-0.0076955")  # routing cost more: said plainly
    assert (s["strongest_model"], s["strongest_cost_usd"]) == (
        "claude-opus-4-7",
        Decimal("0.02775"),
    )
    assert s["savings_vs_strongest_usd"] == Decimal("0.0034045")
    assert s["savings_vs_strongest_pct"] == pytest.approx(3404.5 / 27750 * 100)
    assert s["forecast_cost_usd"] is None
    assert s["started_at"] == START


def test_tier_distribution_shares_and_sources(tmp_path: Path) -> None:
    job = make_run(tmp_path)
    tiers = write_reports(tmp_path, job=job, prices=resolve_prices(job)).tier_distribution
    assert tiers.schema == TIER_DISTRIBUTION_SCHEMA
    assert tiers["tier"].to_list() == ["complex", "standard", "structured", "bulk"]
    assert tiers["rows"].to_list() == [2, 1, 1, 2]
    assert tiers["share"].sum() == pytest.approx(1.0)
    assert tiers["default_rows"].to_list() == [0, 1, 0, 0]
    assert tiers["metadata_rows"].to_list() == [0, 0, 1, 0]
    assert tiers["model"].to_list() == list(TIERS.values())


def test_forecast_beside_actual_when_the_run_has_a_plan(tmp_path: Path) -> None:
    job = make_run(tmp_path, with_plan=True)
    summary = write_reports(tmp_path, job=job, prices=resolve_prices(job))
    plan = pl.read_parquet(tmp_path / "plan.parquet")
    s = summary.savings.row(0, named=True)
    assert s["forecast_cost_usd"] == plan["forecast_cost_usd"].sum()
    assert s["forecast_delta_usd"] == s["total_cost_usd"] - s["forecast_cost_usd"]
    tiers = summary.tier_distribution
    assert tiers["forecast_rows"].to_list() == [2, 1, None, 1]


def test_unpriced_model_is_flagged_and_never_zero(tmp_path: Path) -> None:
    job = make_run(tmp_path, bulk_model="local")
    summary = write_reports(tmp_path, job=job, prices=resolve_prices(job))
    bulk = summary.cost_report.filter(pl.col("tier") == "bulk").row(0, named=True)
    assert bulk["unpriced"] and bulk["unpriced_rows"] == 1
    assert bulk["failed_cost_usd"] is None
    totals = summary.cost_totals.row(0, named=True)
    assert totals["unpriced"]
    assert totals["failed_cost_usd"] == Decimal("0.00078")  # the priced groups only, flagged
    assert summary.savings["unpriced"][0]


def test_reports_round_trip_and_record_the_budget(tmp_path: Path) -> None:
    job = make_run(tmp_path)
    written = write_reports(tmp_path, job=job, prices=resolve_prices(job), budget_hit=True)
    loaded = load_summary(tmp_path)
    assert loaded.budget_hit
    assert loaded.savings.schema == SAVINGS_SCHEMA
    for stem in ("cost_report", "cost_totals", "tier_distribution", "savings", "model_attempts"):
        assert getattr(loaded, stem).equals(getattr(written, stem)), stem
    attempts = loaded.model_attempts.filter(pl.col("model") == "gpt-5.5").row(0, named=True)
    assert (attempts["attempts"], attempts["failed_attempts"], attempts["rate_limited"]) == (
        3,
        2,
        1,
    )


def test_missing_results_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="has no results.parquet"):
        write_reports(tmp_path, job=make_job(), prices=resolve_prices(make_job()))
    with pytest.raises(OutputError, match="does not look like a batchroute run directory"):
        load_summary(tmp_path)


def test_daily_totals_sum_runs_per_day(tmp_path: Path) -> None:
    for name, start in [
        ("a", START),
        ("b", START + timedelta(hours=3)),
        ("c", START + timedelta(days=1)),
    ]:
        job = make_run(tmp_path / "nightly" / name, start=start)
        write_reports(tmp_path / "nightly" / name, job=job, prices=resolve_prices(job))
    runs = read_runs(tmp_path / "nightly")
    daily = daily_totals(runs)
    assert daily.schema == DAILY_SCHEMA
    assert daily["date"].to_list() == [START.date(), (START + timedelta(days=1)).date()]
    assert daily["runs"].to_list() == [2, 1]
    assert daily["total_cost_usd"].to_list() == [Decimal("0.048691"), Decimal("0.0243455")]
    assert daily["total_cost_usd"].sum() == runs["total_cost_usd"].sum()
    assert daily["savings_vs_baseline_pct"][0] == pytest.approx(-769.55 / 1665 * 100)


def test_a_folder_without_runs_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="holds no run"):
        read_runs(tmp_path)


def test_a_row_superseded_on_two_models_is_one_superseded_row(tmp_path: Path) -> None:
    """A key answered on two models and replaced by a rerun is one row, not one per model."""
    job = make_run(tmp_path)
    attempts = pl.read_parquet(tmp_path / "attempts.parquet")
    answered = attempts.filter(pl.col("error_type").is_null()).unique("model", keep="first")
    assert answered.height >= 2
    gone = answered.head(2).with_columns(row_key=pl.lit("replaced-by-a-rerun"))
    pl.concat([attempts, gone]).write_parquet(tmp_path / "attempts.parquet")
    summary = write_reports(tmp_path, job=job, prices=resolve_prices(job))
    assert summary.cost_totals["superseded_rows"][0] == 1
    assert summary.savings["superseded_rows"][0] == 1
    assert summary.tier_distribution["superseded_rows"].sum() == 1
    assert summary.cost_totals["superseded_cost_usd"][0] == gone["cost_usd"].sum()
