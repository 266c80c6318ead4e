"""A run's Parquet reports, built lazily from results.parquet and attempts.parquet.

The files and their schemas are in `batchroute.report.schemas`.

Only the needed columns are scanned and only aggregates are collected, so a results file of
millions of rows is never loaded whole. Costs are exact decimals; an unpriced group's cost is
null and flagged, and totals add up only the priced groups, flagged `unpriced`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl

from batchroute.config import TIERS, Job
from batchroute.errors import OutputError
from batchroute.pricing.costs import (
    batch_saving,
    paid_apart,
    price_attempts,
    rate_literals,
    reprice_results,
    usage_cost,
    usage_cost_expr,
)
from batchroute.pricing.forecast import baseline_model, reprice_plan
from batchroute.pricing.prices import PriceTable
from batchroute.report.schemas import (
    COST_REPORT_SCHEMA,
    COST_TOTALS_SCHEMA,
    COUNT_COLUMNS,
    MODEL_ATTEMPTS_SCHEMA,
    REPORT_FILES,
    RUN_COLUMNS,
    SAVINGS_SCHEMA,
    SUPERSEDED_COLUMNS,
    TIER_DISTRIBUTION_SCHEMA,
)
from batchroute.report.verification import add_verification_costs
from batchroute.schema import COST_DTYPE, Status
from batchroute.store.manifest import read_manifest
from batchroute.store.plan import read_plan

__all__ = [
    "ReportSummary",
    "load_summary",
    "write_reports",
]

_RESULT_COLUMNS = (
    "row_key",
    "tier",
    "tier_source",
    "model_requested",
    "model_used",
    "status",
    "fallback_depth",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "failed_input_tokens",
    "failed_output_tokens",
    "cost_usd",
    "failed_cost_usd",
    "priced",
    "latency_ms",
    "started_at",
    "finished_at",
    "cache_hit",
    "cache_saved_usd",
)
_TOKENS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")


@dataclass(frozen=True)
class ReportSummary:
    """A run's reports as frames: what the CLI prints and the HTML report draws."""

    run_dir: Path
    cost_report: pl.DataFrame
    cost_totals: pl.DataFrame
    tier_distribution: pl.DataFrame
    savings: pl.DataFrame
    model_attempts: pl.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def cost_usd(self) -> Decimal:
        """What the answers kept in the results cost (the priced ones, if some are unpriced)."""
        return Decimal(self.cost_totals["cost_usd"][0] or 0)

    @property
    def failed_cost_usd(self) -> Decimal:
        """What every failed attempt cost, in any session (priced ones only)."""
        return Decimal(self.cost_totals["failed_cost_usd"][0] or 0)

    @property
    def superseded_cost_usd(self) -> Decimal:
        """What answers replaced by a rerun cost (priced ones only)."""
        return Decimal(self.cost_totals["superseded_cost_usd"][0] or 0)

    @property
    def total_cost_usd(self) -> Decimal:
        """Everything spent: answers kept + answers superseded + failed attempts (priced ones)."""
        return self.cost_usd + self.failed_cost_usd + self.superseded_cost_usd

    @property
    def repriced(self) -> bool:
        """Whether the figures were priced again with prices other than the run's."""
        return bool(self.savings["repriced"][0])

    @property
    def budget_hit(self) -> bool:
        return bool(self.savings["budget_hit"][0])

    @property
    def unpriced(self) -> bool:
        return bool(self.savings["unpriced"][0])

    def __repr__(self) -> str:
        return f"<ReportSummary {str(self.run_dir)!r} [{self.cost_totals['rows'][0]} rows]>"


def _sum_if_complete(column: str) -> pl.Expr:
    """The sum of a cost column, or null if any of its values is null (unpriced)."""
    return pl.when(pl.col(column).null_count() == 0).then(pl.col(column).sum()).cast(COST_DTYPE)


_SOURCES = ("metadata", "rule", "classifier", "default")


