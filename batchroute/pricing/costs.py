"""What tokens cost: one formula, as a Decimal for one request and as a polars expression.

A request's cost is the usage the API reported, priced per 1M tokens:

    (input - cached) × input + cached × cached_input
    + (output - reasoning) × output + reasoning × reasoning       all / 1,000,000

where a missing cached or reasoning price is the input or output price. Prices carry at most six
decimal places per 1M tokens, so every cost is exact in `COST_DTYPE` (12 places) and any sum of
costs equals the cost of the summed tokens: reports add up to the cent and beyond, without drift.
An unpriced model's cost is null with `priced` false, never $0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import polars as pl

from batchroute.pricing.prices import ModelPrice, PriceTable
from batchroute.schema import COST_DTYPE

__all__ = [
    "FloatRates",
    "batch_saving",
    "failed_costs",
    "model_rates",
    "paid_apart",
    "price_attempts",
    "price_outcomes",
    "price_results",
    "rate_literals",
    "reprice_results",
    "usage_cost",
    "usage_cost_expr",
]

_MTOK = 1_000_000


def _formula(
    input_tokens: Any,
    output_tokens: Any,
    cached_tokens: Any,
    reasoning_tokens: Any,
    rate_input: Any,
    rate_cached: Any,
    rate_output: Any,
    rate_reasoning: Any,
) -> Any:
    """THE cost formula, in whatever form its arguments take: Decimal, float or polars.

    Every cost batchroute computes, exact or fast, scalar or vectorised, is this expression, so
    the forms cannot drift apart.
    """
    return (
        (input_tokens - cached_tokens) * rate_input
        + cached_tokens * rate_cached
        + (output_tokens - reasoning_tokens) * rate_output
        + reasoning_tokens * rate_reasoning
    )


def usage_cost(
    price: ModelPrice,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> Decimal:
    """The exact cost in USD of one request's usage at this price."""
    total: Decimal = _formula(
        input_tokens,
        output_tokens,
        cached_tokens,
        reasoning_tokens,
        price.input_per_mtok,
        price.cached_rate,
        price.output_per_mtok,
        price.reasoning_rate,
    )
    return total / _MTOK


def usage_cost_expr(
    *,
    input_tokens: pl.Expr,
    output_tokens: pl.Expr,
    cached_tokens: pl.Expr,
    reasoning_tokens: pl.Expr,
    rates: Iterable[pl.Expr],
) -> pl.Expr:
    """The vectorised `usage_cost`; null tokens count as 0, a null rate makes the cost null.

    `rates` are the input, cached-input, output and reasoning prices per 1M, in that order.
    """
    total: pl.Expr = _formula(
        input_tokens.fill_null(0),
        output_tokens.fill_null(0),
        cached_tokens.fill_null(0),
        reasoning_tokens.fill_null(0),
        *rates,
    )
    return (total / _MTOK).cast(COST_DTYPE)


