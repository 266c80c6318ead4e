"""Issue 14: what durability costs. The same 5,000-row job with the journal on and off.

Each trial runs `batchroute run JOB.yaml --quiet` as its own process against one standalone
simulator process (zero latency, pinned to the last CPU when there are two or more), and reads
the process's CPU time (user + system) from `os.wait4`'s rusage. The two settings alternate,
three times each (on, off, off, on, on, off, so drift on a shared machine hits both), and the
medians are compared in the same run:

    on    the defaults: every answer goes to the journal in group commits (at once when the
          writer is idle, else every `output.commit_interval_ms` 25 ms: Arrow IPC records,
          CRC32-framed, one write and one fdatasync per commit), a row keeps its in-flight slot
          until its commit is durable, and the journal is compacted into Parquet parts at the
          end.
    off   no durable write until the run ends. The runner has no switch for that, since the
          slot hand-back depends on commits, so "off" starts batchroute with `Journal.commit`
          replaced by an append to memory: the runner commits on the same schedule, but nothing
          is encoded, written or synced, and at the end the held rows are written as the same
          Parquet parts in one go. What "off" leaves out is exactly the work durability adds.

First, why the journal's records are Arrow IPC streams: one commit's results and attempts are
encoded and decoded both as Arrow IPC and as JSON lines (IPC is about ten times cheaper).

Figures: wall time and CPU time of the whole process (including about 1 s of Python start-up
and imports, the same for both), the run's own wall time from run.json, and the same with the
fixed cost of a one-row run (`--limit 1`, measured in the same loop) taken off. Target: on/off
at most 1.05 for wall and CPU.

    python benchmarks/bench_durability.py                # 5,000 rows, 3 trials per setting
    python benchmarks/bench_durability.py --rows 2000 --trials 1   # a quick look
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from batchroute.sim import SimConfig, SimulatorProcess

_LAUNCH = """
import os, sys
if sys.argv[1] == "off":
    from batchroute.store.parts import PartWriter
    from batchroute.store.journal import Journal

    def commit(self, results, attempts):  # held in memory: nothing encoded, written or synced
        self.__dict__.setdefault("held", []).append((results, attempts))

    def close(self, *, compact=True):  # the same parts, written in one go at the end
        store = PartWriter(self.run_dir, session=self.session, ordinal=self.ordinal,
                                flush_rows=self.part_rows,
                                metadata_columns=None)
        for index in self._index:
            store.add_index(index)
        for results, attempts in self.__dict__.get("held", []):
            store.add(results, attempts)
        store.close()
        os.close(self._fd)
        self.path.unlink()

    Journal.commit = commit
    Journal.close = close
from batchroute.cli import main
main(sys.argv[2:], prog_name="batchroute")
"""

_PROMPTS = (
    "Summarise ticket {i}: the nightly export to the warehouse fails after the schema change.",
    "Extract the order id, customer and total from message {i} as JSON.",
    "Refactor the retry loop in payment handler {i} to remove the race condition.",
    "Translate UI string {i} ('Your refund is on its way') into German.",
    "Draft a two-line reply to customer {i} asking where their parcel is.",
)


@dataclass(frozen=True, slots=True)
class Trial:
    """One batchroute process: its exit code, wall and CPU seconds, and the run's own span."""

    code: int
    wall_s: float
    cpu_s: float
    run_s: float


def _sim_cpus() -> list[int] | None:
    cpus = os.sched_getaffinity(0)
    return [max(cpus)] if len(cpus) > 1 else None


def _write_input(path: Path, rows: int) -> None:
    with path.open("w") as out:
        for i in range(rows):
            prompt = _PROMPTS[i % len(_PROMPTS)].format(i=i)
            out.write(json.dumps({"id": f"r{i:06d}", "prompt": prompt}) + "\n")


def _job(data: Path, *, base_url: str, name: str) -> dict[str, Any]:
    output: dict[str, Any] = {"dir": "runs/{name}"}
    return {
        "name": name,
        "input": {"path": str(data), "id_column": "id", "prompt_column": "prompt"},
        "endpoint": {"base_url": base_url, "api_key_env": None, "timeout_s": 30},
        "request": {"max_tokens": 64},
        "tiers": {"complex": "big", "standard": "mid", "structured": "mid", "bulk": "small"},
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25, "fallback": "mid"},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15},
            "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1, "fallback": "mid"},
        },
        "output": output,
    }


