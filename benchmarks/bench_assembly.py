"""Final assembly in bounded memory: 1M vs 100k synthetic result rows, in one run.

Each size gets a run directory shaped like a resumed cron run: session 1 answered the first 60%
of the rows (5% of them failed) and was killed; session 2 read every row again, re-sent the
failed ones and finished the rest, its completions shuffled within a window of 512 as
concurrency leaves them. The parts are written through `PartWriter` (1,000 rows a part).
Then `assemble_results` runs in a fresh subprocess per size, which reports its own peak RSS.

    python benchmarks/bench_assembly.py [--rows 1000000] [--small 100000] [--keep DIR]

Prints rows/s for each size and the peak-RSS ratio (target: 1M at most 1.5x the 100k run).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from batchroute.schema import RESULT_SCHEMA, Status
from batchroute.store.parts import PartWriter

BATCH = 10_000
WINDOW = 512
_NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
_ANSWER = (
    "here is a considered response with a few sentences of explanation, a short code "
    "sample, and a closing note about trade-offs. "
) * 3


def _records(index: pl.Series, *, status: str, seed: int) -> pl.DataFrame:
    row = pl.col("row_index")
    return pl.DataFrame({"row_index": index}).with_columns(
        row.cast(pl.String).str.zfill(8).alias("id"),
        row.cast(pl.String).str.zfill(32).alias("row_key"),
        pl.lit("standard").alias("tier"),
        pl.lit("claude-sonnet-4-6").alias("model_requested"),
        pl.lit("claude-sonnet-4-6").alias("model_used"),
        pl.lit(status).alias("status"),
        pl.lit(1, dtype=pl.Int32).alias("attempts"),
        (pl.lit("Answer ") + row.cast(pl.String) + pl.lit(f" (seed {seed}): {_ANSWER}")).alias(
            "content"
        ),
        pl.lit(120, dtype=pl.Int64).alias("input_tokens"),
        pl.lit(300, dtype=pl.Int64).alias("output_tokens"),
        pl.lit("0.004860").cast(RESULT_SCHEMA["cost_usd"]).alias("cost_usd"),
        pl.lit(812.5).alias("latency_ms"),
        pl.lit(_NOW).alias("started_at"),
        pl.lit("data-platform").alias("team"),
    )


def _attempts(records: pl.DataFrame) -> pl.DataFrame:
    return records.select(
        "id",
        "row_index",
        "row_key",
        pl.col("model_used").alias("model"),
        pl.col("attempts").alias("attempt"),
        pl.lit(200, dtype=pl.Int32).alias("status_code"),
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "latency_ms",
        "started_at",
    )


def _index(rows: pl.Series) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row_index": rows,
            "row_key": rows.cast(pl.String).str.zfill(32),
            "id": rows.cast(pl.String).str.zfill(8),
            "line": rows + 1,
            "team": ["data-platform"] * rows.len(),
        }
    )


def _shuffled(frame: pl.DataFrame, *, seed: int) -> pl.DataFrame:
    """Completion order: rows finish out of order within a window of in-flight requests."""
    return (
        frame.with_columns(
            (pl.int_range(pl.len()) // WINDOW).alias("_w"),
            pl.int_range(pl.len()).shuffle(seed=seed).alias("_r"),
        )
        .sort("_w", "_r")
        .drop("_w", "_r")
    )


def make_run(run_dir: Path, rows: int) -> None:
    """Write the parts of a two-session run with `rows` input rows."""
    crashed_at = int(rows * 0.6)
    first = PartWriter(run_dir, session="s1", metadata_columns=["team"])
    for start in range(0, crashed_at, BATCH):
        batch = pl.int_range(start, min(start + BATCH, crashed_at), eager=True, dtype=pl.Int64)
        first.add_index(_index(batch))
        failed = batch.filter(batch % 20 == 7)
        done = batch.filter(batch % 20 != 7)
        records = pl.concat(
            [
                _records(done, status=Status.OK, seed=1),
                _records(failed, status=Status.FAILED, seed=1),
            ]
        )
        records = _shuffled(records, seed=start)
        for offset in range(0, records.height, 500):
            piece = records.slice(offset, 500)
            first.add(piece, _attempts(piece))
    first.close()

    second = PartWriter(run_dir, session="s2", metadata_columns=["team"])
    done_keys = second.completed_keys()
    for start in range(0, rows, BATCH):
        batch = pl.int_range(start, min(start + BATCH, rows), eager=True, dtype=pl.Int64)
        index = _index(batch)
        second.add_index(index)
        todo = index.filter(~pl.col("row_key").is_in(done_keys.implode())).get_column("row_index")
        records = _shuffled(_records(todo, status=Status.OK, seed=2), seed=start + 1)
        for offset in range(0, records.height, 500):
            piece = records.slice(offset, 500)
            second.add(piece, _attempts(piece))
    second.close()


def measure(run_dir: Path) -> dict[str, float]:
    """Assemble in this process and report peak RSS (MiB) and time."""
    from batchroute.store.assembly import assemble_results

    started = time.perf_counter()
    counts = assemble_results(run_dir)
    elapsed = time.perf_counter() - started
    peak_mib = _peak_rss_mib()
    rows = sum(counts.values())
    return {"rows": rows, "seconds": elapsed, "peak_mib": peak_mib, "ok": counts[Status.OK]}


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from
    the forking parent, so a child started by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _baseline_rss() -> float:
    """Peak RSS of a process that only imports what assembly imports."""
    code = (
        "import batchroute.store.assembly, runpy;"
        f"print(runpy.run_path({__file__!r})['_peak_rss_mib']())"
    )
    return float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run dirs here")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))  # noqa: T201 - a benchmark's output
        return

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_assembly_"))
    try:
        results = {}
        for rows in (args.small, args.rows):
            run_dir = root / f"run-{rows}"
            shutil.rmtree(run_dir, ignore_errors=True)
            started = time.perf_counter()
            make_run(run_dir, rows)
            made = time.perf_counter() - started
            child = subprocess.run(
                [sys.executable, __file__, "--measure", str(run_dir)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[rows] = json.loads(child.stdout)
            assert results[rows]["rows"] == rows, results[rows]
            seconds = results[rows]["seconds"]
            print(  # noqa: T201 - a benchmark's output
                f"{rows:>9,} rows: parts written in {made:.1f} s; assembled in {seconds:.2f} s "
                f"= {rows / seconds:,.0f} rows/s, peak RSS {results[rows]['peak_mib']:.0f} MiB"
            )
        base = _baseline_rss()
        small, large = results[args.small], results[args.rows]
        ratio = large["peak_mib"] / small["peak_mib"]
        print(  # noqa: T201 - a benchmark's output
            f"import-only baseline RSS {base:.0f} MiB; peak RSS ratio "
            f"{args.rows:,} / {args.small:,} rows = {ratio:.2f}x (target <= 1.5x); "
            f"above baseline: {(large['peak_mib'] - base) / max(small['peak_mib'] - base, 1):.2f}x"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