@dataclass(frozen=True, slots=True)
class FloatRates:
    """A price as floats in USD per token: the fast form, for reservations and progress.

    Reports never use it; they price usage exactly with `usage_cost` or `usage_cost_expr`.
    """

    input: float
    cached_input: float
    output: float
    reasoning: float

    @classmethod
    def of(cls, price: ModelPrice) -> FloatRates:
        """The float rates of a price."""
        return cls(
            input=float(price.input_per_mtok) / _MTOK,
            cached_input=float(price.cached_rate) / _MTOK,
            output=float(price.output_per_mtok) / _MTOK,
            reasoning=float(price.reasoning_rate) / _MTOK,
        )

    def usage_usd(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> float:
        """The cost of reported usage, as a float."""
        cost: float = _formula(
            input_tokens,
            output_tokens,
            min(cached_tokens, input_tokens),
            min(reasoning_tokens, output_tokens),
            self.input,
            self.cached_input,
            self.output,
            self.reasoning,
        )
        return cost

    def worst_case_usd(self, *, prompt_tokens: int, output_tokens: int) -> float:
        """The most a request can cost: what the budget reserves before sending it.

        Whatever share of the prompt is cached and of the output is reasoning, no request costs
        more than every prompt token at the dearer input rate and every output token, up to the
        output limit sent, at the dearer output rate.
        """
        return prompt_tokens * max(self.input, self.cached_input) + output_tokens * max(
            self.output, self.reasoning
        )


def rate_literals(price: ModelPrice | None) -> list[pl.Expr]:
    """One price's four rates as literals (null when unpriced), for `usage_cost_expr`."""
    if price is None:
        return [pl.lit(None, dtype=COST_DTYPE)] * 4
    values = (price.input_per_mtok, price.cached_rate, price.output_per_mtok, price.reasoning_rate)
    return [pl.lit(value, dtype=COST_DTYPE) for value in values]


def model_rates(
    model: pl.Expr, prices: PriceTable, *, batch: pl.Expr | None = None
) -> list[pl.Expr]:
    """The four per-1M rates of each row's model (null for an unpriced one), for `usage_cost_expr`.

    Where `batch` is true, the row went through the Batch API and gets the model's batch rates
    (`ModelPrice.batch_price`). A `replace_strict` per rate rather than a join: the frame's other
    columns (answers, often most of its bytes) are never copied.
    """
    online = _rates(model, prices.prices)
    if batch is None:
        return online
    batched = _rates(model, {m: p.batch_price() for m, p in prices.prices.items()})
    flag = batch.fill_null(False)
    return [pl.when(flag).then(b).otherwise(o) for b, o in zip(batched, online, strict=True)]


def _rates(model: pl.Expr, rows: Mapping[str, ModelPrice]) -> list[pl.Expr]:
    rates = (
        {m: p.input_per_mtok for m, p in rows.items()},
        {m: p.cached_rate for m, p in rows.items()},
        {m: p.output_per_mtok for m, p in rows.items()},
        {m: p.reasoning_rate for m, p in rows.items()},
    )
    return [
        model.replace_strict(mapping, default=None, return_dtype=COST_DTYPE) for mapping in rates
    ]


def _cost_of(model: str, prices: PriceTable, *, batch: bool = True) -> pl.Expr:
    """The usage's cost on the row's model; at batch rates where its `batch` column is true."""
    return usage_cost_expr(
        input_tokens=pl.col("input_tokens"),
        output_tokens=pl.col("output_tokens"),
        cached_tokens=pl.col("cached_tokens"),
        reasoning_tokens=pl.col("reasoning_tokens"),
        rates=model_rates(pl.col(model), prices, batch=pl.col("batch") if batch else None),
    )


def _is_priced(model: str, prices: PriceTable) -> pl.Expr:
    return pl.col(model).is_in(list(prices.prices)).fill_null(False)


def price_attempts(attempts: pl.LazyFrame, prices: PriceTable) -> pl.LazyFrame:
    """Fill attempts' `cost_usd` and `priced` from their usage on their model."""
    batch = "batch" in attempts.collect_schema().names()  # runs before batch mode have none
    return attempts.with_columns(
        cost_usd=pl.when(_is_priced("model", prices)).then(_cost_of("model", prices, batch=batch)),
        priced=_is_priced("model", prices),
    )


def paid_apart(attempts: pl.LazyFrame) -> pl.Expr:
    """Attempts whose cost is no kept answer's: failed ones (an `error_type`) and judge calls."""
    failed = pl.col("error_type").is_not_null()
    if "judge" in attempts.collect_schema().names():  # attempts written before judges had none
        return failed | pl.col("judge").fill_null(False)
    return failed


def failed_costs(priced_attempts: pl.LazyFrame) -> pl.LazyFrame:
    """Per `row_key`, the summed cost of its failed attempts (those with an `error_type`) and of
    its judge calls (`paid_apart`), which results.parquet counts in `failed_cost_usd`.

    `_failed_cost` is null when any of those attempts was on an unpriced model.
    """
    return (
        priced_attempts.filter(paid_apart(priced_attempts))
        .group_by("row_key")
        .agg(
            _failed_cost=pl.when(pl.col("priced").all()).then(pl.col("cost_usd").sum()),
            _failed_priced=pl.col("priced").all(),
        )
    )


def _result_costs(
    prices: PriceTable, *, failed_cost: pl.Expr, failed_priced: pl.Expr, batch: bool = True
) -> dict[str, pl.Expr]:
    """A result row's cost columns, given its failed attempts' summed cost and whether priced."""
    is_ok = pl.col("status") == "ok"
    # An answer served by the response cache costs nothing new; its list cost, by the same
    # formula, is what the cache saved (a part written before the column existed: no hit).
    hit = pl.col("cache_hit").fill_null(False)
    list_cost = (
        pl.when(~is_ok)
        .then(pl.lit(0, dtype=COST_DTYPE))
        .when(_is_priced("model_used", prices))
        .then(_cost_of("model_used", prices, batch=batch))
    )
    return {
        "cost_usd": pl.when(hit).then(pl.lit(0, dtype=COST_DTYPE)).otherwise(list_cost),
        "cache_saved_usd": pl.when(hit).then(list_cost).otherwise(pl.lit(0, dtype=COST_DTYPE)),
        "failed_cost_usd": pl.when(failed_priced).then(failed_cost.fill_null(0).cast(COST_DTYPE)),
        "priced": (~is_ok | _is_priced("model_used", prices)) & failed_priced,
    }


def price_results(results: pl.DataFrame, failed: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """Fill results' cost columns, given `failed_costs` for (at least) their row keys.

    A row's `cost_usd` is its successful response's usage on `model_used`; rows that were never
    answered cost 0. A row touching an unpriced model has null costs there and `priced` false.
    """
    # join on the key alone, then lay the columns beside the results: no wide copy
    per_row = (
        results.lazy()
        .select("row_key")
        .join(failed.lazy(), on="row_key", how="left", maintain_order="left")
        .collect()
    )
    return results.with_columns(
        **_result_costs(
            prices,
            failed_cost=pl.lit(per_row["_failed_cost"]),
            failed_priced=pl.lit(per_row["_failed_priced"].fill_null(True)),
            batch="batch" in results.columns,
        )
    )


def reprice_results(
    results: pl.LazyFrame, priced_attempts: pl.LazyFrame, prices: PriceTable
) -> pl.LazyFrame:
    """`price_results` over a lazy frame of (some) result columns, from attempts priced alike.

    For a report that reprices a run: every cost is derived again from the recorded usage.
    """
    failed = failed_costs(priced_attempts)
    return (
        results.join(failed, on="row_key", how="left", maintain_order="left")
        .with_columns(
            **_result_costs(
                prices,
                failed_cost=pl.col("_failed_cost"),
                failed_priced=pl.col("_failed_priced").fill_null(True),
                batch="batch" in results.collect_schema().names(),
            )
        )
        .drop("_failed_cost", "_failed_priced")
    )


def price_outcomes(
    results: pl.DataFrame, attempts: pl.DataFrame, prices: PriceTable
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fill the cost columns of results and attempts, keeping their schemas and row order.

    `failed_cost_usd` is the sum of the row's failed attempts among `attempts`.
    """
    priced_attempts = price_attempts(attempts.lazy(), prices).collect()
    failed = failed_costs(priced_attempts.lazy()).collect()
    return price_results(results, failed, prices), priced_attempts.select(attempts.columns)


def batch_saving(results: pl.LazyFrame, prices: PriceTable) -> tuple[Decimal | None, int]:
    """What the rows answered through the Batch API saved against online prices, and their count.

    Their reported usage priced at the model's online rates, less what it cost at batch rates
    (`cost_usd`); None if one of them is unpriced. A run before batch mode has no `batch` column.
    """
    if "batch" not in results.collect_schema().names():
        return Decimal(0), 0
    batched = results.filter(pl.col("batch").fill_null(False) & (pl.col("status") == "ok"))
    totals = batched.select(
        online=_cost_of("model_used", prices, batch=False).sum(),
        actual=pl.col("cost_usd").sum(),
        unpriced=(~_is_priced("model_used", prices)).sum(),
        rows=pl.len(),
    ).collect()
    rows = int(totals["rows"][0])
    if int(totals["unpriced"][0]):
        return None, rows
    online, actual = totals["online"][0], totals["actual"][0]
    return (online or Decimal(0)) - (actual or Decimal(0)), rows
