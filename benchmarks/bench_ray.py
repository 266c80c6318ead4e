"""The Ray engine's cost (issue 17): CPU per 1,000 requests against the single-process engine's,
and the lease actor's calls per 1,000 requests (target: at most 20).

The simulator runs in its own process (pinned to the last CPU when there are two or more) and its
CPU is not counted. Both engines run the same job over the same prompts (every tier on one model
with an rpm far above what the simulator can serve, so every request goes through the lease
machinery, and a budget cap far above the spend, so the budget is leased too):

    local   `run_job` in this process: CPU = this process's CPU.
    ray     `run_job --engine ray` on a local Ray instance of this machine's CPUs, started and
            warmed up (worker processes running) before the measurement: CPU = this process
            (the driver) + every process Ray started (GCS, raylet, workers, actors), as psutil
            sees them, minus the simulator.

Both figures are from the same run, so the ratio holds on a noisy shared machine even when the
absolute numbers do not. The whole runs are measured: reading, classification, dispatch, the
journal, assembly and the reports. These runs use `--no-cache`, so that every request is sent
(the warm-up runs share prompts with the measured ones).

The response cache on Ray: a job whose answers are long enough to finish (so they are stored),
run on Ray three times, each in a fresh run directory, with a cache private to this benchmark:
`off` (--no-cache, the baseline), `cold` (the cache is empty: every answer is sent and stored
through the driver node's cache host) and `warm` (every row is a hit at the driver). It prints
the cold run against off (what storing costs), the warm run against cold, and the requests
each sent.

    python benchmarks/bench_ray.py            # 4,000 requests, 2 workers
    python benchmarks/bench_ray.py --quick    # 1,000 requests
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from batchroute.config import load_job
from batchroute.engines.local import RunOptions, run_job
from batchroute.progress import Progress
from batchroute.sim import SimConfig, SimulatorProcess


def _write_job(root: Path, base_url: str, rows: int, workers: int, *, max_tokens: int = 16) -> Path:
    data = root / "prompts.jsonl"
    with data.open("w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"id": f"r{i}", "prompt": f"Summarise ticket {i}."}) + "\n")
    job = {
        "name": "bench",
        "input": {"path": str(data), "id_column": "id"},
        "endpoint": {"base_url": base_url, "api_key_env": None},
        "request": {"max_tokens": max_tokens},
        "tiers": {"complex": "m", "standard": "m", "structured": "m", "bulk": "m"},
        "models": {"m": {"input_per_mtok": 1, "output_per_mtok": 2, "rpm": 600_000}},
        "baseline_model": "m",
        "budget": {"max_cost_usd": 1000},
        "run": {"max_in_flight": 128},
        "engine": {"kind": "local", "workers": workers},
        "output": {"dir": str(root / "runs" / "{time}")},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _tree_cpu(exclude: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) of this process and every descendant, by pid."""
    me = psutil.Process()
    found: dict[int, float] = {}
    for process in [me, *me.children(recursive=True)]:
        if process.pid in exclude:
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        found[process.pid] = times.user + times.system + times.children_user + times.children_system
    return found


def _run(
    job_path: Path, run_dir: Path, engine: str, exclude: set[int], *, no_cache: bool = True
) -> tuple[float, float]:
    job = load_job(job_path)
    before = _tree_cpu(exclude)
    started = time.perf_counter()
    summary = run_job(
        job,
        RunOptions(run_dir=run_dir, engine=engine, no_cache=no_cache),
        progress=Progress(live=False, enabled=False),
    )
    wall = time.perf_counter() - started
    after = _tree_cpu(exclude)
    assert int(summary.exit_code) == 0, summary.message
    cpu = sum(value - before.get(pid, 0.0) for pid, value in after.items())
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 requests")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = args.rows or (1000 if args.quick else 4000)
    cpus = os.sched_getaffinity(0)
    sim_cpus = [max(cpus)] if len(cpus) > 1 else None
    import ray

    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess(SimConfig(), cpus=sim_cpus) as sim:
        root = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(root / "xdg")  # never the user's response cache
        exclude = {sim.pid}
        job = _write_job(root, sim.base_url, rows, args.workers)
        (root / "warm").mkdir()
        warm = _write_job(root / "warm", sim.base_url, 200, args.workers)
        _run(warm, root / "warm-local", "local", exclude)
        local_cpu, local_wall = _run(job, root / "local", "local", exclude)
        ray.init(num_cpus=max(2, args.workers), include_dashboard=False, logging_level="ERROR")
        try:
            _run(warm, root / "warm-ray", "ray", exclude)  # start the worker processes
            ray_cpu, ray_wall = _run(job, root / "ray", "ray", exclude)
            manifest: dict[str, Any] = json.loads((root / "ray" / "run.json").read_text())
            (root / "cached").mkdir()
            cached = _write_job(root / "cached", sim.base_url, rows, args.workers, max_tokens=1024)
            runs = []
            for name in ("off", "cold", "warm"):
                sent = int(sim.stats()["total"])
                cpu, wall = _run(cached, root / name, "ray", exclude, no_cache=name == "off")
                runs.append((name, cpu, wall, int(sim.stats()["total"]) - sent))
        finally:
            ray.shutdown()
    calls = int(manifest["engine"]["limiter_calls"])
    print(f"{rows} requests, {args.workers} Ray workers, simulator on its own CPU: {sim_cpus}")
    print(f"{'engine':8} {'CPU s':>8} {'wall s':>8} {'CPU s / 1k req':>15}")
    for name, cpu, wall in (("local", local_cpu, local_wall), ("ray", ray_cpu, ray_wall)):
        print(f"{name:8} {cpu:8.2f} {wall:8.2f} {1000 * cpu / rows:15.3f}")
    print(f"ray / local CPU per request: {ray_cpu / local_cpu:.2f}")
    print(
        f"lease actor calls: {calls} = {1000 * calls / rows:.1f} per 1,000 requests (target <= 20)"
    )
    print(f"\nthe response cache on Ray ({rows} rows; off = --no-cache)")
    print(f"{'run':8} {'CPU s':>8} {'wall s':>8} {'requests':>9}")
    for name, cpu, wall, sent in runs:
        print(f"{name:8} {cpu:8.2f} {wall:8.2f} {sent:9d}")
    (_, off_cpu, off_wall, _), (_, cold_cpu, cold_wall, _), (_, warm_cpu, warm_wall, _) = runs
    print(f"cold / off (storing): wall {cold_wall / off_wall:.2f}, CPU {cold_cpu / off_cpu:.2f}")
    print(f"warm / cold (served): wall {warm_wall / cold_wall:.2f}, CPU {warm_cpu / cold_cpu:.2f}")


if __name__ == "__main__":
    main()
