"""What making climbs durable costs (issue 12): a climbing row waits for a group commit.

Before a row that failed its checks asks the next tier, its attempts so far are journaled and the
row waits for the commit that makes them durable (`engines/local.py` `_escalated`), so a crash
mid-escalation resumes the row where it was (`store/escalations.py`). The baseline, in the same
benchmark run, is the same job with that hook taken out (a climb is then durable only with its
row's outcome, as before). Both run as real `batchroute run` processes on the embedded simulator,
alternating, each mode `--repeat` times; the medians are compared.

The stress case: every row is routed to bulk and 30% of the bulk model's answers are cut short,
so about 30% of the rows climb to standard; the simulator answers after `--latency-ms`.

    python benchmarks/bench_climb.py                 # 4,000 rows, 3 runs of each mode
    python benchmarks/bench_climb.py --quick         # 1,000 rows
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRUNCATE_RATE = 0.3


def _child(mode: str, job: str) -> None:
    """Run the job in this process; in `baseline` mode without the durable-climb hook."""
    from batchroute.cli import main as cli
    from batchroute.engines import local

    if mode == "baseline":
        local.Session._escalated = None  # type: ignore[assignment,method-assign]
    cli(["run", job, "--quiet", "--no-cache"], standalone_mode=False)


def _rows(count: int, path: Path) -> None:
    sample = [json.loads(line) for line in (ROOT / "sample_data/prompts.jsonl").open()]
    with path.open("w") as out:
        for i in range(count):
            row = {"id": f"c{i:06d}", "prompt": f"{sample[i % len(sample)]['prompt']} (#{i})"}
            out.write(json.dumps({**row, "tier": "bulk"}) + "\n")


def _job(tmp: Path, name: str, rows: Path, *, latency_ms: float) -> Path:
    job: dict[str, Any] = yaml.safe_load((ROOT / "jobs/tests.yaml").read_text())
    job["name"] = name
    job["input"] = {**job["input"], "path": str(rows), "metadata_columns": []}
    job["output"] = {"dir": str(tmp / "runs" / name)}
    bulk = job["tiers"]["bulk"]
    bulk_model = bulk if isinstance(bulk, str) else bulk["model"]
    job["simulator"] = {  # no transient faults: the climbs alone differ between the modes
        "seed": 7,
        "default": {"latency_ms": latency_ms},
        "models": {bulk_model: {"truncate_rate": TRUNCATE_RATE}},
    }
    job["verify"] = {"default": ["not_truncated"], "max_escalations": 2}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _run(mode: str, job: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one `batchroute run` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = [sys.executable, __file__, "--child", mode, str(job)]
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=job.parent
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 rows instead of 4,000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    rows = 1_000 if args.quick else 4_000
    figures: dict[str, list[tuple[float, float]]] = {"durable": [], "baseline": []}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        data = tmp / "rows.jsonl"
        _rows(rows, data)
        climbed = {}
        for round_ in range(args.repeat):
            for mode in ("baseline", "durable"):
                job = _job(tmp, f"{mode}-{round_}", data, latency_ms=args.latency_ms)
                figures[mode].append(_run(mode, job))
                results = pl.read_parquet(tmp / "runs" / f"{mode}-{round_}" / "results.parquet")
                climbed[mode] = int((results["escalation_depth"] > 0).sum())
                assert (results["status"] == "ok").all(), mode
    cpu = {mode: statistics.median(c for c, _ in runs) for mode, runs in figures.items()}
    wall = {mode: statistics.median(w for _, w in runs) for mode, runs in figures.items()}
    print(
        f"bench_climb: {rows:,} bulk rows, {TRUNCATE_RATE:.0%} of bulk answers cut short, "
        f"simulator latency {args.latency_ms:g} ms; median of {args.repeat} runs each"
    )
    print(
        f"  rows that climbed:   durable {climbed['durable']:,}, baseline {climbed['baseline']:,}"
    )
    for label, values in (("CPU", cpu), ("wall", wall)):
        print(
            f"  {label + ',':<5} whole run: durable climbs {values['durable']:.2f} s, baseline "
            f"{values['baseline']:.2f} s -> ratio {values['durable'] / values['baseline']:.3f}"
        )


if __name__ == "__main__":
    main()
