"""Client overhead (issue 2): CPU per request of plain AsyncOpenAI loops against the Dispatcher.

The simulator runs in its own process (pinned to the last CPU when there are two or more), so
only the client's CPU is measured: `time.process_time()` of this process around each workload.
Every workload sends the same requests with the same number of worker tasks.

    (a) sdk-httpx     client.chat.completions.create, the SDK's default httpx transport
    (b) sdk-aiohttp   the same with http_client=DefaultAioHttpClient()
    (c) raw-post      client.post(..., cast_to=httpx2.Response) + json.loads: the best plain loop
    (d) dispatcher    batchroute.dispatch.Dispatcher (limiters, probes, bookkeeping, records)

    (e) raw-post-proc (c) as a whole Python process (`_raw_post.py`), imports and start-up included
    (f) batchroute    the whole `batchroute run` process on a JSONL of the same prompts:
                      reading, validation, classification, row keys, limiters, bookkeeping,
                      durable parts, assembly of results.parquet and the reports
    (g) batchroute-base (f) with another version's package (`--baseline-src DIR`), in the same
                      rounds: old code against new on the same machine at the same time
    (h) batchroute-nocache  (f) with the response cache off (`cache: {read: false, write: false}`)
    (i) batchroute-rules    (f) with the keyword rules alone (`classifier: {kind: rules}`): no model
                      (h) and (i) say what two features cost within (f), measured in the same rounds
    (j) batchroute-offline  (f) with every HTTP attempt answered at once in process
                      (`_offline_run.py`): batchroute's own CPU, with no client or server in it

The figures that matter are (d)/(c), the dispatcher's overhead in steady state, and (f)/(e),
the whole tool against the best plain loop as a whole process (targets: at most 1.2 for the
dispatcher, and 1.15 for the whole process, issue 15).

By default the measured processes are pinned to the CPUs the simulator leaves free (one, on a
2-core machine). `--no-pin` leaves them every CPU, as a cron job runs: libraries that start a
thread per core (numpy's OpenBLAS) then cost what they cost in production.

The machine is shared and noisy, so the figures are ratios measured in the same run, and
`--rounds N` repeats every workload N times in alternating order (forward, then backward) and
reports the median of the per-round ratios. `--split` also runs (e) and (f) on 10 requests in
every round, to tell each side's fixed cost (start-up, reading, reports) from its CPU per
request.

Both processes run with a bytecode cache (a temporary `PYTHONPYCACHEPREFIX`, written by one
warm-up run of each): a batchroute installed from a wheel has its `.pyc` files, like the
libraries both sides import, and an environment with `PYTHONDONTWRITEBYTECODE` would otherwise
charge batchroute, and only batchroute, for compiling its own sources on every run.
`--no-bytecode-cache` keeps the environment as it is.

`--instructions` counts the instructions each process ran, under valgrind's cachegrind with no
cache simulation, instead of its CPU time. The count does not move with the machine's load (a
rerun agrees within 0.3%, where CPU-time rounds spread by 0.1-0.3x), so it says
which way a change moved the code's work. It does not see the memory system: at concurrency 256
the raw loop's CPU per instruction is worse than at 64, and so its CPU ratio is better than its
instruction ratio. One round is enough; each process runs about 40 times slower.

    python benchmarks/bench_overhead.py            # 5,000 requests at concurrency 64 and 256
    python benchmarks/bench_overhead.py --quick    # 1,000 requests
    python benchmarks/bench_overhead.py --only raw-post-proc batchroute --rounds 5 --split
    python benchmarks/bench_overhead.py --only raw-post-proc batchroute batchroute-nocache \
        batchroute-rules --rounds 7 --concurrency 64      # what the cache and the model cost
    python benchmarks/bench_overhead.py --only raw-post-proc batchroute batchroute-offline \
        --rounds 5 --concurrency 64 --split               # batchroute's own CPU per request
    python benchmarks/bench_overhead.py --only raw-post-proc batchroute batchroute-nocache \
        batchroute-rules batchroute-offline --instructions --split   # the same, in instructions
    git archive REV batchroute | tar -x -C /tmp/base && python benchmarks/bench_overhead.py \
        --only raw-post-proc batchroute batchroute-base --baseline-src /tmp/base --rounds 7
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import openai

from batchroute.config import Job, parse_job
from batchroute.dispatch.dispatcher import Dispatcher, RowRequest
from batchroute.pricing.prices import resolve_prices
from batchroute.pricing.tokens import count_message_tokens
from batchroute.sim import SimConfig, SimulatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _raw_post
from _raw_post import MODEL, messages

RAW_POST_SCRIPT = Path(__file__).with_name("_raw_post.py")
"""(e)'s process: the raw-post loop importing only what it needs (openai, anyio, httpx2, json)."""
OFFLINE_RUN_SCRIPT = Path(__file__).with_name("_offline_run.py")
"""(j)'s process: `batchroute run` with each HTTP attempt answered in process."""
Workload = Callable[[str, int, int], Awaitable[float | None]]
"""(base_url, requests, concurrency) -> the process's figure if the workload runs one (CPU
seconds, or billions of instructions with `--instructions`), else None: this process's CPU."""


