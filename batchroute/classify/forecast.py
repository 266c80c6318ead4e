"""What a routing costs at the job's prices, before anything is sent.

Input tokens use the shared estimate of `batchroute.pricing.tokens` (a user message, plus the job's
constant system prompt if it has one); output tokens are the tier's `expected_output_tokens`, or
its `max_tokens`. Money is Decimal, as everywhere in batchroute.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import polars as pl

from batchroute.pricing.tokens import (
    CHARS_PER_TOKEN,
    PER_MESSAGE_TOKENS,
    PRIMING_TOKENS,
    count_text_tokens,
)
from batchroute.schema import COST_DTYPE

if TYPE_CHECKING:
    from batchroute.config import Job

__all__ = ["TierPrice", "forecast_by_tier", "input_tokens_expr", "tier_prices"]

_PER_MTOK = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class TierPrice:
    """The price of one request on a tier: its model's prices and the output it expects."""

    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    output_tokens: int
    priced: bool

    def cost_usd(self, *, input_tokens: int, rows: int) -> Decimal:
        """The cost of `rows` requests with `input_tokens` prompt tokens in total."""
        return (
            Decimal(input_tokens) * self.input_per_mtok
            + Decimal(rows * self.output_tokens) * self.output_per_mtok
        ) / _PER_MTOK

    def row_cost_expr(self, input_tokens: pl.Expr) -> pl.Expr:
        """One request's cost in USD, per row (Float64, for comparisons and search)."""
        in_rate = float(self.input_per_mtok) / 1e6
        fixed = self.output_tokens * float(self.output_per_mtok) / 1e6
        return input_tokens.cast(pl.Float64) * in_rate + fixed


def tier_prices(job: Job) -> dict[str, TierPrice]:
    """Each mapped tier's price, from `batchroute.pricing.prices.resolve_prices(job)`."""
    from batchroute.pricing.prices import resolve_prices

    table = resolve_prices(job)
    prices: dict[str, TierPrice] = {}
    for tier in job.config.tiers:
        model = job.config.tier(tier).model
        request = job.config.tier_request(tier)
        out = request.expected_output_tokens or request.max_tokens or 0
        price = table.get(model)
        prices[tier] = TierPrice(
            model=model,
            input_per_mtok=price.input_per_mtok if price else Decimal(0),
            output_per_mtok=price.output_per_mtok if price else Decimal(0),
            output_tokens=out,
            priced=price is not None,
        )
    return prices


def input_tokens_expr(job: Job) -> pl.Expr:
    """Each row's estimated prompt tokens, as `batchroute.pricing.tokens` counts a chat request.

    Unlike `plan.input_tokens_expr`, this needs only a `prompt` column: labelled sets have no
    `messages` or `system_prompt` columns.
    """
    text = pl.col("prompt").cast(pl.String).fill_null("")
    user = (text.str.len_chars().cast(pl.Int64) + (CHARS_PER_TOKEN - 1)) // CHARS_PER_TOKEN
    fixed = PRIMING_TOKENS + PER_MESSAGE_TOKENS
    system = job.config.input.system_prompt
    if system is not None:
        fixed += PER_MESSAGE_TOKENS + count_text_tokens(system)
    return user + fixed


def forecast_by_tier(frame: pl.DataFrame, *, job: Job) -> pl.DataFrame:
    """Rows, share, input tokens and cost per tier of a routed frame (cost as Decimal)."""
    prices = tier_prices(job)
    grouped = (
        frame.with_columns(input_tokens_expr(job).alias("input_tokens"))
        .group_by("tier")
        .agg(pl.len().alias("rows"), pl.col("input_tokens").sum())
        .sort("tier")
    )
    total = max(frame.height, 1)
    records = []
    for tier, rows, tokens in grouped.iter_rows():
        price = prices[tier]
        records.append(
            {
                "tier": tier,
                "model": price.model,
                "rows": rows,
                "share": rows / total,
                "input_tokens": tokens,
                "output_tokens": rows * price.output_tokens,
                "cost_usd": price.cost_usd(input_tokens=tokens, rows=rows),
            }
        )
    schema: dict[str, Any] = {
        "tier": pl.String,
        "model": pl.String,
        "rows": pl.Int64,
        "share": pl.Float64,
        "input_tokens": pl.Int64,
        "output_tokens": pl.Int64,
        "cost_usd": COST_DTYPE,
    }
    return pl.DataFrame(records, schema=schema)
