import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from batchroute.config import Job, parse_job
from batchroute.pricing.costs import price_outcomes
from batchroute.pricing.forecast import (
    PLAN_SCHEMA,
    ForecastAccumulator,
    forecast_totals,
    tier_prices,
)
from batchroute.pricing.prices import resolve_prices
from batchroute.pricing.tokens import DEFAULT_OUTPUT_TOKENS, count_message_tokens
from batchroute.schema import ATTEMPT_SCHEMA, INPUT_SCHEMA, RESULT_SCHEMA

JOB = {
    "name": "t",
    "input": {"path": "in.jsonl", "system_prompt": "You are terse."},
    "request": {"max_tokens": 400},
    "tiers": {
        "complex": "claude-opus-4-7",
        "standard": "claude-sonnet-4-6",
        "structured": {"model": "gpt-5.5", "request": {"expected_output_tokens": 50}},
        "bulk": "deepseek-chat",
    },
    "models": {
        "claude-opus-4-7": {"input_per_mtok": 5, "output_per_mtok": 25},
        "claude-sonnet-4-6": {"input_per_mtok": 3, "output_per_mtok": 15},
        "gpt-5.5": {"input_per_mtok": 3, "output_per_mtok": 12},
        "deepseek-chat": {"input_per_mtok": 0.27, "output_per_mtok": 1.10},
    },
    "baseline_model": "claude-sonnet-4-6",
}


def make_job(**changes: Any) -> Job:
    path = Path("jobs/t.yaml")
    return Job(parse_job({**JOB, **changes}, path=path), path=path, text_sha256="0" * 64)


def classified(rows: list[dict[str, Any]]) -> pl.DataFrame:
    schema = pl.Schema({**INPUT_SCHEMA, "tier": pl.String})
    return pl.DataFrame([{name: row.get(name) for name in schema} for row in rows], schema=schema)


ROWS = [
    {"row_index": 0, "id": "1", "prompt": "Refactor this module " * 40, "tier": "complex"},
    {"row_index": 1, "id": "2", "prompt": "Summarise the meeting notes.", "tier": "standard"},
    {
        "row_index": 2,
        "id": "3",
        "prompt": "Extract fields as JSON",
        "tier": "structured",
        "system_prompt": "Return only JSON.",
    },
    {"row_index": 3, "id": "4", "prompt": "Add docstrings", "tier": "bulk"},
    {
        "row_index": 4,
        "id": "5",
        "prompt": "x",
        "tier": "bulk",
        "messages": [
            {"role": "system", "content": "abc"},
            {"role": "user", "content": "hello world"},
        ],
    },
    {"row_index": 5, "id": "6", "prompt": "", "tier": "standard", "invalid_reason": "empty prompt"},
]


def messages_of(row: dict[str, Any]) -> list[dict[str, str]]:
    if row.get("messages"):
        return list(row["messages"])
    system = row.get("system_prompt") or "You are terse."
    return [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]}]


def test_forecast_counts_tokens_and_prices_per_tier() -> None:
    job = make_job()
    acc = ForecastAccumulator(job, resolve_prices(job))
    acc.add(classified(ROWS[:3]))
    acc.add(classified(ROWS[3:]))  # batches add up
    plan = acc.frame()
    assert plan.schema == PLAN_SCHEMA
    assert plan["tier"].to_list() == ["complex", "standard", "structured", "bulk"]
    assert plan["rows"].to_list() == [1, 1, 1, 2]
    assert acc.invalid_rows == 1
    assert plan["share"].to_list() == [0.2, 0.2, 0.2, 0.4]
    expected_inputs = [count_message_tokens(messages_of(r)) for r in ROWS[:5]]
    assert plan["input_tokens"].to_list() == [*expected_inputs[:3], sum(expected_inputs[3:])]
    assert plan["output_tokens"].to_list() == [400, 400, 50, 800]
    # the complex row by hand: 'Refactor this module ' * 40 = 840 chars = 210 tokens,
    # + system 'You are terse.' 14 chars = 4 tokens, + 2 messages × 4 + 3 priming = 225 tokens
    assert expected_inputs[0] == 225
    assert plan["forecast_cost_usd"][0] == (225 * Decimal(5) + 400 * Decimal(25)) / 1_000_000
    assert plan["baseline_cost_usd"][0] == (225 * Decimal(3) + 400 * Decimal(15)) / 1_000_000
    assert plan["baseline_model"].unique().to_list() == ["claude-sonnet-4-6"]
    assert plan["price_sha256"][0] == resolve_prices(job).sha256


