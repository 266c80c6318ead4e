from decimal import Decimal
from typing import Any

import polars as pl
import pytest

from batchroute.pricing.costs import (
    FloatRates,
    price_outcomes,
    rate_literals,
    usage_cost,
    usage_cost_expr,
)
from batchroute.pricing.prices import ModelPrice, PriceTable
from batchroute.schema import ATTEMPT_SCHEMA, COST_DTYPE, RESULT_SCHEMA

STRONG = ModelPrice(Decimal("3.00"), Decimal("15.00"), cached_input_per_mtok=Decimal("0.30"))
CHEAP = ModelPrice(Decimal("0.27"), Decimal("1.10"))
THINKER = ModelPrice(Decimal("1.25"), Decimal("10"), reasoning_per_mtok=Decimal("5"))
PRICES = PriceTable.of(
    {"strong": STRONG, "cheap": CHEAP, "thinker": THINKER},
    source="test",
    unpriced=frozenset({"mystery"}),
)


def frame(rows: list[dict[str, Any]], schema: pl.Schema) -> pl.DataFrame:
    return pl.DataFrame([{name: row.get(name) for name in schema} for row in rows], schema=schema)


def result(key: str, **fields: Any) -> dict[str, Any]:
    return {"id": key, "row_key": key, "status": "ok", **fields}


def attempt(key: str, model: str, **fields: Any) -> dict[str, Any]:
    return {"id": key, "row_key": key, "model": model, **fields}


def test_usage_cost_worked_example_with_cached_and_reasoning() -> None:
    # (1000-400)*3.00 + 400*0.30 + (500-200)*15 + 200*15 = 1800 + 120 + 4500 + 3000 = 9420 µ$
    cost = usage_cost(
        STRONG, input_tokens=1000, cached_tokens=400, output_tokens=500, reasoning_tokens=200
    )
    assert cost == Decimal("0.009420")
    # reasoning has its own price: 2000*1.25 + (1000-800)*10 + 800*5 = 2500 + 2000 + 4000
    assert usage_cost(
        THINKER, input_tokens=2000, output_tokens=1000, reasoning_tokens=800
    ) == Decimal("0.0085")


def test_expression_matches_the_scalar_formula() -> None:
    tokens = pl.DataFrame(
        {"i": [1000, 7, None], "o": [500, 3, 9], "c": [400, 0, None], "r": [200, None, 0]}
    )
    costs = tokens.select(
        usage_cost_expr(
            input_tokens=pl.col("i"),
            output_tokens=pl.col("o"),
            cached_tokens=pl.col("c"),
            reasoning_tokens=pl.col("r"),
            rates=rate_literals(STRONG),
        )
    ).to_series()
    assert costs.dtype == COST_DTYPE
    assert costs.to_list() == [
        usage_cost(
            STRONG, input_tokens=1000, output_tokens=500, cached_tokens=400, reasoning_tokens=200
        ),
        usage_cost(STRONG, input_tokens=7, output_tokens=3),
        usage_cost(STRONG, input_tokens=0, output_tokens=9),
    ]


def test_price_outcomes_worked_example_with_failed_attempts() -> None:
    results = frame(
        [
            # answered by strong after a 429 and an invalid-JSON answer on cheap
            result(
                "a",
                model_used="strong",
                input_tokens=1000,
                cached_tokens=400,
                output_tokens=500,
                reasoning_tokens=200,
            ),
            # never sent (budget): costs nothing, and that is a known figure
            result("b", status="skipped_budget"),
            # failed after two server errors that still reported usage
            result("c", status="failed", model_used="cheap"),
        ],
        RESULT_SCHEMA,
    )
    attempts = frame(
        [
            attempt("a", "cheap", attempt=1, error_type="rate_limited", action="retry"),
            attempt(
                "a",
                "cheap",
                attempt=2,
                error_type="invalid_json",
                action="fallback",
                input_tokens=1000,
                output_tokens=300,
            ),
            attempt(
                "a",
                "strong",
                attempt=3,
                action="ok",
                input_tokens=1000,
                cached_tokens=400,
                output_tokens=500,
                reasoning_tokens=200,
            ),
            attempt(
                "c",
                "cheap",
                attempt=1,
                error_type="server_error",
                input_tokens=100,
                output_tokens=10,
            ),
            attempt(
                "c",
                "cheap",
                attempt=2,
                error_type="server_error",
                input_tokens=100,
                output_tokens=10,
            ),
        ],
        ATTEMPT_SCHEMA,
    )
    priced, priced_attempts = price_outcomes(results, attempts, PRICES)

    assert priced.schema == RESULT_SCHEMA and priced_attempts.schema == ATTEMPT_SCHEMA
    assert priced["id"].to_list() == ["a", "b", "c"]
    assert priced["cost_usd"].to_list() == [Decimal("0.00942"), Decimal(0), Decimal(0)]
    # 1000*0.27 + 300*1.10 = 600 µ$;  2 × (100*0.27 + 10*1.10) = 2 × 38 µ$
    assert priced["failed_cost_usd"].to_list() == [
        Decimal("0.0006"),
        Decimal(0),
        Decimal("0.000076"),
    ]
    assert priced["priced"].to_list() == [True, True, True]
    assert priced_attempts["cost_usd"].to_list() == [
        Decimal(0),
        Decimal("0.0006"),
        Decimal("0.00942"),
        Decimal("0.000038"),
        Decimal("0.000038"),
    ]
    # the row and attempt totals tie out exactly
    assert (
        priced["cost_usd"].sum() + priced["failed_cost_usd"].sum()
        == priced_attempts["cost_usd"].sum()
    )


