"""The forecast before spending: classified rows → tokens → cost per tier, and on the baseline.

Input tokens are estimated from the text with `batchroute.pricing.tokens`, the same estimate the
simulator reports, so a rehearsal on the simulator matches its forecast exactly. Output tokens are
the tier's `expected_output_tokens`, else its `max_tokens`. Each tier is priced on its own model
(the first of its chain: fallbacks are not forecast) and, for comparison, on the baseline model.
Rows that are invalid are never sent, so they are counted apart and cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, cast

import polars as pl

from batchroute.config import TIERS, Job, JobConfig
from batchroute.errors import OutputError
from batchroute.pricing.costs import model_rates, rate_literals, usage_cost_expr
from batchroute.pricing.prices import PriceTable
from batchroute.pricing.tokens import (
    CHARS_PER_TOKEN,
    PER_MESSAGE_TOKENS,
    PRIMING_TOKENS,
    messages_tokens_expr,
)
from batchroute.schema import COST_DTYPE
from batchroute.store.rundir import atomic_file

__all__ = [
    "PLAN_SCHEMA",
    "ForecastAccumulator",
    "ForecastTotals",
    "baseline_model",
    "forecast_job",
    "forecast_totals",
    "input_tokens_expr",
    "read_plan",
    "write_plan",
]

DEFAULT_OUTPUT_TOKENS: Final = 1024
"""What a response is assumed to cost when a tier sets neither expected_output_tokens nor
max_tokens."""

PLAN_SCHEMA: Final = pl.Schema(
    cast(
        dict[str, Any],
        {
            "tier": pl.String,
            "model": pl.String,
            "rows": pl.Int64,
            "share": pl.Float64,
            "input_tokens": pl.Int64,
            "output_tokens": pl.Int64,
            "forecast_cost_usd": COST_DTYPE,
            "priced": pl.Boolean,
            "baseline_model": pl.String,
            "baseline_cost_usd": COST_DTYPE,
            "price_source": pl.String,
            "price_sha256": pl.String,
        },
    )
)
"""plan.parquet: one row per tier that has rows, in tier order."""


def baseline_model(config: JobConfig) -> str:
    """The model every row is priced on for comparison: `baseline_model`, else `standard`'s."""
    return config.baseline_model or config.tier("standard").model


def _text_tokens(text: pl.Expr) -> pl.Expr:
    return (text.str.len_chars().cast(pl.Int64) + (CHARS_PER_TOKEN - 1)) // CHARS_PER_TOKEN


def input_tokens_expr(*, system_prompt: str | None = None) -> pl.Expr:
    """Estimated prompt tokens of each row: its `messages`, else its system prompt and prompt.

    `system_prompt` is the job's constant one, used where the row has none of its own.
    """
    system = pl.col("system_prompt")
    if system_prompt is not None:
        system = system.fill_null(pl.lit(system_prompt))
    built = (
        PRIMING_TOKENS
        + PER_MESSAGE_TOKENS
        + _text_tokens(pl.col("prompt").fill_null(""))
        + pl.when(system.is_not_null()).then(PER_MESSAGE_TOKENS + _text_tokens(system)).otherwise(0)
    )
    return (
        pl.when(pl.col("messages").is_not_null())
        .then(messages_tokens_expr(pl.col("messages")))
        .otherwise(built)
        .cast(pl.Int64)
    )


