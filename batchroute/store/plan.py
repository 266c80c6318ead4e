"""plan.parquet: a forecast (`pricing.forecast.PLAN_SCHEMA`) written into, and read back from, a
run directory or any folder `plan --out` names."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import polars as pl

from batchroute.errors import OutputError
from batchroute.store.rundir import atomic_file

__all__ = ["PLAN_NAME", "read_plan", "write_plan"]

PLAN_NAME: Final = "plan.parquet"


def write_plan(plan: pl.DataFrame, directory: Path) -> Path:
    """Write plan.parquet atomically into `directory`; `OutputError` if it cannot."""
    path = directory / PLAN_NAME
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
    path = run_dir / PLAN_NAME
    return pl.read_parquet(path) if path.is_file() else None
