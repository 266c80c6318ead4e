"""A folder of runs (e.g. runs/nightly/) as per-day totals: what finance asks for at month end.

Every `savings.parquet` below the folder is one run. Runs are dated by their start (UTC) and
grouped by day and job, so two jobs are never summed into one figure; each day's costs are exact
decimal sums, and its savings percentage is recomputed from those sums, never averaged from the
runs' percentages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, cast

import polars as pl

from batchroute.errors import OutputError
from batchroute.report.schemas import SAVINGS_SCHEMA
from batchroute.schema import COST_DTYPE

__all__ = ["DAILY_SCHEMA", "daily_totals", "find_runs", "is_run_dir", "read_runs"]

DAILY_SCHEMA: Final = pl.Schema(
    cast(
        dict[str, Any],
        {
            "date": pl.Date,
            "job": pl.String,
            "runs": pl.Int64,
            "rows": pl.Int64,
            "ok": pl.Int64,
            "failed": pl.Int64,
            "actual_cost_usd": COST_DTYPE,
            "failed_cost_usd": COST_DTYPE,
            "superseded_cost_usd": COST_DTYPE,
            "total_cost_usd": COST_DTYPE,
            "baseline_cost_usd": COST_DTYPE,
            "savings_vs_baseline_usd": COST_DTYPE,
            "savings_vs_baseline_pct": pl.Float64,
            "strongest_cost_usd": COST_DTYPE,
            "savings_vs_strongest_usd": COST_DTYPE,
            "unpriced": pl.Boolean,
            "budget_hit": pl.Boolean,
        },
    )
)
"""Per-day, per-job totals of a folder of runs."""

_SUMMED = (
    "actual_cost_usd",
    "failed_cost_usd",
    "superseded_cost_usd",
    "total_cost_usd",
    "baseline_cost_usd",
    "savings_vs_baseline_usd",
    "strongest_cost_usd",
    "savings_vs_strongest_usd",
)


def is_run_dir(path: Path) -> bool:
    """Whether a directory is one run (it holds results or reports), not a folder of runs."""
    return (path / "results.parquet").is_file() or (path / "savings.parquet").is_file()


def find_runs(folder: Path) -> list[Path]:
    """The savings.parquet of every run below `folder`, in path order."""
    return sorted(p for p in folder.rglob("savings.parquet") if p.is_file())


def read_runs(folder: Path) -> pl.DataFrame:
    """All runs' savings rows; `OutputError` if the folder holds none."""
    files = find_runs(folder)
    if not files:
        raise OutputError(
            "holds no run with a savings.parquet; point `batchroute report` at a run directory "
            "or at a folder of them",
            path=folder,
        )
    try:
        runs = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
        # runs written before a column existed read it as null (e.g. superseded_cost_usd)
        return runs.select(
            pl.col(name).cast(dtype) if name in runs.columns else pl.lit(None, dtype).alias(name)
            for name, dtype in SAVINGS_SCHEMA.items()
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise OutputError(
            f"cannot read the runs' savings.parquet files ({exc})", path=folder
        ) from None


def daily_totals(runs: pl.DataFrame) -> pl.DataFrame:
    """Per-day, per-job sums of the runs' rows and costs, in DAILY_SCHEMA, oldest first."""
    date = pl.coalesce("started_at", "finished_at").dt.date()
    daily = (
        runs.group_by(date.alias("date"), "job")
        .agg(
            pl.len().cast(pl.Int64).alias("runs"),
            pl.col("rows", "ok", "failed").sum().cast(pl.Int64),
            *(pl.col(c).sum().cast(COST_DTYPE) for c in _SUMMED),
            pl.col("unpriced").any(),
            pl.col("budget_hit").any(),
        )
        .with_columns(
            savings_vs_baseline_pct=pl.when(pl.col("baseline_cost_usd") != 0).then(
                pl.col("savings_vs_baseline_usd").cast(pl.Float64)
                / pl.col("baseline_cost_usd").cast(pl.Float64)
                * 100
            )
        )
        .sort("date", "job")
    )
    return daily.select(DAILY_SCHEMA.names()).cast(DAILY_SCHEMA)
