"""What checking answers cost a run: rejected answers, escalated answers, in the savings report.

Routing's saving is counted on total spend, which already includes every answer the checks
rejected and every answer bought again on a stronger tier. This module names those two parts, so
a finance reader sees "routing saved X after paying Y for checks and escalations". The figures
come from attempts.parquet alone, where each attempt carries its `verify` verdict and its
`escalation_depth`, and they reconcile with it exactly.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl

from batchroute.pricing.costs import price_attempts
from batchroute.pricing.prices import PriceTable
from batchroute.schema import COST_DTYPE

__all__ = ["VERIFY_SAVINGS_COLUMNS", "add_verification_costs"]

VERIFY_SAVINGS_COLUMNS: dict[str, pl.DataType] = {
    "escalated_rows": pl.Int64(),
    "verify_rejected_cost_usd": COST_DTYPE,
    "escalation_cost_usd": COST_DTYPE,
    "checks_and_escalations_cost_usd": COST_DTYPE,
    "judge_cost_usd": COST_DTYPE,
}
"""savings.parquet's last columns: rows that climbed a tier; what the answers the checks
rejected cost; what every attempt on a tier above the row's own cost; what the judge's calls
cost; and all of it together (an attempt in two of those parts is counted once)."""


def add_verification_costs(
    savings: pl.DataFrame, attempts_path: Path, *, prices: PriceTable, repriced: bool
) -> pl.DataFrame:
    """The savings row with the verification columns filled from the run's attempts."""
    figures: dict[str, int | Decimal | None] = dict.fromkeys(VERIFY_SAVINGS_COLUMNS, None)
    if attempts_path.is_file():
        attempts = pl.scan_parquet(attempts_path)
        names = attempts.collect_schema().names()
        if "verify" in names and "escalation_depth" in names:
            if repriced:
                attempts = price_attempts(attempts, prices)
            rejected = pl.col("verify") == "failed"
            climbed = pl.col("escalation_depth") > 0
            judged = pl.col("judge").fill_null(False) if "judge" in names else pl.lit(False)
            cost = pl.col("cost_usd")
            row = (
                attempts.select(
                    escalated_rows=pl.col("row_key").filter(climbed).n_unique(),
                    verify_rejected_cost_usd=cost.filter(rejected).sum(),
                    escalation_cost_usd=cost.filter(climbed).sum(),
                    checks_and_escalations_cost_usd=cost.filter(rejected | climbed | judged).sum(),
                    judge_cost_usd=cost.filter(judged).sum(),
                )
                .collect()
                .row(0, named=True)
            )
            figures.update(row)
    return savings.with_columns(
        pl.lit(value, dtype).alias(name)
        for name, dtype in VERIFY_SAVINGS_COLUMNS.items()
        for value in (figures[name],)
    )
