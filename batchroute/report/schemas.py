"""The stable schemas of a run's report files; finance queries them with DuckDB or polars.

Each is a public contract documented in the README: add columns at the end, never rename or
retype one. Money is `COST_DTYPE` (exact USD to 12 places); `price_source` and `price_sha256`
on every file name the prices that produced its figures.

Spend has three parts, shown apart everywhere: `cost_usd`, the answers kept in results.parquet;
`failed_cost_usd`, failed attempts; `superseded_cost_usd`, answers paid for and then replaced
(an earlier session's answers to rows a rerun sent again). `total_cost_usd` is their sum, and
equals the sum of attempts.parquet's `cost_usd` exactly. Every file also carries the run's
`run_id`, `job` and `started_at` (when the run's first session began), and `repriced`: whether
its figures were priced again from the recorded usage with prices other than the run's.

- `cost_report.parquet`: per tier and model (the model that answered, else the one requested).
  Spend on rows no longer in the results (superseded answers, and their failed attempts) is in
  rows with a null `tier`, per model.
- `cost_totals.parquet`: one row, each count, token and cost column the exact sum of the above.
- `tier_distribution.parquet`: rows and share per tier, how tiers were chosen, and the
  forecast beside the actual cost when the run directory holds a plan.parquet.
- `savings.parquet`: one row; the answered rows' tokens priced as they ran, on the baseline model
  and on the job's most expensive model for these tokens, with savings in USD and percent.
- `model_attempts.parquet`: HTTP attempts and failures per model.
"""

from __future__ import annotations

from typing import Any, Final

import polars as pl

from batchroute.schema import COST_DTYPE

__all__ = [
    "COST_REPORT_SCHEMA",
    "COST_TOTALS_SCHEMA",
    "MODEL_ATTEMPTS_SCHEMA",
    "REPORT_FILES",
    "SAVINGS_SCHEMA",
    "TIER_DISTRIBUTION_SCHEMA",
]

_TIME = pl.Datetime("us", "UTC")
PRICE_COLUMNS: dict[str, Any] = {"price_source": pl.String, "price_sha256": pl.String}
"""Where the prices came from, and the hash of the resolved prices."""

RUN_COLUMNS: dict[str, Any] = {
    "run_id": pl.String,
    "job": pl.String,
    "started_at": _TIME,
    "repriced": pl.Boolean,
}
"""Which run a row belongs to, so that many runs' files can be queried together."""

SUPERSEDED_COLUMNS: dict[str, Any] = {
    "superseded_cost_usd": COST_DTYPE,
    "superseded_rows": pl.Int64,
}
"""Answers paid for and replaced by a rerun: their cost, and how many rows they answered."""

COUNT_COLUMNS: dict[str, Any] = {
    "rows": pl.Int64,
    "ok": pl.Int64,
    "failed": pl.Int64,
    "skipped": pl.Int64,
    "fallback_rows": pl.Int64,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "cached_tokens": pl.Int64,
    "reasoning_tokens": pl.Int64,
    "failed_input_tokens": pl.Int64,
    "failed_output_tokens": pl.Int64,
    "cost_usd": COST_DTYPE,
    "failed_cost_usd": COST_DTYPE,
    "total_cost_usd": COST_DTYPE,
    "baseline_cost_usd": COST_DTYPE,
    "unpriced": pl.Boolean,
    "unpriced_rows": pl.Int64,
    "latency_p50_ms": pl.Float64,
    "latency_p95_ms": pl.Float64,
}

COST_REPORT_SCHEMA: Final = pl.Schema(
    {
        "tier": pl.String,
        "model": pl.String,
        **COUNT_COLUMNS,
        **PRICE_COLUMNS,
        **SUPERSEDED_COLUMNS,
        **RUN_COLUMNS,
    }
)
"""cost_report.parquet. Tokens are the answered rows' usage; failed_* are failed attempts'."""

COST_TOTALS_SCHEMA: Final = pl.Schema(
    {**COUNT_COLUMNS, **PRICE_COLUMNS, **SUPERSEDED_COLUMNS, **RUN_COLUMNS}
)
"""cost_totals.parquet: one row; latency quantiles are over all answered rows."""

