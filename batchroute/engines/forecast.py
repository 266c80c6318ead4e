"""`forecast_job`: the offline pass over a job's input, read and classified as a run would, and
forecast per tier without a single API call (`batchroute plan`, `run --dry-run`, the API).

It lives above `pricing` because it reads (`dataset`) and routes (`classify`); the arithmetic is
`pricing.forecast.ForecastAccumulator`'s, the same one a run writes plan.parquet with.
"""

from __future__ import annotations

import polars as pl

from batchroute.classify import build_router
from batchroute.config import Job
from batchroute.dataset import open_dataset
from batchroute.pricing.forecast import ForecastAccumulator
from batchroute.pricing.prices import PriceTable

__all__ = ["forecast_job"]


def forecast_job(job: Job, prices: PriceTable, *, limit: int | None = None) -> ForecastAccumulator:
    """Read and classify the job's input batch by batch (no API call) and forecast it.

    `limit` forecasts only the first rows, as `run --limit` would send them.
    """
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
