"""Past runs through today's router: which rows would move tier, at what cost, and how right.

`batchroute eval-classifier JOB --runs DIR...` answers "how would routing on last week's runs
have changed?". For each run directory it reads results.parquet (the tier each row was routed
to then), reads the rows themselves from the run's own job and input (as `run_labels` does),
and routes them with JOB's router as the runner would (hints, rules, the model, the decision).

- **Moves**: rows whose tier would change, counted per (then, now) pair of tiers.
- **Cost change**: both routings priced at JOB's prices by the forecast's per-tier price
  (`pricing.forecast.TierPrice`: the row's estimated prompt tokens, the tier's expected output),
  so the change is routing's alone, not the answers' lengths or the run's fallbacks.
- **Against the run-derived labels**: a row that passed its checks only after climbing to tier T
  is labelled T (`run_labels.labels_from_runs`); those prompts are scored as `eval-classifier`
  scores a labelled file (`evaluate.evaluate_router`): accuracy, under- and over-routing.

Rows of a run that the input no longer holds (matched by `id`) are counted as missing; rows that
were never routed (invalid lines) are left out. A tier the job does not map counts as `standard`,
where the runner sends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Final

import polars as pl

from batchroute.classify.evaluate import Evaluation, evaluate_router
from batchroute.classify.run_labels import labels_from_runs
from batchroute.config import TIERS, load_job
from batchroute.dataset.reader import open_dataset
from batchroute.errors import DatasetError
from batchroute.pricing.forecast import input_tokens_expr, tier_prices
from batchroute.schema import COST_DTYPE, ErrorType
from batchroute.store.manifest import read_manifest

if TYPE_CHECKING:
    from batchroute.classify.router import Router
    from batchroute.config import Job

__all__ = ["Replay", "replay_runs"]

_MOVES_SCHEMA: Final = pl.Schema(
    {
        "from_tier": pl.String,
        "to_tier": pl.String,
        "rows": pl.Int64,
        "input_tokens": pl.Int64,
    }
)


@dataclass(frozen=True)
class Replay:
    """What routing a set of past runs with a job's current router would have changed."""

    runs: tuple[Path, ...]
    rows: int
    """Rows routed then and found in their run's input now."""
    moved: int
    """Of those, rows the current router sends to another tier."""
    moves: pl.DataFrame
    """Per (from_tier, to_tier) pair, including unchanged ones: rows, input tokens, and their
    estimated cost on each side (`cost_then_usd`, `cost_now_usd`)."""
    cost_then_usd: Decimal
    """All the rows at the tiers they were routed to, priced at the job's prices."""
    cost_now_usd: Decimal
    """All the rows at the tiers the current router picks, at the same prices."""
    missing_rows: int
    """Rows of the runs' results whose `id` the runs' inputs no longer hold."""
    labelled: Evaluation | None
    """The current router against the run-derived labels; None when no row escalated."""
    unpriced_tiers: tuple[str, ...] = ()

    @property
    def moved_share(self) -> float:
        return self.moved / self.rows if self.rows else 0.0

    @property
    def cost_change_usd(self) -> Decimal:
        """Now less then: negative when the current router would have spent less."""
        return self.cost_now_usd - self.cost_then_usd


def replay_runs(run_dirs: Sequence[Path], *, job: Job, router: Router) -> Replay:
    """Route the rows of these run directories with `router`, priced at `job`'s prices."""
    mapped = [t for t in TIERS if t in job.config.tiers]
    parts: list[pl.DataFrame] = []
    missing = 0
    for run_dir in run_dirs:
        routed_then = _routed_then(Path(run_dir), mapped)
        if routed_then.height == 0:
            continue
        found = 0
        for moves in _routed_now(Path(run_dir), routed_then, job=job, router=router):
            found += int(moves["rows"].sum())
            parts.append(moves)
        missing += routed_then.height - found
    moves = (
        pl.concat(parts).group_by("from_tier", "to_tier").agg(pl.col("rows", "input_tokens").sum())
        if parts
        else pl.DataFrame(schema=_MOVES_SCHEMA)
    )
    prices = tier_prices(job)
    then = [
        prices[a].cost_usd(input_tokens=n_in, rows=n)
        for a, n, n_in in moves.select("from_tier", "rows", "input_tokens").iter_rows()
    ]
    now = [
        prices[b].cost_usd(input_tokens=n_in, rows=n)
        for b, n, n_in in moves.select("to_tier", "rows", "input_tokens").iter_rows()
    ]
    order = {tier: i for i, tier in enumerate(mapped)}
    moves = (
        moves.with_columns(
            pl.Series("cost_then_usd", then, dtype=COST_DTYPE),
            pl.Series("cost_now_usd", now, dtype=COST_DTYPE),
        )
        .with_columns(
            pl.col("from_tier").replace_strict(order, return_dtype=pl.Int64).alias("_a"),
            pl.col("to_tier").replace_strict(order, return_dtype=pl.Int64).alias("_b"),
        )
        .sort("_a", "_b")
        .drop("_a", "_b")
    )
    labels = labels_from_runs(run_dirs)
    labelled = (
        evaluate_router(router, labels["prompt"].to_list(), labels["tier"].to_list(), job=job)
        if labels.height
        else None
    )
    return Replay(
        runs=tuple(Path(d) for d in run_dirs),
        rows=int(moves["rows"].sum()),
        moved=int(moves.filter(pl.col("from_tier") != pl.col("to_tier"))["rows"].sum()),
        moves=moves,
        cost_then_usd=sum(then, Decimal(0)),
        cost_now_usd=sum(now, Decimal(0)),
        missing_rows=missing,
        labelled=labelled,
        unpriced_tiers=tuple(t for t, p in prices.items() if not p.priced),
    )


def _routed_then(run_dir: Path, mapped: list[str]) -> pl.DataFrame:
    """`id` and the tier each routed row of a run went to (an unmapped tier: standard)."""
    path = run_dir / "results.parquet"
    if not path.is_file():
        raise DatasetError("has no results.parquet; is it a finished batchroute run?", path=run_dir)
    return (
        pl.scan_parquet(path)
        .filter(
            pl.col("tier").is_not_null()
            & (pl.col("error_type").fill_null("") != ErrorType.INVALID_ROW)
        )
        .select(
            "id",
            pl.when(pl.col("tier").is_in(mapped))
            .then(pl.col("tier"))
            .otherwise(pl.lit("standard"))
            .alias("from_tier"),
        )
        .unique("id", keep="first", maintain_order=True)
        .collect()
    )


def _routed_now(
    run_dir: Path, routed_then: pl.DataFrame, *, job: Job, router: Router
) -> list[pl.DataFrame]:
    """Per input batch of the run: its routed rows, counted per (then, now) pair of tiers."""
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise DatasetError("has no run.json naming its job", path=run_dir)
    run_job = load_job(manifest.job_path)
    tokens = input_tokens_expr(system_prompt=job.config.input.system_prompt)
    wanted = routed_then.get_column("id").implode()
    counted = []
    for batch in open_dataset(run_job).batches():
        rows = batch.rows.filter(pl.col("id").is_in(wanted))
        if rows.height == 0:
            continue
        routed = router.classify(rows)
        counted.append(
            routed.select("id", pl.col("tier").alias("to_tier"), tokens.alias("input_tokens"))
            .join(routed_then, on="id", how="inner")
            .group_by("from_tier", "to_tier")
            .agg(pl.len().cast(pl.Int64).alias("rows"), pl.col("input_tokens").sum())
            .select(_MOVES_SCHEMA.names())
            .cast(_MOVES_SCHEMA)
        )
    return counted