def test_forecast_equals_actual_when_usage_equals_the_estimate() -> None:
    """Results whose usage is exactly the estimate cost exactly the forecast, to the picodollar."""
    job = make_job()
    prices = resolve_prices(job)
    acc = ForecastAccumulator(job, prices)
    acc.add(classified(ROWS))
    outputs = {"complex": 400, "standard": 400, "structured": 50, "bulk": 400}
    results = pl.DataFrame(
        [
            {
                **dict.fromkeys(RESULT_SCHEMA),
                "id": row["id"],
                "row_key": row["id"],
                "tier": row["tier"],
                "status": "ok",
                "model_used": job.config.tier(row["tier"]).model,
                "input_tokens": count_message_tokens(messages_of(row)),
                "output_tokens": outputs[row["tier"]],
            }
            for row in ROWS[:5]
        ],
        schema=RESULT_SCHEMA,
    )
    actual, _ = price_outcomes(results, pl.DataFrame(schema=ATTEMPT_SCHEMA), prices)
    totals = forecast_totals(acc.frame())
    assert totals.cost_usd == actual["cost_usd"].sum()
    assert totals.rows == actual.height
    assert totals.savings_usd is not None and totals.savings_usd > 0


def test_unpriced_tier_makes_the_total_unknown_not_zero() -> None:
    models = {**JOB["models"], "local": {}}
    job = make_job(
        models=models, tiers={**JOB["tiers"], "bulk": "local"}, prices={"allow_unpriced": True}
    )
    acc = ForecastAccumulator(job, resolve_prices(job))
    acc.add(classified(ROWS))
    plan = acc.frame()
    assert plan.filter(pl.col("tier") == "bulk")["forecast_cost_usd"].to_list() == [None]
    assert plan["priced"].to_list() == [True, True, True, False]
    totals = forecast_totals(plan)
    assert totals.unpriced and totals.cost_usd is None and totals.baseline_cost_usd is not None