def _row_indicators() -> dict[str, pl.Expr]:
    """Per-row columns whose plain sums give every figure: one streaming pass, no row kept."""
    ok = pl.col("status") == Status.OK
    compared = ok & pl.col("cost_usd").is_not_null()

    def count(flag: pl.Expr) -> pl.Expr:
        return flag.fill_null(False).cast(pl.Int64)

    return {
        "ok": count(ok),
        "failed": count(pl.col("status") == Status.FAILED),
        "skipped": count(pl.col("status").str.starts_with("skipped")),
        "fallback_rows": count(pl.col("fallback_depth") > 0),
        **{t: pl.when(ok).then(pl.col(t)).otherwise(0) for t in _TOKENS},
        **{f"compared_{t}": pl.when(compared).then(pl.col(t)).otherwise(0) for t in _TOKENS},
        "unpriced_rows": count(~pl.col("priced").fill_null(False)),
        "_cost_nulls": count(pl.col("cost_usd").is_null()),
        "_failed_cost_nulls": count(pl.col("failed_cost_usd").is_null()),
        **{f"{source}_rows": count(pl.col("tier_source") == source) for source in _SOURCES},
    }


@functools.cache
def _summed() -> tuple[str, ...]:
    """The row indicators summed as they are (named once: building the indicators costs a few
    hundred expressions, issue 15)."""
    return tuple(c for c in _row_indicators() if c not in {"_cost_nulls", "_failed_cost_nulls"})


def _group_sums(*keys: str) -> list[pl.Expr]:
    """Sums over rows (or over finer groups: the same expressions re-aggregate exactly)."""
    summed = _summed()
    return [
        pl.col("rows").sum().cast(pl.Int64) if keys else pl.len().cast(pl.Int64).alias("rows"),
        *(pl.col(c).sum().cast(pl.Int64) for c in summed),
        pl.col("failed_input_tokens", "failed_output_tokens").sum().cast(pl.Int64),
        pl.col("cost_usd", "failed_cost_usd").sum().cast(COST_DTYPE),
        pl.col("_cost_nulls", "_failed_cost_nulls").sum().cast(pl.Int64),
        pl.col("started_at").min(),
        pl.col("finished_at").max(),
    ]


def _null_if_unpriced() -> list[pl.Expr]:
    nulls = ("_cost_nulls", "_failed_cost_nulls", "_superseded_nulls")
    return [
        pl.when(pl.col("_cost_nulls") == 0).then(pl.col("cost_usd")).alias("cost_usd"),
        pl.when(pl.col("_failed_cost_nulls") == 0)
        .then(pl.col("failed_cost_usd"))
        .alias("failed_cost_usd"),
        pl.when(pl.col("_superseded_nulls") == 0)
        .then(pl.col("superseded_cost_usd"))
        .alias("superseded_cost_usd"),
        ((pl.col("unpriced_rows") > 0) | pl.any_horizontal(pl.col(n) > 0 for n in nulls)).alias(
            "unpriced"
        ),
    ]


def _superseded_sums() -> list[pl.Expr]:
    return [
        pl.col("superseded_cost_usd").sum().cast(COST_DTYPE),
        pl.col("superseded_rows", "_superseded_nulls").sum().cast(pl.Int64),
    ]


def _latency() -> list[pl.Expr]:
    return [
        pl.col("latency_ms").quantile(0.5, "linear").alias("latency_p50_ms"),
        pl.col("latency_ms").quantile(0.95, "linear").alias("latency_p95_ms"),
    ]


def _token_cost(price_rates: list[pl.Expr]) -> pl.Expr:
    return usage_cost_expr(
        input_tokens=pl.col("input_tokens"),
        output_tokens=pl.col("output_tokens"),
        cached_tokens=pl.col("cached_tokens"),
        reasoning_tokens=pl.col("reasoning_tokens"),
        rates=price_rates,
    )


