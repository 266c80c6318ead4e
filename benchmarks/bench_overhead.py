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

The figures that matter are (d)/(c), the dispatcher's overhead in steady state, and (f)/(e),
the whole tool against the best plain loop as a whole process (targets: at most 1.2 for the
dispatcher, and 1.15 for the whole process, issue 15).

    python benchmarks/bench_overhead.py            # 5,000 requests at concurrency 64 and 256
    python benchmarks/bench_overhead.py --quick    # 1,000 requests
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

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
Workload = Callable[[str, int, int], Awaitable[float | None]]
"""(base_url, requests, concurrency) -> CPU seconds if the workload measures its own, else None."""


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


def _child_cpu_s(command: list[str]) -> float:
    """Run a command to the end; return its user + system CPU seconds."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:4]} exited {os.waitstatus_to_exitcode(status)}")
    return usage.ru_utime + usage.ru_stime


async def raw_post_process(base_url: str, count: int, concurrency: int) -> float:
    command = [sys.executable, str(RAW_POST_SCRIPT), base_url, str(count), str(concurrency)]
    return await anyio.to_thread.run_sync(_child_cpu_s, command)


async def batchroute_run(base_url: str, count: int, concurrency: int) -> float:
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
        }
        job_path = Path(tmp) / "job.yaml"
        job_path.write_text(json.dumps(job))  # JSON is YAML
        command = [sys.executable, "-m", "batchroute", "run", str(job_path), "--quiet"]
        return await anyio.to_thread.run_sync(_child_cpu_s, command)


WORKLOADS: dict[str, Workload] = {
    "sdk-httpx": sdk_httpx,
    "sdk-aiohttp": sdk_aiohttp,
    "raw-post": raw_post,
    "dispatcher": dispatcher,
    "raw-post-proc": raw_post_process,
    "batchroute": batchroute_run,
}


def measure(workload: Workload, base_url: str, count: int, concurrency: int) -> tuple[float, float]:
    """(CPU ms per request, requests per second) of one workload."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    own_cpu = anyio.run(workload, base_url, count, concurrency)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if own_cpu is not None:
        cpu = own_cpu
    return cpu * 1000 / count, count / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 requests instead of 5,000")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS))
    args = parser.parse_args()
    count = args.requests or (1000 if args.quick else 5000)
    cpus = os.sched_getaffinity(0)
    sim_cpus = [max(cpus)] if len(cpus) > 1 else None
    if sim_cpus:
        os.sched_setaffinity(0, cpus - set(sim_cpus))
    names = args.only or list(WORKLOADS)
    with SimulatorProcess(SimConfig(), cpus=sim_cpus) as sim:
        anyio.run(raw_post, sim.base_url, 200, 16)  # warm up the server and the imports
        for concurrency in args.concurrency:
            results = {}
            for name in names:
                results[name] = measure(WORKLOADS[name], sim.base_url, count, concurrency)
                cpu_ms, rate = results[name]
                print(
                    f"c={concurrency:<4} {name:<12} {cpu_ms:6.2f} CPU-ms/request  "
                    f"{rate:7.0f} requests/s"
                )
            if "dispatcher" in results and "raw-post" in results:
                ratio = results["dispatcher"][0] / results["raw-post"][0]
                print(f"c={concurrency:<4} dispatcher / raw-post CPU: {ratio:.2f}x (target <= 1.2)")
            if "batchroute" in results and "raw-post-proc" in results:
                ratio = results["batchroute"][0] / results["raw-post-proc"][0]
                print(
                    f"c={concurrency:<4} batchroute run / raw-post process CPU: {ratio:.2f}x "
                    f"(target <= 1.15); batchroute {results['batchroute'][1]:.0f} requests/s "
                    "(target >= 600)"
                )


if __name__ == "__main__":
    main()