class ForecastAccumulator:
    """Adds up classified batches into a per-tier forecast, holding only per-tier counts."""

    def __init__(self, job: Job, prices: PriceTable) -> None:
        self.job = job
        self.prices = prices
        self.invalid_rows = 0
        self._rows: dict[str, int] = {}
        self._input_tokens: dict[str, int] = {}
        self._tokens = input_tokens_expr(system_prompt=job.config.input.system_prompt)

    def add(self, classified: pl.DataFrame) -> None:
        """Count one classified batch (INPUT_SCHEMA columns plus `tier`)."""
        valid = pl.col("invalid_reason").is_null()
        self.invalid_rows += classified.height - int(classified.select(valid.sum()).item())
        per_tier = (
            classified.lazy()
            .filter(valid)
            .group_by("tier")
            .agg(rows=pl.len(), input_tokens=self._tokens.sum())
            .collect()
        )
        for tier, rows, tokens in per_tier.iter_rows():
            self._rows[tier] = self._rows.get(tier, 0) + rows
            self._input_tokens[tier] = self._input_tokens.get(tier, 0) + tokens

    def _model(self, tier: str) -> str:
        config = self.job.config
        return config.tier(tier if tier in config.tiers else "standard").model

    def _output_tokens(self, tier: str) -> int:
        request = self.job.config.tier_request(
            tier if tier in self.job.config.tiers else "standard"
        )
        return request.expected_output_tokens or request.max_tokens or DEFAULT_OUTPUT_TOKENS

    def frame(self) -> pl.DataFrame:
        """The forecast per tier, in PLAN_SCHEMA."""
        tiers = sorted(self._rows, key=lambda t: (TIERS.index(t) if t in TIERS else len(TIERS), t))
        total_rows = sum(self._rows.values())
        baseline = baseline_model(self.job.config)
        counts = pl.DataFrame(
            {
                "tier": tiers,
                "model": [self._model(t) for t in tiers],
                "rows": [self._rows[t] for t in tiers],
                "input_tokens": [self._input_tokens[t] for t in tiers],
                "output_tokens": [self._rows[t] * self._output_tokens(t) for t in tiers],
            },
            schema={
                "tier": pl.String,
                "model": pl.String,
                "rows": pl.Int64,
                "input_tokens": pl.Int64,
                "output_tokens": pl.Int64,
            },
        )
        tokens = {
            "input_tokens": pl.col("input_tokens"),
            "output_tokens": pl.col("output_tokens"),
            "cached_tokens": pl.lit(0, dtype=pl.Int64),
            "reasoning_tokens": pl.lit(0, dtype=pl.Int64),
        }
        return (
            counts.with_columns(
                share=pl.col("rows") / max(total_rows, 1),
                forecast_cost_usd=usage_cost_expr(
                    **tokens, rates=model_rates(pl.col("model"), self.prices)
                ),
                priced=pl.col("model").is_in(list(self.prices.prices)),
                baseline_model=pl.lit(baseline),
                baseline_cost_usd=usage_cost_expr(
                    **tokens, rates=rate_literals(self.prices.get(baseline))
                ),
                price_source=pl.lit(self.prices.source),
                price_sha256=pl.lit(self.prices.sha256),
            )
            .select(PLAN_SCHEMA.names())
            .cast(PLAN_SCHEMA)
        )

    def __repr__(self) -> str:
        return (
            f"<ForecastAccumulator {self.job.name!r} [rows: {sum(self._rows.values())}, "
            f"invalid: {self.invalid_rows}]>"
        )


@dataclass(frozen=True, slots=True)
class ForecastTotals:
    """A forecast's grand totals; costs are None when some rows' model is unpriced."""

    rows: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None
    baseline_cost_usd: Decimal | None
    unpriced: bool

    @property
    def savings_usd(self) -> Decimal | None:
        """What the routing saves against the baseline, if both are known."""
        if self.cost_usd is None or self.baseline_cost_usd is None:
            return None
        return self.baseline_cost_usd - self.cost_usd


def forecast_totals(plan: pl.DataFrame) -> ForecastTotals:
    """Sum a plan frame; a cost total is None if any of its rows is unpriced."""
    unpriced = not bool(plan["priced"].all())
    totals = plan.select(
        pl.col("rows", "input_tokens", "output_tokens").sum(),
        pl.col("forecast_cost_usd").sum(),
        pl.when(pl.col("baseline_cost_usd").null_count() == 0).then(
            pl.col("baseline_cost_usd").sum()
        ),
    ).row(0)
    return ForecastTotals(
        rows=totals[0],
        input_tokens=totals[1],
        output_tokens=totals[2],
        cost_usd=None if unpriced else totals[3],
        baseline_cost_usd=totals[4],
        unpriced=unpriced,
    )


def write_plan(plan: pl.DataFrame, directory: Path) -> Path:
    """Write plan.parquet atomically into `directory`; `OutputError` if it cannot."""
    path = directory / "plan.parquet"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            plan.write_parquet(handle)
    except OSError as exc:
        raise OutputError(
            f"cannot write plan.parquet ({exc.strerror or exc})", path=directory
        ) from None
    return path


def read_plan(run_dir: Path) -> pl.DataFrame | None:
    """The plan.parquet of a run directory, or None if there is none."""
    path = run_dir / "plan.parquet"
    return pl.read_parquet(path) if path.is_file() else None


def forecast_job(job: Job, prices: PriceTable, *, limit: int | None = None) -> ForecastAccumulator:
    """Read and classify the job's input batch by batch (no API call) and forecast it.

    `limit` forecasts only the first rows, as `run --limit` would send them.
    """
    from batchroute.classify import build_router
    from batchroute.dataset import open_dataset

    router = build_router(job)
    forecast = ForecastAccumulator(job, prices)
    remaining = limit
    for batch in open_dataset(job).batches(batch_rows=job.config.run.batch_rows):
        rows: pl.DataFrame = batch.rows
        if remaining is not None:
            rows = rows.head(remaining)
            remaining -= rows.height
        if rows.height:
            forecast.add(router.classify(rows))
        if remaining is not None and remaining <= 0:
            break
    return forecast