def _tier_order(column: str = "tier") -> pl.Expr:
    return pl.col(column).replace_strict(
        {t: i for i, t in enumerate(TIERS)}, default=len(TIERS), return_dtype=pl.Int64
    )


def _pct(saved: Decimal | None, against: Decimal | None) -> float | None:
    if saved is None or against is None or against == 0:
        return None
    return float(saved / against * 100)


def _write_all(frames: dict[Path, pl.DataFrame]) -> None:
    """Write each frame to its path, each file replaced whole; the writes run as one query
    (issue 15: a query's fixed cost outweighs a report's few rows)."""
    partials = {path: path.with_name(f".{path.name}.partial") for path in frames}
    pl.collect_all(
        [frame.lazy().sink_parquet(partials[path], lazy=True) for path, frame in frames.items()]
    )
    for path, partial in partials.items():
        os.replace(partial, path)


@dataclass(frozen=True, slots=True)
class _RunInfo:
    """What every report row says about its run, and whether its figures were repriced."""

    run_id: str | None
    job: str
    started_at: datetime | None
    repriced: bool

    def columns(self) -> dict[str, pl.Expr]:
        return {
            "run_id": pl.lit(self.run_id, dtype=pl.String),
            "job": pl.lit(self.job, dtype=pl.String),
            "started_at": pl.lit(self.started_at, dtype=RUN_COLUMNS["started_at"]),
            "repriced": pl.lit(self.repriced),
        }


def write_reports(
    run_dir: Path,
    *,
    job: Job,
    prices: PriceTable,
    budget_hit: bool = False,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    run_id: str | None = None,
) -> ReportSummary:
    """Build every report from the run directory's results and attempts, and write them there.

    The costs recorded in results.parquet and attempts.parquet are used when `prices` are the
    prices they were recorded with, as the run's `run.json` says (or when it has none); with any
    other prices,
    every figure, actual and counterfactual alike, is priced again from the recorded usage and
    the reports say `repriced`. `run_id` and `started_at` default to those of `run.json`.
    """
    results_path = run_dir / "results.parquet"
    if not results_path.is_file():
        raise OutputError("has no results.parquet to report on", path=run_dir)
    manifest = read_manifest(run_dir)
    # the prices the costs in results.parquet and attempts.parquet were recorded with
    recorded = manifest.price_sha256 if manifest is not None else None
    info = _RunInfo(
        run_id=run_id or (manifest.run_id if manifest is not None else None),
        job=job.name,
        started_at=started_at or (manifest.started_at if manifest is not None else None),
        repriced=recorded is not None and recorded != prices.sha256,
    )
    try:
        results = _with_cache_columns(pl.scan_parquet(results_path)).select(_RESULT_COLUMNS)
        attempts_path = run_dir / "attempts.parquet"
        attempts: pl.LazyFrame | None = None
        if attempts_path.is_file():
            scanned = pl.scan_parquet(attempts_path)
            judged = ["judge"] if "judge" in scanned.collect_schema().names() else []
            attempts = scanned.select(
                "row_key", "model", "error_type", "cost_usd", "priced", *_TOKENS, *judged
            )
            if info.repriced:
                attempts = price_attempts(attempts, prices)
                results = reprice_results(results, attempts, prices)
        elif info.repriced:
            raise OutputError(
                "has no attempts.parquet, so its failed attempts cannot be repriced; report it "
                "with the run's own prices (without --job)",
                path=run_dir,
            )
        summary = _build(
            run_dir,
            results.with_columns(model=pl.coalesce("model_used", "model_requested")),
            attempts,
            job=job,
            prices=prices,
            info=info,
            budget_hit=budget_hit,
            finished_at=finished_at,
        )
        savings = add_verification_costs(
            summary.savings, run_dir / "attempts.parquet", prices=prices, repriced=info.repriced
        )
        summary = replace(summary, savings=savings.select(SAVINGS_SCHEMA.names()))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise OutputError(f"cannot read the run's Parquet files ({exc})", path=run_dir) from None
    try:
        _write_all({path: getattr(summary, stem) for stem, path in summary.paths.items()})
    except OSError as exc:
        raise OutputError(f"cannot write reports ({exc.strerror or exc})", path=run_dir) from None
    return summary


