"""`forecast_job`: the offline pass over a job's input, read and classified as a run would, and
forecast per tier without a single API call (`batchroute plan`, `run --dry-run`, the API).

It lives above `pricing` because it reads (`dataset`) and routes (`classify`); the arithmetic is
`pricing.forecast.ForecastAccumulator`'s, the same one a run writes plan.parquet with.
"""

from __future__ import annotations

from contextlib import nullcontext

import polars as pl

from batchroute.cache.runs import RunCache
from batchroute.classify import build_router
from batchroute.config import Job
from batchroute.dataset import open_dataset
from batchroute.pricing.forecast import ForecastAccumulator
from batchroute.pricing.prices import PriceTable

__all__ = ["forecast_job"]


def forecast_job(
    job: Job, prices: PriceTable, *, limit: int | None = None, use_cache: bool = False
) -> ForecastAccumulator:
    """Read and classify the job's input batch by batch (no API call) and forecast it.

    `limit` forecasts only the first rows, as `run --limit` would send them. With `use_cache`,
    each batch's first requests are looked up by key in the job's response cache (read-only,
    and only if the file exists), as a run looks them up before sending: the rows it would
    answer are counted as cache hits, not forecast.
    """
    cache = RunCache.for_job(job, lookup_only=True) if use_cache else None
    with cache if cache is not None else nullcontext():
        return _forecast(job, prices, limit=limit, cache=cache)


def _forecast(
    job: Job, prices: PriceTable, *, limit: int | None, cache: RunCache | None
) -> ForecastAccumulator:
    router = build_router(job)
    forecast = ForecastAccumulator(job, prices)
    remaining = limit
    for batch in open_dataset(job).batches(batch_rows=job.config.run.batch_rows):
        rows: pl.DataFrame = batch.rows
        if remaining is not None:
            rows = rows.head(remaining)
            remaining -= rows.height
        if rows.height:
            classified = router.classify(rows)
            cached = None
            if cache is not None and cache.reads:
                hits = cache.lookup(classified["tier"].to_list(), classified["messages"].to_list())
                cached = pl.Series([hit is not None for hit in hits], dtype=pl.Boolean)
            forecast.add(classified, cached=cached)
        if remaining is not None and remaining <= 0:
            break
    return forecast
