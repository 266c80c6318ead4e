from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from batchroute.errors import OutputError
from batchroute.pricing.forecast import PLAN_SCHEMA
from batchroute.store.plan import read_plan, write_plan


def _plan() -> pl.DataFrame:
    row = {
        "tier": "standard",
        "model": "m",
        "rows": 3,
        "share": 1.0,
        "input_tokens": 30,
        "output_tokens": 90,
        "forecast_cost_usd": Decimal("0.000123"),
        "priced": True,
        "baseline_model": "m",
        "baseline_cost_usd": Decimal("0.000123"),
        "price_source": "job",
        "price_sha256": "0" * 64,
    }
    return pl.DataFrame([row], schema=PLAN_SCHEMA)


def test_plan_round_trips_through_parquet(tmp_path: Path) -> None:
    written = write_plan(_plan(), tmp_path / "out")
    assert written == tmp_path / "out" / "plan.parquet"
    back = read_plan(tmp_path / "out")
    assert back is not None and back.equals(_plan())
    assert read_plan(tmp_path) is None


def test_write_plan_reports_an_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write plan.parquet"):
        write_plan(pl.DataFrame(schema=PLAN_SCHEMA), blocker / "sub")