def _superseded_answers(results: pl.LazyFrame, attempts: pl.LazyFrame) -> pl.LazyFrame:
    """Answering attempts (not failed, not a judge's call) whose row key has no answer in the
    results any more."""
    kept = results.filter(pl.col("status") == Status.OK).select("row_key")
    return attempts.filter(~paid_apart(attempts)).join(kept, on="row_key", how="anti")


def _with_cache_columns(results: pl.LazyFrame) -> pl.LazyFrame:
    """Results written before the response cache was wired: no row was a hit."""
    present = results.collect_schema().names()
    return results.with_columns(
        *(() if "cache_hit" in present else (pl.lit(False).alias("cache_hit"),)),
        *(
            ()
            if "cache_saved_usd" in present
            else (pl.lit(0, dtype=COST_DTYPE).alias("cache_saved_usd"),)
        ),
    )


def _cache_figures(results: pl.LazyFrame) -> pl.LazyFrame:
    """Answers served by the response cache, and what they would have cost (one row)."""
    hit = (pl.col("status") == Status.OK) & pl.col("cache_hit").fill_null(False)
    return results.select(
        cache_hits=hit.sum().cast(pl.Int64),
        cache_saved_usd=pl.col("cache_saved_usd").filter(hit).sum().cast(COST_DTYPE),
    )


def _superseded(results: pl.LazyFrame, attempts: pl.LazyFrame) -> pl.LazyFrame:
    """Per model, the spend on rows no longer in the results, as cost_report groups (tier null).

    Answers superseded: successful attempts whose row key has no answer in the results (a rerun
    sent the row again under a new key). Their failed attempts, and any other attempt of a key
    the results no longer hold, are failed spend; failed attempts of keys still in the results
    are already in those rows' `failed_cost_usd`.
    """
    present = results.select("row_key")  # anti joins: duplicates are harmless
    superseded = _superseded_answers(results, attempts)
    orphan_failed = attempts.filter(paid_apart(attempts)).join(present, on="row_key", how="anti")
    unpriced = (~pl.col("priced").fill_null(False)).cast(pl.Int64)
    return (
        pl.concat(
            [
                superseded.select(
                    "model",
                    "row_key",
                    superseded_cost_usd="cost_usd",
                    _superseded_nulls=unpriced,
                    failed_cost_usd=pl.lit(None, dtype=COST_DTYPE),
                    _failed_cost_nulls=pl.lit(0, dtype=pl.Int64),
                ),
                orphan_failed.select(
                    "model",
                    pl.lit(None, dtype=pl.String).alias("row_key"),
                    superseded_cost_usd=pl.lit(None, dtype=COST_DTYPE),
                    _superseded_nulls=pl.lit(0, dtype=pl.Int64),
                    failed_cost_usd="cost_usd",
                    _failed_cost_nulls=unpriced,
                ),
            ]
        )
        .group_by("model")
        .agg(
            pl.col("superseded_cost_usd").sum().cast(COST_DTYPE),
            pl.col("row_key").drop_nulls().n_unique().cast(pl.Int64).alias("superseded_rows"),
            pl.col("_superseded_nulls").sum().cast(pl.Int64),
            pl.col("failed_cost_usd").sum().cast(COST_DTYPE),
            pl.col("_failed_cost_nulls").sum().cast(pl.Int64),
        )
        .with_columns(tier=pl.lit(None, dtype=pl.String))
    )