async def _workers(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            await one(i)

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)


def _sdk_client(base_url: str, *, aiohttp: bool) -> openai.AsyncOpenAI:
    http_client = openai.DefaultAioHttpClient() if aiohttp else None
    return openai.AsyncOpenAI(
        api_key="k", base_url=base_url, max_retries=0, http_client=http_client
    )


async def sdk_httpx(base_url: str, count: int, concurrency: int) -> None:
    async with _sdk_client(base_url, aiohttp=False) as client:

        async def one(i: int) -> None:
            await client.chat.completions.create(model=MODEL, messages=messages(i), max_tokens=64)  # type: ignore[arg-type]

        await _workers(count, concurrency, one)


async def sdk_aiohttp(base_url: str, count: int, concurrency: int) -> None:
    async with _sdk_client(base_url, aiohttp=True) as client:

        async def one(i: int) -> None:
            await client.chat.completions.create(model=MODEL, messages=messages(i), max_tokens=64)  # type: ignore[arg-type]

        await _workers(count, concurrency, one)


async def raw_post(base_url: str, count: int, concurrency: int) -> None:
    await _raw_post.run(base_url, count, concurrency)


def _job(concurrency: int) -> Job:
    config = parse_job(
        {
            "name": "bench",
            "input": {"path": "unused.jsonl"},
            "request": {"max_tokens": 64},
            "tiers": {"standard": MODEL},
            "models": {
                MODEL: {"input_per_mtok": 1, "output_per_mtok": 2, "max_concurrency": concurrency}
            },
        },
        path=Path("bench.yaml"),
    )
    return Job(config, path=Path("bench.yaml"), text_sha256="0" * 64)


async def dispatcher(base_url: str, count: int, concurrency: int) -> None:
    job = _job(concurrency)
    rows = []
    for i in range(count):
        chat = messages(i)
        rows.append(RowRequest(str(i), i, str(i), "standard", chat, count_message_tokens(chat)))
    async with Dispatcher(job, prices=resolve_prices(job), base_urls={"simulator": base_url}) as d:

        async def one(i: int) -> None:
            outcome = await d.dispatch(rows[i])
            assert outcome.status == "ok", outcome.error_message

        await _workers(count, concurrency, one)


CHILD_ENV: dict[str, str] | None = None
"""The environment of (e) and (f)'s processes; None: this process's (see `main`)."""


BASELINE_SRC: str | None = None
"""`--baseline-src`: a directory holding another version's `batchroute/` package."""


