"""Read-only throughput and peak memory of batchroute's input reader, 1M rows against 100k.

    python benchmarks/bench_read.py [--rows 1000000] [--small 100000] [--batch-rows 10000]

Generates two JSONL files of realistic prompts (not committed), then, each in a fresh process so
that peak RSS is its own, runs what the runner does before and while dispatching: `check()` (one
full pass) and then every `batches()` batch. The baseline, measured in the same run, is the same
work on the small file, and polars loading the large file whole with `read_ndjson`, which is what
bounded memory avoids. Target: the large file's peak RSS at most 1.5x the small file's.
"""

# ruff: noqa: T201  (a benchmark prints its figures)
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

_TEMPLATES = [
    "Summarise incident INC-{a} for the weekly ops review: checkout returned intermittent 502s "
    "after build {b} rolled out to region eu-west-{c}. Give the timeline, the suspected cause "
    "and the follow-up actions, in under 150 words.",
    "Extract the customer name, order id and refund amount from this email and return them as "
    "JSON with keys name, order_id, amount.\n\nHi team, this is about order #{a}-{b}; I was "
    "charged twice ({c}9.99 EUR) and would like one charge refunded. Thanks, Dana K.",
    "Refactor the retry loop in payments/worker_{c}.py: the lock is released before the ledger "
    "write, so two workers can settle payout {a} twice. Explain the race condition and show "
    "the fixed code.",
    "Add docstrings to every public function in utils/dates_{c}.py. Keep them to one line and "
    "do not change behaviour. Module version {b}, ticket {a}.",
    "What is the difference between a LEFT JOIN and a LEFT SEMI JOIN in Spark SQL? Our job "
    "{a} on cluster {c} takes {b} seconds and I suspect the join type.",
]


def generate(path: Path, rows: int) -> None:
    """Write `rows` JSONL rows of realistic, distinct prompts (vectorised)."""
    rng = np.random.default_rng(rows)
    frame = pl.DataFrame(
        {
            "t": rng.integers(0, len(_TEMPLATES), rows),
            "a": rng.integers(10_000, 99_999, rows),
            "b": rng.integers(100, 9_999, rows),
            "c": rng.integers(1, 9, rows),
        }
    ).with_row_index("n")
    prompt = pl.lit(None, pl.String)
    for index, template in reversed(list(enumerate(_TEMPLATES))):
        pieces = template.replace("{a}", "\0a\0").replace("{b}", "\0b\0").replace("{c}", "\0c\0")
        parts = [pl.col(p) if p in "abc" and p else pl.lit(p) for p in pieces.split("\0") if p]
        prompt = pl.when(pl.col("t") == index).then(pl.concat_str(parts)).otherwise(prompt)
    frame.select(
        pl.format("req-{}", pl.col("n")).alias("id"),
        prompt.alias("prompt"),
        pl.col("t").cast(pl.String).alias("team"),
        pl.when(pl.col("n") % 50 == 0).then(pl.lit("complex")).alias("tier"),
    ).write_ndjson(path)


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across exec
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(path: Path, *, mode: str, batch_rows: int) -> None:
    """Run one measurement in this (fresh) process and print it as JSON."""
    started = time.perf_counter()
    if mode == "whole":
        rows = pl.read_ndjson(path).height
        check_s = 0.0
    else:
        from batchroute.config import Job, parse_job
        from batchroute.dataset import open_dataset

        data = {
            "name": "bench",
            "input": {"path": str(path), "id_column": "id", "metadata_columns": ["team"]},
            "tiers": {"standard": "m"},
            "models": {"m": {"input_per_mtok": 1, "output_per_mtok": 1}},
            "run": {"batch_rows": batch_rows},
        }
        job = Job(parse_job(data, path=path), path=path, text_sha256="0" * 64)
        dataset = open_dataset(job)
        dataset.check()
        check_s = time.perf_counter() - started
        rows = sum(batch.rows.height for batch in dataset.batches())
    seconds = time.perf_counter() - started
    result = {"rows": rows, "seconds": seconds, "check_s": check_s, "peak_rss_mb": _peak_rss_mb()}
    sys.stdout.write(json.dumps(result) + "\n")


def measure(path: Path, *, mode: str, batch_rows: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(path), "--mode", mode]
    command += ["--batch-rows", str(batch_rows)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--child", type=Path)
    parser.add_argument("--mode", choices=["stream", "whole"], default="stream")
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, mode=args.mode, batch_rows=args.batch_rows)
        return
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small.jsonl", Path(tmp) / "large.jsonl"
        generate(small, args.small)
        generate(large, args.rows)
        mb = large.stat().st_size / 1e6
        print(f"files: {args.small:,} rows; {args.rows:,} rows ({mb:,.0f} MB)")
        base = measure(small, mode="stream", batch_rows=args.batch_rows)
        big = measure(large, mode="stream", batch_rows=args.batch_rows)
        whole = measure(large, mode="whole", batch_rows=args.batch_rows)
    for name, result in [(f"{args.small:,}", base), (f"{args.rows:,}", big)]:
        rate = result["rows"] / result["seconds"]
        print(
            f"stream {name:>10} rows: check + batches {result['seconds']:6.2f} s "
            f"(check {result['check_s']:.2f} s), {rate:9,.0f} rows/s over both passes, "
            f"peak RSS {result['peak_rss_mb']:7.1f} MB"
        )
    print(
        f"whole-file pl.read_ndjson {args.rows:,} rows: {whole['seconds']:.2f} s, "
        f"peak RSS {whole['peak_rss_mb']:.1f} MB"
    )
    ratio = big["peak_rss_mb"] / base["peak_rss_mb"]
    print(f"peak RSS ratio large/small: {ratio:.2f}x (target <= 1.5x)")
    print(f"peak RSS whole-file load / streaming: {whole['peak_rss_mb'] / big['peak_rss_mb']:.2f}x")
    rate_ratio = (big["rows"] / big["seconds"]) / (base["rows"] / base["seconds"])
    print(f"throughput large/small: {rate_ratio:.2f}x (1.0 = no slowdown with size)")


if __name__ == "__main__":
    main()
