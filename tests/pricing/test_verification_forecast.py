"""`plan` forecasts what checks cost: escalations at the expected rate, and the judge."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batchroute.pricing.costs import usage_cost
from batchroute.pricing.forecast import ForecastAccumulator, reprice_plan, tier_output_tokens
from batchroute.pricing.prices import resolve_prices
from batchroute.pricing.tokens import count_text_tokens
from tests.pricing.test_forecast import ROWS, classified, make_job


def plan_of(**changes: object) -> dict[str, dict[str, object]]:
    job = make_job(**changes)
    acc = ForecastAccumulator(job, resolve_prices(job))
    acc.add(classified(ROWS))
    return {row["tier"]: row for row in acc.frame().iter_rows(named=True)}


def test_no_checks_no_verification_forecast() -> None:
    plan = plan_of()
    assert all(row["judge_cost_usd"] == 0 == row["escalation_cost_usd"] for row in plan.values())


def test_escalations_are_forecast_at_the_expected_rate_on_the_next_tier() -> None:
    plain = plan_of()
    job = make_job(verify={"default": ["not_truncated"], "expected_failure_rate": 0.25})
    plan = plan_of(verify={"default": ["not_truncated"], "expected_failure_rate": 0.25})
    bulk = plan["bulk"]
    standard = resolve_prices(job).get("claude-sonnet-4-6")
    assert standard is not None
    expected = usage_cost(
        standard,
        input_tokens=round(int(bulk["input_tokens"]) * 0.25),  # type: ignore[call-overload]
        output_tokens=round(int(bulk["rows"]) * 0.25 * tier_output_tokens(job.config, "standard")),  # type: ignore[call-overload]
    )
    assert bulk["escalation_cost_usd"] == expected > 0
    assert bulk["forecast_cost_usd"] == plain["bulk"]["forecast_cost_usd"] + expected  # type: ignore[operator]
    assert plan["complex"]["escalation_cost_usd"] == 0  # nowhere to climb


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_the_judge_is_forecast_on_every_answer_it_grades(rate: float) -> None:
    models = {**make_job().config.models, "grader": {"input_per_mtok": 1, "output_per_mtok": 4}}
    verify = {
        "default": ["judge"],
        "judge": {"model": "grader", "expected_output_tokens": 30},
        "expected_failure_rate": rate,
    }
    plan = plan_of(models=models, verify=verify)
    job = make_job(models=models, verify=verify)
    standard = plan["standard"]
    rows, tokens = int(standard["rows"]), int(standard["input_tokens"])  # type: ignore[call-overload]
    calls = rows * (1 + rate)
    judge = job.config.verify.judge
    assert judge is not None
    per_call = (
        count_text_tokens(judge.prompt)
        + count_text_tokens(judge.rubric)
        + tier_output_tokens(job.config, "standard")
    )
    price = resolve_prices(job).get("grader")
    assert price is not None
    expected = usage_cost(
        price,
        input_tokens=round(tokens * (1 + rate) + calls * per_call),
        output_tokens=round(calls * 30),
    )
    assert standard["judge_cost_usd"] == expected > Decimal(0)


def test_a_repriced_plan_keeps_its_verification_part_at_the_new_prices() -> None:
    """Repricing a plan is forecasting it again with the new prices: judge and escalations too."""
    models = {**make_job().config.models, "grader": {"input_per_mtok": 1, "output_per_mtok": 4}}
    dearer = {
        name: {
            **model.model_dump(exclude_unset=True),
            "input_per_mtok": 2 * (model.input_per_mtok or 0),
        }
        for name, model in make_job(models=models).config.models.items()
    }
    verify = {
        "default": ["not_truncated", "judge"],
        "judge": {"model": "grader", "expected_output_tokens": 30},
        "expected_failure_rate": 0.25,
    }
    cheap, dear = make_job(models=models, verify=verify), make_job(models=dearer, verify=verify)
    frames = []
    for job in (cheap, dear):
        acc = ForecastAccumulator(job, resolve_prices(job))
        acc.add(classified(ROWS))
        frames.append(acc.frame())
    written, expected = frames
    repriced = reprice_plan(written, dear.config, resolve_prices(dear))
    assert repriced.columns == written.columns
    columns = ["tier", "forecast_cost_usd", "judge_cost_usd", "escalation_cost_usd", "priced"]
    assert repriced.select(columns).equals(expected.select(columns))
    assert (repriced["judge_cost_usd"] > written["judge_cost_usd"]).all()
    assert repriced["forecast_cost_usd"].sum() > written["forecast_cost_usd"].sum()


def test_a_plan_from_before_verification_is_repriced_without_one() -> None:
    verify = {"default": ["not_truncated"], "expected_failure_rate": 0.5}
    job = make_job(verify=verify)
    acc = ForecastAccumulator(make_job(), resolve_prices(job))
    acc.add(classified(ROWS))
    old = acc.frame().drop("judge_cost_usd", "escalation_cost_usd")
    repriced = reprice_plan(old, job.config, resolve_prices(job))
    assert repriced["forecast_cost_usd"].equals(old["forecast_cost_usd"])
