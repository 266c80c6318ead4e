"""Batch mode at scale (issue 16): 100,000 rows through the Batch API on the simulator.

The simulator runs in its own process, so only batchroute's CPU is measured. Each workload runs
in a fresh child process (this script with `--phase`), so its peak RSS is its own:

    (a) read      the in-run baseline: read and validate the input file (`open_dataset`), and
                  classify it, as a run does before anything is sent
    (b) run       `batchroute run` of the same file with every row in a batch-mode tier:
                  submit (build the input files, upload, create, ledger), poll, collect (download,
                  map back by custom_id, journal), then assembly and the reports

Reported: CPU per 1,000 rows of each batch phase, the whole run's CPU against (a), and peak RSS
against (a). The simulator's batch clock is 1 s, so wall time is mostly the simulator answering.

    python benchmarks/bench_batch.py              # 100,000 rows
    python benchmarks/bench_batch.py --rows 20000
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from batchroute.sim import SimConfig, SimulatorProcess


def _write_input(path: Path, rows: int) -> None:
    with path.open("w") as handle:
        for i in range(rows):
            prompt = f"Rewrite this paragraph so it reads well for a general audience (case {i})."
            handle.write(json.dumps({"id": f"r{i:07d}", "prompt": prompt, "tier": "bulk"}) + "\n")


def _write_job(directory: Path, base_url: str) -> Path:
    job = {
        "name": "bench-batch",
        "input": {"path": str(directory / "prompts.jsonl"), "id_column": "id"},
        "endpoint": {"base_url": base_url, "api_key_env": None, "timeout_s": 120},
        "request": {"max_tokens": 64},
        "tiers": {"standard": "mid", "bulk": {"model": "small", "mode": "batch"}},
        "models": {
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15},
            "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1, "batch_discount": 0.5},
        },
        "batch": {"poll_initial_s": 0.5, "poll_max_s": 2},
        "output": {"dir": str(directory / "runs")},
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _phase_read(job_path: Path) -> dict[str, Any]:
    from batchroute.classify import build_router
    from batchroute.config import load_job
    from batchroute.dataset import open_dataset

    job = load_job(job_path)
    started = time.process_time()
    dataset = open_dataset(job)
    dataset.check()
    router = build_router(job)
    rows = sum(router.classify(batch.rows).height for batch in dataset.batches(batch_rows=10_000))
    return {"rows": rows, "cpu_s": time.process_time() - started, "peak_rss_mb": _peak_rss_mb()}


def _phase_run(job_path: Path) -> dict[str, Any]:
    from batchroute.config import load_job
    from batchroute.dispatch import batch as batch_module
    from batchroute.engines.local import RunOptions, run_job
    from batchroute.progress import Progress

    cpu: dict[str, float] = {"submit": 0.0, "poll": 0.0, "collect": 0.0}
    runner = batch_module.BatchRunner

    def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return await method(*args, **kwargs)
            finally:
                cpu[name] += time.process_time() - started

        return wrapper

    runner._submit_queued = timed("submit", runner._submit_queued)  # type: ignore[method-assign]
    runner._poll_open = timed("poll", runner._poll_open)  # type: ignore[method-assign]
    runner._collect = timed("collect", runner._collect)  # type: ignore[method-assign]
    job = load_job(job_path)
    started = time.process_time()
    summary = run_job(job, RunOptions(), progress=Progress(live=False, enabled=False))
    total = time.process_time() - started
    cpu["poll"] -= cpu["collect"]  # collection happens inside a poll
    return {
        "exit_code": int(summary.exit_code),
        "counts": summary.counts,
        "cpu_s": total,
        "phases_cpu_s": cpu,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _child(phase: str, job_path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--job", str(job_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=job_path.parent,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--phase", choices=["read", "run"], help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        phase = _phase_read if args.phase == "read" else _phase_run
        print(json.dumps(phase(args.job)))
        return
    cpus = os.cpu_count() or 1
    sim_cpus = [cpus - 1] if cpus >= 2 else None
    config = SimConfig.model_validate({"batch": {"completion_s": 1.0}})
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess(config, cpus=sim_cpus) as sim:
        directory = Path(tmp)
        _write_input(directory / "prompts.jsonl", args.rows)
        job_path = _write_job(directory, sim.base_url)
        wall = time.perf_counter()
        read = _child("read", job_path)
        run = _child("run", job_path)
        wall = time.perf_counter() - wall
    per_k = 1000 / args.rows
    print(f"rows: {args.rows:,}  (wall {wall:.1f} s, both phases; simulator in its own process)")
    print(f"run: exit {run['exit_code']}, counts {run['counts']}")
    for label, figures in (("(a) read+classify baseline:", read), ("(b) batch run:", run)):
        print(f"{label:<29}{figures['cpu_s']:.2f} s CPU, peak RSS {figures['peak_rss_mb']:.0f} MB")
    for name, seconds in run["phases_cpu_s"].items():
        print(f"    {name:<8} {seconds * per_k * 1000:8.2f} ms CPU per 1,000 rows")
    print(f"ratio CPU (b)/(a):      {run['cpu_s'] / read['cpu_s']:.2f}")
    print(f"ratio peak RSS (b)/(a): {run['peak_rss_mb'] / read['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