COUNT_INSTRUCTIONS = False
"""`--instructions`: a process workload's figure is the instructions it ran (in billions), counted
by valgrind, instead of its CPU seconds."""
VALGRIND = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
_INSTRUCTIONS = re.compile(r"I\s+refs:\s+([\d,]+)")
FIGURE, UNIT, TOTAL_UNIT, FINE_UNIT = "CPU", "CPU-ms", "s of CPU", "us of CPU"
"""What is measured, per request, in all, and in thousandths of a request's unit; `main` sets
them for `--instructions`."""


def _child_cost(command: list[str], *, env: dict[str, str] | None = None) -> float:
    """Run a command to the end; return its figure: its user + system CPU seconds, or with
    `--instructions` the billions of instructions it ran (cachegrind's summary)."""
    if COUNT_INSTRUCTIONS:
        done = subprocess.run(
            [*VALGRIND, *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env or CHILD_ENV,
            text=True,
            check=False,
        )
        counted = _INSTRUCTIONS.search(done.stderr)
        if done.returncode != 0 or counted is None:
            raise SystemExit(f"{command[:4]} exited {done.returncode}: {done.stderr[-2000:]}")
        return int(counted.group(1).replace(",", "")) / 1e9
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env or CHILD_ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:4]} exited {os.waitstatus_to_exitcode(status)}")
    return usage.ru_utime + usage.ru_stime


async def raw_post_process(base_url: str, count: int, concurrency: int) -> float:
    command = [sys.executable, str(RAW_POST_SCRIPT), base_url, str(count), str(concurrency)]
    return await anyio.to_thread.run_sync(_child_cost, command)


async def batchroute_run(
    base_url: str,
    count: int,
    concurrency: int,
    *,
    src: str | None = None,
    settings: dict[str, Any] | None = None,
    offline: bool = False,
) -> float:
    """(f); with `src`, the `batchroute` package in that directory instead of this one; with
    `settings`, these sections of the job replaced; `offline`, (j)."""
    env = None
    if src is not None:
        env = {**(CHILD_ENV or os.environ), "PYTHONPATH": src}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.jsonl"
        data.write_text(
            "".join(
                json.dumps({"id": f"r{i}", "prompt": messages(i)[0]["content"]}) + "\n"
                for i in range(count)
            )
        )
        job = {
            "name": "bench",
            "input": {"path": str(data), "id_column": "id"},
            "endpoint": {"base_url": base_url, "api_key_env": None},
            "request": {"max_tokens": 64},
            "tiers": {"standard": MODEL},
            "models": {
                MODEL: {"input_per_mtok": 1, "output_per_mtok": 2, "max_concurrency": concurrency}
            },
            "output": {"dir": str(Path(tmp) / "run")},
            "cache": {"path": str(Path(tmp) / "cache.sqlite3")},  # a new file: no hits
            **(settings or {}),
        }
        job_path = Path(tmp) / "job.yaml"
        job_path.write_text(json.dumps(job))  # JSON is YAML
        command = [sys.executable, "-m", "batchroute", "run", str(job_path), "--quiet"]
        if offline:
            command = [sys.executable, str(OFFLINE_RUN_SCRIPT), str(job_path)]
        return await anyio.to_thread.run_sync(lambda: _child_cost(command, env=env))


async def batchroute_baseline(base_url: str, count: int, concurrency: int) -> float:
    """(f) with the `--baseline-src` version: old code against new, in the same rounds."""
    return await batchroute_run(base_url, count, concurrency, src=BASELINE_SRC)


async def batchroute_without_cache(base_url: str, count: int, concurrency: int) -> float:
    """(h): what the response cache costs is (f) against this."""
    settings = {"cache": {"read": False, "write": False}}
    return await batchroute_run(base_url, count, concurrency, settings=settings)


async def batchroute_rules_only(base_url: str, count: int, concurrency: int) -> float:
    """(i): what the router model costs (loading it, scoring every row) is (f) against this."""
    settings = {"routing": {"classifier": {"kind": "rules"}}}
    return await batchroute_run(base_url, count, concurrency, settings=settings)