def _build(
    run_dir: Path,
    results: pl.LazyFrame,
    attempts: pl.LazyFrame | None,
    *,
    job: Job,
    prices: PriceTable,
    info: _RunInfo,
    budget_hit: bool,
    finished_at: datetime | None,
) -> ReportSummary:
    config = job.config
    baseline = baseline_model(config)
    provenance = {
        "price_source": pl.lit(prices.source),
        "price_sha256": pl.lit(prices.sha256),
        **info.columns(),
    }
    rows = results.with_columns(**_row_indicators())
    # quantiles hold their group's values: key them by a hash, not two strings a row
    group_key = pl.struct("tier", "model").hash().alias("_group")
    answered = results.filter(pl.col("status") == Status.OK).select(group_key, "latency_ms")
    frames = [
        rows.group_by("tier", "model").agg(_group_sums()),
        answered.group_by("_group").agg(_latency()),
        answered.select(_latency()),
    ]
    if attempts is not None:
        frames.append(
            attempts.group_by("model").agg(
                pl.len().cast(pl.Int64).alias("attempts"),
                pl.col("error_type").is_not_null().sum().cast(pl.Int64).alias("failed_attempts"),
                (pl.col("error_type") == "rate_limited").sum().cast(pl.Int64).alias("rate_limited"),
                _sum_if_complete("cost_usd").alias("cost_usd"),
            )
        )
        frames.append(_superseded(results, attempts))
        # a row superseded on two models is one row: count its keys across models, once
        frames.append(
            _superseded_answers(results, attempts).select(
                pl.col("row_key").n_unique().cast(pl.Int64).alias("superseded_rows")
            )
        )
    frames.append(_cache_figures(results))
    collected = pl.collect_all(frames, engine="streaming")
    cache = collected.pop()
    groups = (
        collected[0]
        .with_columns(
            group_key,
            superseded_cost_usd=pl.lit(0, dtype=COST_DTYPE),
            superseded_rows=pl.lit(0, dtype=pl.Int64),
            _superseded_nulls=pl.lit(0, dtype=pl.Int64),
        )
        .join(collected[1], on="_group", how="left")
        .drop("_group")
    )
    if attempts is not None and collected[4].height:
        orphans = collected[4]
        groups = pl.concat([groups, orphans], how="diagonal_relaxed").with_columns(
            pl.col(c).fill_null(0)
            for c, dtype in groups.schema.items()
            if c not in orphans.columns and dtype.is_integer()
        )
        groups = groups.with_columns(
            pl.col("cost_usd").fill_null(pl.lit(0, dtype=COST_DTYPE)),
            pl.col("failed_cost_usd", "superseded_cost_usd").fill_null(pl.lit(0, dtype=COST_DTYPE)),
        )
    group_sums = [*_group_sums("tier", "model"), *_superseded_sums()]
    totals_row = groups.select(group_sums).with_columns(_null_if_unpriced())
    totals_row = totals_row.hstack(collected[2])
    tiers = (
        groups.group_by("tier")
        .agg(*_group_sums("tier"), *_superseded_sums())
        .with_columns(_null_if_unpriced())
    )
    groups = groups.with_columns(_null_if_unpriced())
    total_cost = pl.col("cost_usd") + pl.col("failed_cost_usd") + pl.col("superseded_cost_usd")

    cost_report = (
        groups.with_columns(
            total_cost_usd=total_cost,
            baseline_cost_usd=_token_cost(rate_literals(prices.get(baseline))),
            **provenance,
        )
        .sort(_tier_order(), "tier", "model", nulls_last=True)
        .select(COST_REPORT_SCHEMA.names())
        .cast(COST_REPORT_SCHEMA)
    )
    sums = [
        *(c for c in COUNT_COLUMNS if c not in {"unpriced", "latency_p50_ms", "latency_p95_ms"}),
        *SUPERSEDED_COLUMNS,
    ]
    cost_totals = (
        cost_report.select(
            *(pl.col(c).sum() for c in sums),
            pl.col("unpriced").any(),
        )
        .with_columns(
            superseded_rows=pl.lit(
                collected[5]["superseded_rows"][0] if attempts is not None else 0, dtype=pl.Int64
            ),
            latency_p50_ms=pl.lit(totals_row["latency_p50_ms"][0], dtype=pl.Float64),
            latency_p95_ms=pl.lit(totals_row["latency_p95_ms"][0], dtype=pl.Float64),
            **provenance,
        )
        .select(COST_TOTALS_SCHEMA.names())
        .cast(COST_TOTALS_SCHEMA)
    )

    plan = read_plan(run_dir)
    if plan is not None and info.repriced:
        plan = reprice_plan(plan, config, prices)
    forecast = (
        plan.select("tier", forecast_rows="rows", forecast_cost_usd="forecast_cost_usd")
        if plan is not None
        else pl.DataFrame(
            schema={"tier": pl.String, "forecast_rows": pl.Int64, "forecast_cost_usd": COST_DTYPE}
        )
    )
    total_rows = max(int(totals_row["rows"][0]), 1)
    tier_distribution = (
        tiers.join(forecast, on="tier", how="full", coalesce=True, nulls_equal=False)
        .with_columns(
            pl.col("rows", "ok", "failed", "fallback_rows").fill_null(0),
            pl.col("metadata_rows", "rule_rows", "classifier_rows", "default_rows").fill_null(0),
            model=pl.col("tier").replace_strict(
                {t: config.tier(t).model for t in config.tiers},
                default=None,
                return_dtype=pl.String,
            ),
            share=pl.col("rows").fill_null(0) / total_rows,
            total_cost_usd=total_cost,
            # superseded spend is the tier-less row's: its rows are counted once, as in the totals
            superseded_rows=pl.when(pl.col("tier").is_null())
            .then(pl.lit(cost_totals["superseded_rows"][0], dtype=pl.Int64))
            .otherwise(pl.col("superseded_rows")),
            **provenance,
        )
        .sort(_tier_order(), "tier", nulls_last=True)
        .select(TIER_DISTRIBUTION_SCHEMA.names())
        .cast(TIER_DISTRIBUTION_SCHEMA)
    )

    savings = _savings(
        run_dir,
        job=job,
        prices=prices,
        info=info,
        cost_totals=cost_totals,
        overall=totals_row,
        plan=plan,
        budget_hit=budget_hit,
        finished_at=finished_at,
        cache=cache,
    )

    if attempts is not None:
        model_attempts = collected[3].with_columns(
            failure_rate=pl.col("failed_attempts") / pl.col("attempts"), **provenance
        )
    else:
        model_attempts = pl.DataFrame(schema=MODEL_ATTEMPTS_SCHEMA)
    model_attempts = (
        model_attempts.sort("model")
        .select(MODEL_ATTEMPTS_SCHEMA.names())
        .cast(MODEL_ATTEMPTS_SCHEMA)
    )
    return ReportSummary(
        run_dir=run_dir,
        cost_report=cost_report,
        cost_totals=cost_totals,
        tier_distribution=tier_distribution,
        savings=savings,
        model_attempts=model_attempts,
        paths={stem: run_dir / f"{stem}.parquet" for stem in REPORT_FILES},
    )