def test_plan_command_forecasts_offline_and_writes_plan_parquet(tmp_path: Path) -> None:
    """The endpoint is a closed port: the plan must not need it."""
    import json

    from click.testing import CliRunner

    from batchroute.cli import main

    prompts = tmp_path / "prompts.jsonl"
    lines = [
        {"id": "1", "prompt": "Find the root cause of this deadlock in the worker pool"},
        {"id": "2", "prompt": "Summarise this release note for the team"},
        {"id": "3", "prompt": "Extract the fields as JSON: name, email"},
        {"id": "4", "prompt": "Add docstrings to these functions"},
    ]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"name: t\ninput: {{path: {prompts}, id_column: id}}\n"
        "endpoint: {base_url: 'http://127.0.0.1:9/v1', api_key_env: null}\n"
        "request: {max_tokens: 100}\n"
        "tiers: {complex: claude-opus-4-7, standard: claude-sonnet-4-6,"
        " structured: gpt-5.5, bulk: deepseek-chat}\n"
        "models: {claude-opus-4-7: {}, claude-sonnet-4-6: {}, gpt-5.5: {}, deepseek-chat: {}}\n"
    )
    runner = CliRunner()
    result = runner.invoke(main, ["plan", str(job_file), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "Forecast (no API called)" in result.output
    plan = pl.read_parquet(tmp_path / "out" / "plan.parquet")
    assert plan.schema == PLAN_SCHEMA
    assert plan["rows"].sum() == 4
    assert plan["output_tokens"].sum() == 400
    assert plan["price_source"][0] == "batchroute default table 2026-11-01"

    limited = runner.invoke(main, ["plan", str(job_file), "--out", str(tmp_path), "--limit", "2"])
    assert limited.exit_code == 0, limited.output
    assert pl.read_parquet(tmp_path / "plan.parquet")["rows"].sum() == 2


def test_plan_command_reports_an_unpriced_model_clearly(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from batchroute.cli import main

    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "name: t\ninput: {path: in.jsonl}\ntiers: {standard: in-house}\nmodels: {in-house: {}}\n"
    )
    result = CliRunner().invoke(main, ["plan", str(job_file)])
    assert result.exit_code == 6
    assert "models.in-house: no price for 'in-house'" in result.output
    assert "Traceback" not in result.output


def test_one_forecast_and_one_output_default_for_plan_and_calibration() -> None:
    """Finding 2: the plan and the router's calibration forecast a tier alike, at one default."""
    job = make_job(request={"max_tokens": None})
    prices = resolve_prices(job)
    acc = ForecastAccumulator(job, prices)
    acc.add(classified(ROWS[:2]))
    plan = acc.frame()
    tiers = tier_prices(job, prices)
    for row in plan.iter_rows(named=True):
        assert row["output_tokens"] == row["rows"] * DEFAULT_OUTPUT_TOKENS
        assert tiers[row["tier"]].output_tokens == DEFAULT_OUTPUT_TOKENS
        assert row["forecast_cost_usd"] == tiers[row["tier"]].cost_usd(
            input_tokens=row["input_tokens"], rows=row["rows"]
        )


def test_no_module_outside_pricing_computes_a_price() -> None:
    """Finding 2: the per-1M rates are read only in batchroute/pricing (config declares them)."""
    package = Path(__file__).parent.parent.parent / "batchroute"
    readers = re.compile(
        r"\.(input|output|cached_input|reasoning)_per_mtok\b|\.(cached|reasoning)_rate\b|1e6"
    )
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.relative_to(package).parts[0] != "pricing"
        and path.relative_to(package) != Path("cli/prices.py")  # prints the table, prices nothing
        and readers.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_a_labelled_sets_forecast_is_the_runs_forecast() -> None:
    """`forecast_by_tier` (calibrate) is the run's and plan's `ForecastAccumulator`, not a twin:
    the same rows, tokens and cost per tier (batch prices, and the checks' forecast apart)."""
    from batchroute.pricing.forecast import forecast_by_tier

    job = make_job(
        tiers={**JOB["tiers"], "bulk": {"model": "deepseek-chat", "mode": "batch"}},
        models={
            **JOB["models"],
            "deepseek-chat": {
                "input_per_mtok": 0.27,
                "output_per_mtok": 1.10,
                "batch_discount": 0.5,
            },
        },
        verify={"default": ["not_truncated"], "expected_failure_rate": 0.25},
    )
    rows = [
        row
        for row in ROWS
        if not (row.get("messages") or row.get("system_prompt") or row.get("invalid_reason"))
    ]
    forecast = ForecastAccumulator(job, resolve_prices(job))
    forecast.add(classified(rows))
    plan = forecast.frame()
    assert (plan["escalation_cost_usd"] > 0).any(), "the checks are forecast"
    labelled = pl.DataFrame(
        {"prompt": [r["prompt"] for r in rows], "tier": [r["tier"] for r in rows]}
    )
    by_tier = forecast_by_tier(labelled, job=job)
    columns = ["tier", "model", "rows", "share", "input_tokens", "output_tokens"]
    assert by_tier.select(columns).equals(plan.select(columns))
    assert by_tier["forecast_cost_usd"].to_list() == plan["forecast_cost_usd"].to_list()
    answers = plan["forecast_cost_usd"] - plan["judge_cost_usd"] - plan["escalation_cost_usd"]
    assert by_tier["cost_usd"].to_list() == answers.to_list()
