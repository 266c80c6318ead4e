"""Issue 5: memory stays bounded however large the input.

Generates realistic JSONL inputs of two sizes (default 100,000 and 1,000,000 rows; not
committed), runs `batchroute run` end to end on each as a subprocess against a standalone
simulator process at zero latency, and reports for each: peak RSS of the batchroute process,
throughput in rows/s and the time to the first request. The figure that matters is the ratio of
the two peaks (target: the large run's peak at most 1.5x the small run's).

`--classify-share` also times every call of the router's `classify` inside the run (issue 11
asks what share of a 1M-row run's wall time goes to classifying). The run is then started
through a small wrapper that times the calls and prints their total when the process exits.

    python benchmarks/bench_scale.py                  # 100k and 1M rows (about 30 minutes here)
    python benchmarks/bench_scale.py --small 20000 --large 200000   # a quicker look
    python benchmarks/bench_scale.py --classify-share --small 20000 --large 1000000
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _server import running_simulator  # noqa: E402

SUBJECTS = [
    "the billing service",
    "our Kafka consumer",
    "the onboarding email",
    "the churn model",
    "this SQL query",
    "the on-call runbook",
    "the mobile login screen",
    "the nightly ETL job",
]
TASKS = [
    "Summarise the open issues with {s} for the weekly review.",
    "Extract the owner, deadline and status of {s} as JSON.",
    "Refactor {s} to remove the race condition in its retry loop.",
    "Add docstrings to every public function in {s}.",
    "Explain the trade-offs of rewriting {s} in Go.",
    "Draft a short customer-facing note about changes to {s}.",
    "Generate unit tests for {s}.",
    "Parse this log line from {s} and return the fields: 2026-11-27 ERROR timeout after 30s",
]


def write_input(path: Path, rows: int, *, seed: int = 1) -> None:
    """A JSONL of `rows` varied prompts (about 120 bytes each)."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(rows):
            prompt = rng.choice(TASKS).format(s=rng.choice(SUBJECTS))
            out.write(json.dumps({"id": f"row-{i}", "prompt": f"{prompt} [{i}]"}) + "\n")


def write_job(path: Path, *, data: Path, base_url: str, run_dir: Path) -> None:
    job = {
        "name": "scale",
        "input": {"path": str(data), "id_column": "id", "prompt_column": "prompt"},
        "endpoint": {"base_url": base_url, "api_key_env": None, "timeout_s": 60},
        "request": {"max_tokens": 64},
        "tiers": {"complex": "big", "standard": "mid", "structured": "mid", "bulk": "small"},
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25, "max_concurrency": 256},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15, "max_concurrency": 256},
            "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1, "max_concurrency": 256},
        },
        "output": {"dir": str(run_dir), "checkpoint_rows": 5000},
        "cache": {"path": str(run_dir.parent / f"cache-{run_dir.name}.sqlite3")},  # no hits
        "run": {"max_in_flight": 128},
    }
    path.write_text(yaml.safe_dump(job))


TIMED_RUN = """
import atexit, sys, time
from batchroute.classify.router import Router
from batchroute.cli import entry

out = sys.argv.pop()
spent = [0.0]
classify = Router.classify

def timed(self, *args, **kwargs):
    started = time.perf_counter()
    try:
        return classify(self, *args, **kwargs)
    finally:
        spent[0] += time.perf_counter() - started

Router.classify = timed
atexit.register(lambda: open(out, "w").write(repr(spent[0])))
entry()
"""
"""`python -c TIMED_RUN run JOB --quiet OUT`: a run that writes its seconds in `classify` to OUT."""


def _sim_total(stats_url: str) -> int:
    with urllib.request.urlopen(stats_url) as response:
        return int(json.loads(response.read())["total"])


def measure(
    rows: int, workdir: Path, base_url: str, *, classify_share: bool = False
) -> dict[str, float]:
    """Run one size end to end; return peak RSS (MiB), rows/s and seconds to first request."""
    data = workdir / f"in-{rows}.jsonl"
    write_input(data, rows)
    job = workdir / f"job-{rows}.yaml"
    write_job(job, data=data, base_url=base_url, run_dir=workdir / f"run-{rows}")
    stats_url = base_url.removesuffix("/v1") + "/sim/stats"
    before = _sim_total(stats_url)
    started = time.perf_counter()
    command = [sys.executable, "-m", "batchroute", "run", str(job), "--quiet"]
    classify_file = workdir / f"classify-{rows}.txt"
    if classify_share:
        command[1:3] = ["-c", TIMED_RUN]
        command.append(str(classify_file))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    first_request = float("nan")
    while True:  # wait4 with WNOHANG reaps the child itself, so its rusage is not lost
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if first_request != first_request and _sim_total(stats_url) > before:
            first_request = time.perf_counter() - started
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"batchroute run exited {os.waitstatus_to_exitcode(status)} on {rows} rows"
        )
    figures = {
        "rows": rows,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "rows_per_s": rows / elapsed,
        "first_request_s": first_request,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": elapsed,
    }
    if classify_share:
        figures["classify_s"] = float(classify_file.read_text())
        figures["classify_share_of_wall"] = figures["classify_s"] / elapsed
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument(
        "--classify-share", action="store_true", help="time the router's classify calls too"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_simulator() as base_url:
        small = measure(args.small, Path(tmp), base_url, classify_share=args.classify_share)
        print(json.dumps(small))
        large = measure(args.large, Path(tmp), base_url, classify_share=args.classify_share)
        print(json.dumps(large))
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    print(
        f"peak RSS: {small['peak_rss_mib']:.0f} MiB for {args.small:,} rows, "
        f"{large['peak_rss_mib']:.0f} MiB for {args.large:,} rows: ratio {ratio:.2f} "
        f"(target <= 1.5)"
    )
    print(
        f"throughput: {small['rows_per_s']:.0f} and {large['rows_per_s']:.0f} rows/s; "
        f"first request after {small['first_request_s']:.2f} s and {large['first_request_s']:.2f} s"
    )
    if args.classify_share:
        print(
            f"classifying: {large['classify_s']:.1f} s of the {args.large:,}-row run's "
            f"{large['wall_s']:.0f} s wall ({large['classify_share_of_wall']:.1%})"
        )


if __name__ == "__main__":
    main()