def test_unpriced_model_costs_null_and_is_flagged_never_zero() -> None:
    results = frame(
        [
            result("a", model_used="mystery", input_tokens=10, output_tokens=10),
            result("b", model_used="strong", input_tokens=10, output_tokens=10),
        ],
        RESULT_SCHEMA,
    )
    attempts = frame(
        [
            attempt("a", "mystery", attempt=1, action="ok", input_tokens=10, output_tokens=10),
            attempt("b", "mystery", attempt=1, error_type="timeout", action="fallback"),
            attempt("b", "strong", attempt=2, action="ok", input_tokens=10, output_tokens=10),
        ],
        ATTEMPT_SCHEMA,
    )
    priced, priced_attempts = price_outcomes(results, attempts, PRICES)
    assert priced["cost_usd"].to_list() == [None, Decimal("0.00018")]
    assert priced["failed_cost_usd"].to_list() == [Decimal(0), None]
    assert priced["priced"].to_list() == [False, False]
    assert priced_attempts["priced"].to_list() == [False, False, True]
    assert priced_attempts["cost_usd"].to_list()[:2] == [None, None]


def test_sums_over_many_rows_are_exact() -> None:
    n = 10_000
    results = frame(
        [result(str(i), model_used="cheap", input_tokens=1, output_tokens=1) for i in range(n)],
        RESULT_SCHEMA,
    )
    priced, _ = price_outcomes(results, frame([], ATTEMPT_SCHEMA), PRICES)
    assert priced["cost_usd"].sum() == usage_cost(CHEAP, input_tokens=n, output_tokens=n)
    assert priced["cost_usd"].sum() == Decimal("0.0137")


def test_float_rates_agree_with_the_exact_cost() -> None:
    """The fast form used by the budget and progress is the same formula as the reports'."""
    price = ModelPrice(
        input_per_mtok=Decimal("3"),
        output_per_mtok=Decimal("15"),
        cached_input_per_mtok=Decimal("0.3"),
        reasoning_per_mtok=Decimal("60"),
    )
    usage = {
        "input_tokens": 1200,
        "output_tokens": 900,
        "cached_tokens": 700,
        "reasoning_tokens": 500,
    }
    exact = usage_cost(price, **usage)
    assert FloatRates.of(price).usage_usd(**usage) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("cached", [0, 400, 1000])
@pytest.mark.parametrize("reasoning", [0, 300, 800])
def test_worst_case_bounds_every_split_of_the_same_tokens(cached: int, reasoning: int) -> None:
    """Whatever share is cached or reasoning, a request costs no more than its reservation."""
    for cached_rate, reasoning_rate in [("0.1", "60"), ("9", "1")]:
        price = ModelPrice(
            input_per_mtok=Decimal("2"),
            output_per_mtok=Decimal("8"),
            cached_input_per_mtok=Decimal(cached_rate),
            reasoning_per_mtok=Decimal(reasoning_rate),
        )
        cost = usage_cost(
            price,
            input_tokens=1000,
            output_tokens=800,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
        )
        bound = FloatRates.of(price).worst_case_usd(prompt_tokens=1000, output_tokens=800)
        assert float(cost) <= bound * (1 + 1e-12)