async def batchroute_offline(base_url: str, count: int, concurrency: int) -> float:
    """(j): batchroute's own CPU; against (f), what the client and the sockets cost it."""
    return await batchroute_run(base_url, count, concurrency, offline=True)


IN_PROCESS = {"sdk-httpx", "sdk-aiohttp", "raw-post", "dispatcher"}
"""The workloads measured inside this process: `--instructions` cannot count them apart."""
WORKLOADS: dict[str, Workload] = {
    "sdk-httpx": sdk_httpx,
    "sdk-aiohttp": sdk_aiohttp,
    "raw-post": raw_post,
    "dispatcher": dispatcher,
    "raw-post-proc": raw_post_process,
    "batchroute": batchroute_run,
    "batchroute-base": batchroute_baseline,
    "batchroute-nocache": batchroute_without_cache,
    "batchroute-rules": batchroute_rules_only,
    "batchroute-offline": batchroute_offline,
}


def measure(workload: Workload, base_url: str, count: int, concurrency: int) -> tuple[float, float]:
    """(the figure per request, requests per second) of one workload: CPU ms, or with
    `--instructions` millions of instructions."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    own_cpu = anyio.run(workload, base_url, count, concurrency)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if own_cpu is not None:
        cpu = own_cpu
    return cpu * 1000 / count, count / wall


def _bytecode_cache_env(directory: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = directory
    return env


def main() -> None:
    global CHILD_ENV, BASELINE_SRC, COUNT_INSTRUCTIONS, FIGURE, UNIT, TOTAL_UNIT, FINE_UNIT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 requests instead of 5,000")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; medians")
    parser.add_argument(
        "--split", action="store_true", help="(e) and (f) on 10 requests too: fixed vs per request"
    )
    parser.add_argument("--no-bytecode-cache", action="store_true")
    parser.add_argument(
        "--baseline-src",
        help="a directory with another version's batchroute/ (e.g. `git archive REV batchroute "
        "| tar -x -C DIR`): adds the workload batchroute-base, and its CPU against batchroute's",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="leave the measured processes free to use every CPU (the simulator stays pinned)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count the instructions each process ran (valgrind's cachegrind) instead of its CPU "
        "time: the same figure on a quiet or a busy machine, about 40 times slower to get; the "
        "process workloads only",
    )
    args = parser.parse_args()
    BASELINE_SRC = args.baseline_src
    COUNT_INSTRUCTIONS = args.instructions
    if COUNT_INSTRUCTIONS:
        FIGURE, UNIT, TOTAL_UNIT, FINE_UNIT = (
            "instructions",
            "M-instr",
            "billion instructions",
            "thousand instructions",
        )
        in_process = set(args.only or WORKLOADS) & IN_PROCESS
        if in_process:
            parser.error(f"--instructions counts processes; leave out {sorted(in_process)}")
        if shutil.which("valgrind") is None:
            parser.error("--instructions needs valgrind on the PATH (apt install valgrind)")
    if args.only and "batchroute-base" in args.only and BASELINE_SRC is None:
        parser.error("batchroute-base needs --baseline-src DIR")
    count = args.requests or (1000 if args.quick else 5000)
    cpus = os.sched_getaffinity(0)
    sim_cpus = [max(cpus)] if len(cpus) > 1 else None
    if sim_cpus and not args.no_pin:
        os.sched_setaffinity(0, cpus - set(sim_cpus))
    names = args.only or [n for n in WORKLOADS if n != "batchroute-base" or BASELINE_SRC]
    with (
        SimulatorProcess(SimConfig(), cpus=sim_cpus) as sim,
        tempfile.TemporaryDirectory() as pycache,
    ):
        anyio.run(raw_post, sim.base_url, 200, 16)  # warm up the server and the imports
        if not args.no_bytecode_cache:
            CHILD_ENV = _bytecode_cache_env(pycache)
            for warm in ("raw-post-proc", "batchroute", "batchroute-base"):
                if warm == "batchroute-base" and warm not in names:
                    continue
                anyio.run(WORKLOADS[warm], sim.base_url, 10, 4)
        for concurrency in args.concurrency:
            _measure_rounds(names, sim.base_url, count, concurrency, args.rounds, args.split)


def _measure_rounds(
    names: list[str], base_url: str, count: int, concurrency: int, rounds: int, split: bool
) -> None:
    """Every workload `rounds` times, alternating the order; print medians and ratios."""
    cpu: dict[str, list[float]] = {name: [] for name in names}
    rate: dict[str, list[float]] = {name: [] for name in names}
    small = 10
    fixed: dict[str, list[float]] = {
        "raw-post-proc": [],
        "batchroute": [],
        "batchroute-offline": [],
    }
    for round_ in range(rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            cpu_ms, per_s = measure(WORKLOADS[name], base_url, count, concurrency)
            cpu[name].append(cpu_ms)
            rate[name].append(per_s)
            if split and name in fixed:
                fixed[name].append(measure(WORKLOADS[name], base_url, small, concurrency)[0])
    for name in names:
        print(
            f"c={concurrency:<4} {name:<18} {statistics.median(cpu[name]):6.3f} {UNIT}/request  "
            f"{statistics.median(rate[name]):7.0f} requests/s  (median of {rounds})"
        )
    if "dispatcher" in cpu and "raw-post" in cpu:
        ratio = _median_ratio(cpu["dispatcher"], cpu["raw-post"])
        print(f"c={concurrency:<4} dispatcher / raw-post CPU: {ratio:.3f}x (target <= 1.2)")
    if "batchroute" in cpu and "batchroute-base" in cpu:
        ratio = _median_ratio(cpu["batchroute"], cpu["batchroute-base"])
        print(
            f"c={concurrency:<4} batchroute / batchroute-base ({BASELINE_SRC}) {FIGURE}: "
            f"{ratio:.3f}x"
        )
    for feature, without in (
        ("the response cache", "batchroute-nocache"),
        ("the router model", "batchroute-rules"),
    ):
        if "batchroute" in cpu and without in cpu:
            share = 1 - _median_ratio(cpu[without], cpu["batchroute"])
            cost_ms = statistics.median(
                a - b for a, b in zip(cpu["batchroute"], cpu[without], strict=True)
            )
            print(
                f"c={concurrency:<4} {feature}: {100 * share:.1f}% of batchroute's {FIGURE} "
                f"({cost_ms * 1000:.1f} {FINE_UNIT} per request over {count} requests, "
                f"against {without} in the same rounds)"
            )
    if "batchroute" in cpu and "raw-post-proc" in cpu:
        ratios = [a / b for a, b in zip(cpu["batchroute"], cpu["raw-post-proc"], strict=True)]
        # Under valgrind a process runs some 40 times slower: its rate says nothing.
        speed = (
            ""
            if COUNT_INSTRUCTIONS
            else f"; batchroute {statistics.median(rate['batchroute']):.0f} requests/s "
            "(target >= 600)"
        )
        print(
            f"c={concurrency:<4} batchroute run / raw-post process {FIGURE}: "
            f"{statistics.median(ratios):.3f}x (target <= 1.15; rounds: "
            f"{', '.join(f'{r:.3f}' for r in ratios)}){speed}"
        )
    for name, small_ms in fixed.items():
        if small_ms:
            fixed_s = statistics.median(small_ms) * small / 1000
            total_s = statistics.median(cpu[name]) * count / 1000
            marginal_ms = (total_s - fixed_s) * 1000 / (count - small)
            print(
                f"c={concurrency:<4} {name:<18} fixed {fixed_s:.3f} {TOTAL_UNIT} "
                f"({small} requests) "
                f"+ {marginal_ms:.3f} {UNIT}/request"
            )


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


if __name__ == "__main__":
    main()
