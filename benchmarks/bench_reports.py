"""Reports and pricing at scale: a 1,000,000-row results file, measured against baselines.

    python benchmarks/bench_reports.py [ROWS]

Prints, each as a ratio against a baseline measured in the same run:
- `write_reports` peak memory and time against reading results.parquet whole (`pl.read_parquet`),
  each in a fresh process; RSS is the peak growth during the step. The run directory also holds
  an attempts.parquet (one attempt a row, plus answers a rerun superseded for 1 row in 20), so
  the reports reconcile every attempt with the results;
- `price_outcomes` (vectorised, exact Decimal) against a per-row Python loop of `usage_cost`.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import psutil

from batchroute.config import Job, parse_job
from batchroute.pricing.costs import price_outcomes, usage_cost
from batchroute.pricing.prices import resolve_prices
from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA

TIERS = ("complex", "standard", "structured", "bulk")
MODELS = ("claude-opus-4-7", "claude-sonnet-4-6", "gpt-5.5", "deepseek-chat")


def make_job() -> Job:
    data = {
        "name": "bench",
        "input": {"path": "in.jsonl"},
        "tiers": dict(zip(TIERS, MODELS, strict=True)),
        "models": {m: {} for m in MODELS},
        "baseline_model": "claude-sonnet-4-6",
    }
    return Job(parse_job(data, path=Path("bench.yaml")), path=Path("bench.yaml"), text_sha256="")


def make_results(rows: int) -> pl.DataFrame:
    """Results with an answer of ~300 characters a row, so that a whole read is costly."""
    i = pl.int_range(rows, dtype=pl.Int64)
    frame = pl.select(
        id=i.cast(pl.String),
        row_index=i,
        row_key=i.cast(pl.String),
        tier=pl.lit(pl.Series(TIERS)).gather(i % 4),
        model_used=pl.lit(pl.Series(MODELS)).gather(i % 4),
        status=pl.when(i % 50 == 0).then(pl.lit("failed")).otherwise(pl.lit("ok")),
        input_tokens=200 + i % 700,
        output_tokens=100 + i % 300,
        cached_tokens=(i % 3) * 50,
        reasoning_tokens=(i % 5) * 10,
        latency_ms=(i % 900).cast(pl.Float64) + 100.0,
        # ~300 characters that do not compress away, as real answers don't
        content=pl.concat_str([(i * k + 7).hash(k).cast(pl.String) for k in range(1, 16)]),
        started_at=pl.lit(datetime(2026, 11, 27, tzinfo=UTC)),
    )
    missing = {n: pl.lit(None, dtype=t) for n, t in RESULT_SCHEMA.items() if n not in frame.columns}
    return (
        frame.with_columns(**missing)
        .with_columns(
            model_requested=pl.col("model_used"),
            tier_source=pl.lit("rule"),
            fallback_depth=pl.lit(0),
        )
        .select(RESULT_SCHEMA.names())
        .cast(RESULT_SCHEMA)
    )


def make_attempts(results: pl.DataFrame) -> pl.DataFrame:
    """One attempt per row, and for every 20th row an earlier answer a rerun superseded."""
    usage = ["input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens"]
    ok = pl.col("status") == "ok"
    current = results.select(
        "id",
        "row_index",
        "row_key",
        pl.col("model_used").alias("model"),
        pl.lit(1, dtype=pl.Int32).alias("attempt"),
        pl.when(ok).then(None).otherwise(pl.lit("server_error")).alias("error_type"),
        pl.when(ok).then(pl.lit("ok")).otherwise(pl.lit("fail")).alias("action"),
        *(pl.when(ok).then(pl.col(c)).alias(c) for c in usage),
    )
    superseded = current.filter(pl.col("row_index") % 20 == 0).with_columns(
        row_key=pl.lit("old-") + pl.col("row_key"),
        error_type=pl.lit(None, dtype=pl.String),
        action=pl.lit("ok"),
        **{c: pl.col(c).fill_null(100) for c in usage},
    )
    frame = pl.concat([superseded, current])
    missing = {
        n: pl.lit(None, dtype=t) for n, t in ATTEMPT_SCHEMA.items() if n not in frame.columns
    }
    return frame.with_columns(**missing).select(ATTEMPT_SCHEMA.names()).cast(ATTEMPT_SCHEMA)


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


class _PeakRss:
    """The highest RSS seen while the block runs, sampled every 2 ms.

    ru_maxrss will not do: Linux keeps it across fork and exec, so a child starts with its
    parent's peak.
    """

    def __enter__(self) -> _PeakRss:
        self.base_mb = self.peak_mb = _rss_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.base_mb


def _read_whole(run_dir: str, queue: mp.Queue[tuple[float, float]]) -> None:
    with _PeakRss() as rss:
        start = time.perf_counter()
        frame = pl.read_parquet(Path(run_dir) / "results.parquet")
        frame.select(pl.col("cost_usd").sum())
        seconds = time.perf_counter() - start
    queue.put((seconds, rss.growth_mb))


def _write_reports(run_dir: str, queue: mp.Queue[tuple[float, float]]) -> None:
    from batchroute.report import write_reports

    job = make_job()
    prices = resolve_prices(job)
    with _PeakRss() as rss:
        start = time.perf_counter()
        write_reports(Path(run_dir), job=job, prices=prices)
        seconds = time.perf_counter() - start
    queue.put((seconds, rss.growth_mb))


def _in_fresh_process(target: object, run_dir: str) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue: mp.Queue[tuple[float, float]] = ctx.Queue()
    process = ctx.Process(target=target, args=(run_dir, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    job = make_job()
    prices = resolve_prices(job)
    results = make_results(rows)
    attempts = pl.DataFrame(schema=ATTEMPT_SCHEMA)

    price_outcomes(results.head(1000), attempts, prices)  # warm up polars' thread pool
    start = time.perf_counter()
    priced, _ = price_outcomes(results, attempts, prices)
    vectorised_s = time.perf_counter() - start
    sample = results.head(min(rows, 100_000))
    start = time.perf_counter()
    looped = [
        usage_cost(
            prices.prices[r["model_used"]],
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cached_tokens=r["cached_tokens"],
            reasoning_tokens=r["reasoning_tokens"],
        )
        for r in sample.select(
            "model_used",
            *(c for c in RESULT_SCHEMA if c.endswith("_tokens") and not c.startswith("failed")),
        ).iter_rows(named=True)
    ]
    loop_s = (time.perf_counter() - start) * rows / sample.height
    assert looped[1:4] == priced["cost_usd"].slice(1, 3).to_list()  # row 0 failed: costs 0

    with tempfile.TemporaryDirectory() as tmp:
        priced.write_parquet(Path(tmp) / "results.parquet")
        _, paid = price_outcomes(priced.head(0), make_attempts(results), prices)
        paid.write_parquet(Path(tmp) / "attempts.parquet")
        size_mb = (Path(tmp) / "results.parquet").stat().st_size / 1e6
        read_s, read_mb = _in_fresh_process(_read_whole, tmp)
        report_s, report_mb = _in_fresh_process(_write_reports, tmp)

    ratio_loop = loop_s / vectorised_s
    lines = [
        f"rows: {rows:,}; results.parquet {size_mb:.0f} MB",
        f"price_outcomes: {vectorised_s:.2f} s vectorised; per-row loop {loop_s:.1f} s "
        f"(extrapolated from {sample.height:,} rows): vectorised is {ratio_loop:.0f}x faster",
        f"read_parquet whole (baseline): {read_s:.2f} s, peak RSS +{read_mb:.0f} MB",
        f"write_reports (lazy scan):     {report_s:.2f} s, peak RSS +{report_mb:.0f} MB",
        f"write_reports / whole read: time {report_s / read_s:.2f}x, "
        f"peak RSS {report_mb / read_mb:.2f}x",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
