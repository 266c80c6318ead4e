"""The forecast before spending: classified rows → tokens → cost per tier, and on the baseline.

Input tokens are estimated from the text with `batchroute.pricing.tokens`, the same estimate the
simulator reports, so a rehearsal on the simulator matches its forecast exactly. Output tokens are
the tier's `expected_output_tokens`, else its output limit, else `DEFAULT_OUTPUT_TOKENS`
(`tokens.expected_output_tokens`). Each tier is priced on its own model (the first of its chain:
fallbacks are not forecast) and, for comparison, on the baseline model. Rows that are invalid are
never sent, so they are counted apart and cost nothing. So are rows the response cache would
answer, when `plan` looked them up (`cache_hits`): they cost $0, outside the forecast.

This is the one forecast: `plan` and the run (on either engine) write it per tier
(`ForecastAccumulator`), and the router's calibration forecasts a labelled set through the same
accumulator (`forecast_by_tier`); evaluation prices single tiers with `tier_prices`. All go
through the one cost formula of `batchroute.pricing.costs`. Reading
and classifying a job's input to forecast it is `engines.forecast.forecast_job`'s, and writing
plan.parquet is `store.plan`'s: pricing reads no file and routes no row.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, cast

import polars as pl

from batchroute.config import TIERS, Job, JobConfig
from batchroute.pricing.costs import model_rates, rate_literals, usage_cost, usage_cost_expr
from batchroute.pricing.prices import ModelPrice, PriceTable, resolve_prices
from batchroute.pricing.tokens import (
    PER_MESSAGE_TOKENS,
    PRIMING_TOKENS,
    count_text_tokens,
    expected_output_tokens,
    messages_tokens_expr,
    text_tokens_expr,
)
from batchroute.schema import COST_DTYPE, INPUT_SCHEMA

__all__ = [
    "PLAN_SCHEMA",
    "ForecastAccumulator",
    "ForecastTotals",
    "TierPrice",
    "baseline_model",
    "forecast_by_tier",
    "forecast_totals",
    "input_tokens_expr",
    "is_overrun",
    "prompt_tokens_expr",
    "reprice_plan",
    "tier_output_tokens",
    "tier_prices",
    "verification_forecast",
]

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
            "judge_cost_usd": COST_DTYPE,
            "escalation_cost_usd": COST_DTYPE,
            "cache_hits": pl.Int64,
        },
    )
)
"""plan.parquet: one row per tier that has rows, in tier order. `forecast_cost_usd` includes
the verification forecast, `judge_cost_usd` + `escalation_cost_usd` (`verification_forecast`).
`rows` are the rows to send; `cache_hits` the tier's rows the response cache would answer, which
`rows`, the tokens and both costs leave out (0 when nobody looked: a run's own plan)."""


def baseline_model(config: JobConfig) -> str:
    """The model every row is priced on for comparison: `baseline_model`, else `standard`'s."""
    return config.baseline_model or config.tier("standard").model


def tier_output_tokens(config: JobConfig, tier: str) -> int:
    """The output tokens a request of this tier is forecast to cost (an unmapped tier: standard)."""
    request = config.tier_request(tier if tier in config.tiers else "standard")
    return expected_output_tokens(
        expected=request.expected_output_tokens, body=request.body_fields()
    )


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
        + text_tokens_expr(pl.col("prompt"))
        + pl.when(system.is_not_null())
        .then(PER_MESSAGE_TOKENS + text_tokens_expr(system))
        .otherwise(0)
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
        self._cache_hits: dict[str, int] = {}
        self._input_tokens: dict[str, int] = {}
        self._tokens = input_tokens_expr(system_prompt=job.config.input.system_prompt)

    def add(self, classified: pl.DataFrame, *, cached: pl.Series | None = None) -> None:
        """Count one classified batch (INPUT_SCHEMA columns plus `tier`).

        `cached` marks, row by row, the valid rows the response cache would answer: they are
        counted as cache hits, not forecast.
        """
        valid = pl.col("invalid_reason").is_null()
        self.invalid_rows += classified.height - int(classified.select(valid.sum()).item())
        if cached is not None:
            hit = valid & pl.lit(cached, dtype=pl.Boolean)
            counted = classified.filter(hit).group_by("tier").len()
            for tier, hits in counted.iter_rows():
                self._cache_hits[tier] = self._cache_hits.get(tier, 0) + hits
            valid = valid & ~pl.lit(cached, dtype=pl.Boolean)
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
        return tier_output_tokens(self.job.config, tier)

    def frame(self) -> pl.DataFrame:
        """The forecast per tier, in PLAN_SCHEMA."""
        tiers = sorted(
            self._rows.keys() | self._cache_hits.keys(),
            key=lambda t: (TIERS.index(t) if t in TIERS else len(TIERS), t),
        )
        total_rows = sum(self._rows.values()) + sum(self._cache_hits.values())
        rows = {t: self._rows.get(t, 0) for t in tiers}
        input_tokens = {t: self._input_tokens.get(t, 0) for t in tiers}
        baseline = baseline_model(self.job.config)
        counts = pl.DataFrame(
            {
                "tier": tiers,
                "model": [self._model(t) for t in tiers],
                "rows": [rows[t] for t in tiers],
                # Divided here, not by polars (which multiplies by 1/total): 18/150 is 0.12.
                "share": [
                    (rows[t] + self._cache_hits.get(t, 0)) / max(total_rows, 1) for t in tiers
                ],
                "input_tokens": [input_tokens[t] for t in tiers],
                "output_tokens": [rows[t] * self._output_tokens(t) for t in tiers],
                "cache_hits": [self._cache_hits.get(t, 0) for t in tiers],
            },
            schema={
                "tier": pl.String,
                "model": pl.String,
                "rows": pl.Int64,
                "share": pl.Float64,
                "input_tokens": pl.Int64,
                "output_tokens": pl.Int64,
                "cache_hits": pl.Int64,
            },
        )
        return (
            _priced_forecast(counts, self.job.config, self.prices)
            .with_columns(
                baseline_model=pl.lit(baseline),
                baseline_cost_usd=usage_cost_expr(
                    **_PLAN_TOKENS, rates=rate_literals(self.prices.get(baseline))
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
            f"cache hits: {sum(self._cache_hits.values())}, invalid: {self.invalid_rows}]>"
        )


_PLAN_TOKENS: Final = {
    "input_tokens": pl.col("input_tokens"),
    "output_tokens": pl.col("output_tokens"),
    "cached_tokens": pl.lit(0, dtype=pl.Int64),
    "reasoning_tokens": pl.lit(0, dtype=pl.Int64),
}


def _answers_cost(config: JobConfig, prices: PriceTable) -> pl.Expr:
    """The forecast answers' cost on each tier's model; batch-mode tiers at batch prices."""
    batched = pl.col("tier").is_in([t for t in config.tiers if config.tier_mode(t) == "batch"])
    return usage_cost_expr(
        **_PLAN_TOKENS, rates=model_rates(pl.col("model"), prices, batch=batched)
    )


def _priced_forecast(plan: pl.DataFrame, config: JobConfig, prices: PriceTable) -> pl.DataFrame:
    """A plan's per-tier counts (`tier`, `model`, `rows`, `input_tokens`, `output_tokens`) with
    its costs: `judge_cost_usd` and `escalation_cost_usd` (`verification_forecast`), and
    `forecast_cost_usd`, the answers plus both."""
    verifying = [
        verification_forecast(config, prices, tier=tier, rows=rows, input_tokens=tokens)
        for tier, rows, tokens in plan.select("tier", "rows", "input_tokens").iter_rows()
    ]
    return plan.with_columns(
        pl.Series("judge_cost_usd", [v[0] for v in verifying], dtype=COST_DTYPE),
        pl.Series("escalation_cost_usd", [v[1] for v in verifying], dtype=COST_DTYPE),
    ).with_columns(
        forecast_cost_usd=_answers_cost(config, prices)
        + pl.col("judge_cost_usd").fill_null(0)
        + pl.col("escalation_cost_usd").fill_null(0),
        priced=pl.col("model").is_in(list(prices.prices)),
    )


def reprice_plan(plan: pl.DataFrame, config: JobConfig, prices: PriceTable) -> pl.DataFrame:
    """A plan.parquet's forecast priced again with `prices`, from its own token counts.

    The verification part (the judge's calls and the escalations) is forecast again from the
    job's checks, as `plan` would with these prices. A plan written before verification existed
    has none, and gets none. The other columns are kept as they were.
    """
    if "judge_cost_usd" not in plan.columns:
        return plan.with_columns(
            forecast_cost_usd=_answers_cost(config, prices),
            priced=pl.col("model").is_in(list(prices.prices)),
        )
    return _priced_forecast(plan, config, prices).select(plan.columns)


def verification_forecast(
    config: JobConfig, prices: PriceTable, *, tier: str, rows: int, input_tokens: int
) -> tuple[Decimal, Decimal]:
    """What checking a tier's rows is forecast to cost: (the judge's calls, escalations).

    `verify.expected_failure_rate` of the checked rows are assumed to fail once and climb one
    tier, where they cost that tier's output; with a `judge` check, every answer (the escalated
    ones too) is graded once, its prompt being the row, the answer and the judge's template.
    An unpriced model prices at 0 here: `plan` already flags it.
    """
    name = tier if tier in config.tiers else "standard"
    checks = config.checks(name)
    if not checks or not rows:
        return Decimal(0), Decimal(0)
    verify = config.verify
    path = config.escalation_path(name)[: verify.max_escalations]
    climbing = verify.expected_failure_rate if path else 0.0
    escalation = Decimal(0)
    if path:
        above = prices.get(config.tier(path[0]).model)
        if above is not None:
            escalation = usage_cost(
                above,
                input_tokens=round(input_tokens * climbing),
                output_tokens=round(rows * climbing * tier_output_tokens(config, path[0])),
            )
    judge = verify.judge
    judged = next((c for c in checks if c.check == "judge"), None)
    price = prices.get(judge.model) if judge is not None else None
    if judge is None or judged is None or price is None:
        return Decimal(0), escalation
    calls = rows * (1 + climbing)
    template = count_text_tokens(judge.prompt) + count_text_tokens(judged.rubric or judge.rubric)
    per_call = template + tier_output_tokens(config, name)
    judging = usage_cost(
        price,
        input_tokens=round(input_tokens * (1 + climbing) + calls * per_call),
        output_tokens=round(calls * judge.expected_output_tokens),
    )
    return judging, escalation


@dataclass(frozen=True, slots=True)
class ForecastTotals:
    """A forecast's grand totals; costs are None when some rows' model is unpriced."""

    rows: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None
    baseline_cost_usd: Decimal | None
    unpriced: bool
    cache_hits: int = 0
    """Rows the response cache would answer, outside every other figure here."""

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
        cache_hits=int(plan["cache_hits"].sum()) if "cache_hits" in plan.columns else 0,
    )


def is_overrun(
    spent_usd: float | Decimal, forecast_usd: float | Decimal, *, threshold_pct: float
) -> bool:
    """Whether spend passed a positive forecast by more than `threshold_pct` percent of it."""
    forecast = float(forecast_usd)
    return forecast > 0 and float(spent_usd) > forecast * (1 + threshold_pct / 100)


def prompt_tokens_expr(job: Job) -> pl.Expr:
    """Each row's estimated prompt tokens from a `prompt` column alone (labelled sets).

    The row is sent as one user message, after the job's constant system prompt if it has one:
    the same count `input_tokens_expr` gives a row without `messages` or `system_prompt`.
    """
    fixed = PRIMING_TOKENS + PER_MESSAGE_TOKENS
    system = job.config.input.system_prompt
    if system is not None:
        fixed += PER_MESSAGE_TOKENS + count_text_tokens(system)
    return text_tokens_expr(pl.col("prompt").cast(pl.String)) + fixed


@dataclass(frozen=True, slots=True)
class TierPrice:
    """The price of one request on a tier: its model's price and the output it expects.

    An unpriced model (`price` None) is flagged by `priced` and costs 0 here, so that a
    comparison between tiers can still be drawn; callers report it as unpriced.
    """

    model: str
    price: ModelPrice | None
    output_tokens: int

    @property
    def priced(self) -> bool:
        return self.price is not None

    def cost_usd(self, *, input_tokens: int, rows: int) -> Decimal:
        """The exact cost of `rows` requests with `input_tokens` prompt tokens in total."""
        if self.price is None:
            return Decimal(0)
        return usage_cost(
            self.price, input_tokens=input_tokens, output_tokens=rows * self.output_tokens
        )

    def unit_cost_usd(self, input_tokens: float) -> float:
        """One request's cost with this many prompt tokens, as a float (for search weights)."""
        if self.price is None:
            return 0.0
        return float(usage_cost(self.price, input_tokens=0, output_tokens=self.output_tokens)) + (
            input_tokens * float(usage_cost(self.price, input_tokens=1, output_tokens=0))
        )

    def row_cost_expr(self, input_tokens: pl.Expr) -> pl.Expr:
        """One request's cost in USD, per row (Float64, for comparisons)."""
        if self.price is None:
            return pl.lit(0.0)
        return usage_cost_expr(
            input_tokens=input_tokens,
            output_tokens=pl.lit(self.output_tokens, dtype=pl.Int64),
            cached_tokens=pl.lit(0, dtype=pl.Int64),
            reasoning_tokens=pl.lit(0, dtype=pl.Int64),
            rates=rate_literals(self.price),
        ).cast(pl.Float64)


def tier_prices(job: Job, prices: PriceTable | None = None) -> dict[str, TierPrice]:
    """Each mapped tier's price (the job's resolved prices unless `prices` is given)."""
    table = resolve_prices(job) if prices is None else prices
    return {
        tier: TierPrice(
            model=(model := job.config.tier(tier).model),
            price=table.get(model),
            output_tokens=tier_output_tokens(job.config, tier),
        )
        for tier in job.config.tiers
    }


def forecast_by_tier(frame: pl.DataFrame, *, job: Job) -> pl.DataFrame:
    """Rows, share, input tokens and exact cost per tier of a routed frame with a `prompt`.

    The one forecast over a labelled set (`calibrate`): the frame's rows go through
    `ForecastAccumulator` as a run's rows would (each sent as its prompt after the job's system
    prompt), whichever engine later runs the job. `forecast_cost_usd` is plan.parquet's figure
    for the same rows; `cost_usd` is its answers alone (batch-mode tiers at batch prices),
    without the checks' forecast (`verification_forecast`).
    """
    forecast = ForecastAccumulator(job, resolve_prices(job))
    forecast.add(
        frame.select(
            pl.col("tier").cast(pl.String),
            pl.col("prompt").cast(pl.String),
            pl.lit(None, dtype=INPUT_SCHEMA["messages"]).alias("messages"),
            pl.lit(None, dtype=pl.String).alias("system_prompt"),
            pl.lit(None, dtype=pl.String).alias("invalid_reason"),
        )
    )
    return forecast.frame().select(
        "tier",
        "model",
        "rows",
        "share",
        "input_tokens",
        "output_tokens",
        (pl.col("forecast_cost_usd") - pl.col("judge_cost_usd") - pl.col("escalation_cost_usd"))
        .cast(COST_DTYPE)
        .alias("cost_usd"),
        "forecast_cost_usd",
    )