TIER_DISTRIBUTION_SCHEMA: Final = pl.Schema(
    {
        "tier": pl.String,
        "model": pl.String,
        "rows": pl.Int64,
        "share": pl.Float64,
        "ok": pl.Int64,
        "failed": pl.Int64,
        "fallback_rows": pl.Int64,
        "metadata_rows": pl.Int64,
        "rule_rows": pl.Int64,
        "classifier_rows": pl.Int64,
        "default_rows": pl.Int64,
        "cost_usd": COST_DTYPE,
        "total_cost_usd": COST_DTYPE,
        "forecast_rows": pl.Int64,
        "forecast_cost_usd": COST_DTYPE,
        **PRICE_COLUMNS,
        **SUPERSEDED_COLUMNS,
        **RUN_COLUMNS,
    }
)
"""tier_distribution.parquet; forecast_* are null when the run has no plan.parquet. Spend on
rows no longer in the results is in a row with a null `tier`."""

SAVINGS_SCHEMA: Final = pl.Schema(
    {
        "job": pl.String,
        "run_dir": pl.String,
        "started_at": _TIME,
        "finished_at": _TIME,
        "rows": pl.Int64,
        "ok": pl.Int64,
        "failed": pl.Int64,
        "skipped": pl.Int64,
        "actual_cost_usd": COST_DTYPE,
        "failed_cost_usd": COST_DTYPE,
        "total_cost_usd": COST_DTYPE,
        "baseline_model": pl.String,
        "baseline_cost_usd": COST_DTYPE,
        "savings_vs_baseline_usd": COST_DTYPE,
        "savings_vs_baseline_pct": pl.Float64,
        "strongest_model": pl.String,
        "strongest_cost_usd": COST_DTYPE,
        "savings_vs_strongest_usd": COST_DTYPE,
        "savings_vs_strongest_pct": pl.Float64,
        "forecast_cost_usd": COST_DTYPE,
        "forecast_delta_usd": COST_DTYPE,
        "unpriced": pl.Boolean,
        "budget_hit": pl.Boolean,
        **PRICE_COLUMNS,
        **SUPERSEDED_COLUMNS,
        "run_id": pl.String,
        "repriced": pl.Boolean,
        "batch_rows": pl.Int64,
        "batch_saving_usd": COST_DTYPE,
        "cache_hits": pl.Int64,
        "cache_hit_rate": pl.Float64,
        "cache_saved_usd": COST_DTYPE,
        "escalated_rows": pl.Int64,
        "verify_rejected_cost_usd": COST_DTYPE,
        "escalation_cost_usd": COST_DTYPE,
        "checks_and_escalations_cost_usd": COST_DTYPE,
        "judge_cost_usd": COST_DTYPE,
    }
)
"""savings.parquet: one row. The counterfactuals (`baseline_cost_usd`, `strongest_cost_usd`)
price the tokens of the answers kept, those `actual_cost_usd` prices as routed. The savings are
counted on total spend: `savings_vs_*_usd` = counterfactual − `total_cost_usd`, where the total
is `actual_cost_usd` + `failed_cost_usd` + `superseded_cost_usd`. `batch_saving_usd` is what the
`batch_rows` answered through the Batch API saved against their models' online prices (a part of
the saving beside routing's, already in `total_cost_usd`). Answers served by the response cache
count at their list cost in the counterfactual comparison (`total_cost_usd` + `cache_saved_usd`),
so routing's saving and the cache's (`cache_saved_usd`, over `cache_hits` answers,
`cache_hit_rate` of those kept) are told apart."""

MODEL_ATTEMPTS_SCHEMA: Final = pl.Schema(
    {
        "model": pl.String,
        "attempts": pl.Int64,
        "failed_attempts": pl.Int64,
        "rate_limited": pl.Int64,
        "failure_rate": pl.Float64,
        "cost_usd": COST_DTYPE,
        **PRICE_COLUMNS,
        **RUN_COLUMNS,
    }
)
"""model_attempts.parquet: every HTTP attempt per model, from attempts.parquet."""

REPORT_FILES: Final = {
    "cost_report": COST_REPORT_SCHEMA,
    "cost_totals": COST_TOTALS_SCHEMA,
    "tier_distribution": TIER_DISTRIBUTION_SCHEMA,
    "savings": SAVINGS_SCHEMA,
    "model_attempts": MODEL_ATTEMPTS_SCHEMA,
}
"""Each report's file stem and schema."""