def _run(workdir: Path, job: dict[str, Any], *, mode: str, extra: tuple[str, ...] = ()) -> Trial:
    job_path = workdir / f"{job['name']}.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=False))
    command = [sys.executable, "-c", _LAUNCH, mode, "run", str(job_path), "--quiet", *extra]
    command.append("--no-cache")  # a rerun re-buys what the journal lost, not what a cache kept
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
    manifest = json.loads((workdir / "runs" / job["name"] / "run.json").read_text())
    session = manifest["sessions"][-1]
    span = datetime.fromisoformat(session["ended_at"]) - datetime.fromisoformat(
        session["started_at"]
    )
    return Trial(
        code=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        run_s=span.total_seconds(),
    )


def _record_formats() -> None:
    """Why journal records are Arrow IPC: one commit's results and attempts, encoded and decoded
    as Arrow IPC streams and as JSON lines, median of 200 each."""
    from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA

    def frame(rows: int, schema: pl.Schema) -> pl.DataFrame:
        columns: dict[str, list[Any]] = {}
        for name, dtype in schema.items():
            if dtype == pl.String:
                columns[name] = [f"{name} {i}: a short answer of a few words" for i in range(rows)]
            elif dtype.is_integer():
                columns[name] = list(range(rows))
            else:
                columns[name] = [None] * rows
        return pl.DataFrame(columns, schema=schema, strict=False)

    def ipc(frames: tuple[pl.DataFrame, ...]) -> list[bytes]:
        out = []
        for item in frames:
            buffer = io.BytesIO()
            item.write_ipc_stream(buffer, compression="uncompressed")
            out.append(buffer.getvalue())
        return out

    def ndjson(frames: tuple[pl.DataFrame, ...]) -> list[bytes]:
        return [item.write_ndjson().encode() for item in frames]

    print("journal record formats: encode + decode of one commit, median of 200")
    for rows in (20, 200):
        frames = (frame(rows, RESULT_SCHEMA), frame(rows, ATTEMPT_SCHEMA))
        readers = {
            "ipc": lambda data, _: pl.read_ipc_stream(io.BytesIO(data)),
            "ndjson": lambda data, schema: pl.read_ndjson(io.BytesIO(data), schema=schema),
        }
        for label, encode in (("ipc", ipc), ("ndjson", ndjson)):
            times = []
            for _ in range(200):
                started = time.perf_counter()
                blobs = encode(frames)
                for blob, item in zip(blobs, frames, strict=True):
                    readers[label](blob, item.schema)
                times.append(time.perf_counter() - started)
            print(f"  {rows:4d} rows {label:7} {statistics.median(times) * 1e6:8.0f} us")


def _median(trials: list[Trial], field: str) -> float:
    return statistics.median(float(getattr(trial, field)) for trial in trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    _record_formats()

    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorProcess(SimConfig(), cpus=_sim_cpus()) as sim,
    ):
        workdir = Path(tmp)
        data = workdir / "prompts.jsonl"
        _write_input(data, args.rows)
        results: dict[str, list[Trial]] = {"on": [], "off": [], "fixed": []}
        orders = [("on", "off"), ("off", "on")]
        for number in range(args.trials):
            for mode in orders[number % 2]:
                name = f"{mode}-{number}"
                job = _job(data, base_url=sim.base_url, name=name)
                trial = _run(workdir, job, mode=mode)
                if trial.code != 0:
                    raise SystemExit(f"run {name} exited {trial.code}")
                results[mode].append(trial)
            one_row = _job(data, base_url=sim.base_url, name=f"fixed-{number}")
            results["fixed"].append(_run(workdir, one_row, mode="on", extra=("--limit", "1")))
        requests = sim.stats()["total"]

    print(f"durability: {args.rows} rows, {args.trials} trials per setting, medians")
    print(f"  server requests: {requests} (expected {2 * args.trials * args.rows + args.trials})")
    print(f"  {'':8} {'wall s':>8} {'cpu s':>8} {'run s':>8}")
    for mode in ("on", "off", "fixed"):
        trials = results[mode]
        print(
            f"  {mode:8} {_median(trials, 'wall_s'):8.2f} {_median(trials, 'cpu_s'):8.2f} "
            f"{_median(trials, 'run_s'):8.2f}"
        )
    for field, label in (("wall_s", "wall"), ("cpu_s", "cpu"), ("run_s", "run span")):
        on, off, fixed = (_median(results[mode], field) for mode in ("on", "off", "fixed"))
        net = (on - fixed) / (off - fixed) if off > fixed else float("nan")
        print(f"  on/off {label:9} {on / off:.3f}   net of the one-row run: {net:.3f}")
    print("  target: on/off <= 1.05 for wall and cpu")


if __name__ == "__main__":
    main()