def _savings(
    run_dir: Path,
    *,
    job: Job,
    prices: PriceTable,
    info: _RunInfo,
    cost_totals: pl.DataFrame,
    overall: pl.DataFrame,
    plan: pl.DataFrame | None,
    budget_hit: bool,
    finished_at: datetime | None,
    cache: pl.DataFrame,
) -> pl.DataFrame:
    """The one-row savings table: counterfactuals priced exactly on the answers' tokens.

    The saving is counted on total spend: what the answers kept would have cost on the
    baseline (or strongest) model, less everything this run paid, failures and superseded
    answers included. Answers the response cache served count there at their list cost, so
    routing's saving leaves out what the cache saved, which is reported beside it.
    """
    tokens = {t: int(overall[f"compared_{t}"][0]) for t in _TOKENS}
    counterfactual = {
        name: usage_cost(price, **tokens)
        for name, price in prices.prices.items()
        if name in job.config.models
    }
    baseline = baseline_model(job.config)
    baseline_cost = counterfactual.get(baseline)
    strongest = (
        max(counterfactual, key=lambda m: (counterfactual[m], m)) if counterfactual else None
    )
    strongest_cost = counterfactual.get(strongest) if strongest is not None else None
    totals = cost_totals.row(0, named=True)
    actual: Decimal = totals["cost_usd"]
    total: Decimal = totals["total_cost_usd"]
    cache_hits = int(cache["cache_hits"][0] or 0)
    cache_saved = Decimal(cache["cache_saved_usd"][0] or 0)
    listed = None if total is None else total + cache_saved
    saved_baseline = None if baseline_cost is None or listed is None else baseline_cost - listed
    saved_strongest = None if strongest_cost is None or listed is None else strongest_cost - listed
    batch_saved, batch_rows = batch_saving(pl.scan_parquet(run_dir / "results.parquet"), prices)
    forecast_cost: Decimal | None = None
    if plan is not None and plan.height and bool(plan["priced"].all()):
        forecast_cost = Decimal(plan["forecast_cost_usd"].sum())
    return pl.DataFrame(
        [
            {
                "job": job.name,
                "run_dir": str(run_dir),
                "started_at": info.started_at or overall["started_at"][0],
                "finished_at": finished_at or overall["finished_at"][0] or datetime.now(UTC),
                "rows": totals["rows"],
                "ok": totals["ok"],
                "failed": totals["failed"],
                "skipped": totals["skipped"],
                "actual_cost_usd": actual,
                "failed_cost_usd": totals["failed_cost_usd"],
                "total_cost_usd": total,
                "baseline_model": baseline,
                "baseline_cost_usd": baseline_cost,
                "savings_vs_baseline_usd": saved_baseline,
                "savings_vs_baseline_pct": _pct(saved_baseline, baseline_cost),
                "strongest_model": strongest,
                "strongest_cost_usd": strongest_cost,
                "savings_vs_strongest_usd": saved_strongest,
                "savings_vs_strongest_pct": _pct(saved_strongest, strongest_cost),
                "forecast_cost_usd": forecast_cost,
                "forecast_delta_usd": None if forecast_cost is None else total - forecast_cost,
                "unpriced": totals["unpriced"],
                "budget_hit": budget_hit,
                "price_source": prices.source,
                "price_sha256": prices.sha256,
                "superseded_cost_usd": totals["superseded_cost_usd"],
                "superseded_rows": totals["superseded_rows"],
                "run_id": info.run_id,
                "repriced": info.repriced,
                "batch_rows": batch_rows,
                "batch_saving_usd": batch_saved,
                "cache_hits": cache_hits,
                "cache_hit_rate": cache_hits / totals["ok"] if totals["ok"] else 0.0,
                "cache_saved_usd": cache_saved,
            }
        ],
        schema=SAVINGS_SCHEMA,
    )


def load_summary(run_dir: Path) -> ReportSummary:
    """Read a run directory's report files, as `write_reports` wrote them."""
    paths = {stem: run_dir / f"{stem}.parquet" for stem in REPORT_FILES}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        hint = (
            "the run has not written its reports yet; rerun `batchroute run` to finish it, "
            "or pass --job JOB.yaml to build them from results.parquet"
            if (run_dir / "results.parquet").is_file()
            else "it does not look like a batchroute run directory"
        )
        raise OutputError(f"has no {', '.join(missing)} ({hint})", path=run_dir)
    try:
        frames = {stem: pl.read_parquet(path) for stem, path in paths.items()}
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise OutputError(f"cannot read the reports ({exc})", path=run_dir) from None
    return ReportSummary(run_dir=run_dir, paths=paths, **frames)
