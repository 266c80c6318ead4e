"""Rate limits under load (issue 3): saturation, quantised saturation, recovery after 429s.

The simulator runs in its own process and enforces the limits; its server-side counts say how
many 429s the limits caused (`limited`), which is batchroute over-sending.

1. Saturation: the simulator enforces 6,000 RPM; the job is set to 6,000 RPM. Target: achieved
   at least 0.95 of the limit over at least 30 s, with zero 429s.
2. Quantised: 3,000 RPM enforced also as at most 50 in any one second (`per_second`). Target:
   zero 429s, at least 0.95 of the limit, every row ok. Compared in the same run with a plain
   loop paced by aiolimiter's `AsyncLimiter(50, 1)` with the SDK's default retries.
3. Recovery: 6,000 RPM, also enforced per second; a second client takes the model's whole quota
   for 10 s, so batchroute draws a burst of 429s (with retry-after); then the neighbour stops.
   Reported: the time from the end of the burst until batchroute is back at 90% of the limit.

4. Pacing (issue 15): rpm 60, 120, 300, 600 and 3,000 at once, one model each, every limit
   also enforced per second (at most rpm/60 in any one second). Target: at least 0.95 of each
   limit, zero 429s. Sixty seconds of sending (`--quick`: twenty).
5. Fault storm (issue 15): 1,000 rows, concurrency 64, 50 ms latency, a 10 s timeout; 5% 429s
   (retry-after 1), 5% 500s, 2% 503s, 1% hangs past the timeout, 1% dropped connections, 1%
   malformed 200s. batchroute's Dispatcher against a plain SDK loop (SDK retries on, the same
   timeout) on the same simulator settings, in the same run. Target: every row ok, wall at most
   1.3x the plain loop's.

    python benchmarks/bench_saturation.py           # about five minutes
    python benchmarks/bench_saturation.py --quick   # about two minutes
    python benchmarks/bench_saturation.py --only pacing storm
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import openai
from aiolimiter import AsyncLimiter

from batchroute.config import Job, parse_job
from batchroute.dispatch.dispatcher import Dispatcher, RowOutcome, RowRequest
from batchroute.pricing.prices import resolve_prices
from batchroute.pricing.tokens import count_message_tokens
from batchroute.sim import FaultRates, SimConfig, SimModelConfig, SimulatorProcess

MODEL = "paced-model"


def _job(rpm: int, *, patient: bool = False) -> Job:
    retry = {"max_attempts_per_row": 60, "max_retries_per_model": 60, "backoff_max_s": 2.0}
    config = parse_job(
        {
            "name": "saturation",
            "input": {"path": "unused.jsonl"},
            "request": {"max_tokens": 32},
            "tiers": {"standard": MODEL},
            "models": {
                MODEL: {
                    "input_per_mtok": 1,
                    "output_per_mtok": 2,
                    "rpm": rpm,
                    "max_concurrency": 128,
                }
            },
            "retry": retry if patient else {},
        },
        path=Path("bench.yaml"),
    )
    return Job(config, path=Path("bench.yaml"), text_sha256="0" * 64)


def _rows(count: int) -> list[RowRequest]:
    rows = []
    for i in range(count):
        messages = [{"role": "user", "content": f"Classify support ticket {i}."}]
        rows.append(
            RowRequest(str(i), i, str(i), "standard", messages, count_message_tokens(messages))
        )
    return rows


async def _dispatch_all(
    job: Job, base_url: str, rows: list[RowRequest], *, workers: int = 256
) -> list[RowOutcome]:
    outcomes: list[RowOutcome] = []
    it = iter(rows)
    async with Dispatcher(
        job, prices=resolve_prices(job), base_urls={"simulator": base_url}
    ) as dispatcher:

        async def worker() -> None:
            for row in it:
                outcomes.append(await dispatcher.dispatch(row))

        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(worker)
    return outcomes


def _ok_rate(outcomes: list[RowOutcome]) -> tuple[float, float]:
    """(requests per second between the first and the last answer, seconds)."""
    starts = [r.started_at for o in outcomes for r in o.attempt_records]
    span = (max(starts) - min(starts)).total_seconds()
    return (len(starts) - 1) / span, span


def _sim_cpus() -> list[int] | None:
    cpus = os.sched_getaffinity(0)
    return [max(cpus)] if len(cpus) > 1 else None


def saturation(seconds: float) -> None:
    rpm = 6000
    sim = SimConfig(models={MODEL: SimModelConfig(rpm=rpm, latency_ms=20)})
    rows = _rows(int(rpm / 60 * seconds))
    with SimulatorProcess(sim, cpus=_sim_cpus()) as server:
        outcomes = anyio.run(_dispatch_all, _job(rpm), server.base_url, rows)
        stats = server.stats()
    rate, span = _ok_rate(outcomes)
    statuses = Counter(o.status for o in outcomes)
    print(
        f"saturation   {rpm} RPM, {span:.1f} s: achieved {rate * 60:.0f} RPM = "
        f"{rate * 60 / rpm:.3f} of the limit (target >= 0.95), "
        f"429s from the limit: {stats['limited'].get(MODEL, 0)} (target 0), rows {dict(statuses)}"
    )


async def _aiolimiter_loop(base_url: str, count: int) -> Counter[str]:
    results: Counter[str] = Counter()
    limiter = AsyncLimiter(50, 1)
    it = iter(range(count))
    async with openai.AsyncOpenAI(
        api_key="k", base_url=base_url, http_client=openai.DefaultAioHttpClient()
    ) as client:

        async def worker() -> None:
            for i in it:
                async with limiter:
                    try:
                        await client.chat.completions.create(
                            model=MODEL,
                            max_tokens=32,
                            messages=[{"role": "user", "content": f"Classify ticket {i}."}],
                        )
                        results["ok"] += 1
                    except openai.RateLimitError:
                        results["failed"] += 1

        async with anyio.create_task_group() as group:
            for _ in range(64):
                group.start_soon(worker)
    return results


def quantised(count: int) -> None:
    rpm = 3000
    sim = SimConfig(models={MODEL: SimModelConfig(rpm=rpm, per_second=True, latency_ms=20)})
    with SimulatorProcess(sim, cpus=_sim_cpus()) as server:
        outcomes = anyio.run(_dispatch_all, _job(rpm), server.base_url, _rows(count))
        stats = server.stats()
    rate, span = _ok_rate(outcomes)
    statuses = Counter(o.status for o in outcomes)
    print(
        f"quantised    {rpm} RPM (<= {rpm // 60}/s), {count} rows, {span:.1f} s: "
        f"achieved {rate * 60 / rpm:.3f} of the limit, "
        f"429s: {stats['limited'].get(MODEL, 0)} (target 0), rows {dict(statuses)}"
    )
    with SimulatorProcess(sim, cpus=_sim_cpus()) as server:
        start = time.perf_counter()
        results = anyio.run(_aiolimiter_loop, server.base_url, count)
        wall = time.perf_counter() - start
        stats = server.stats()
    print(
        f"  baseline   AsyncLimiter(50, 1) + SDK retries, {count} rows, {wall:.1f} s: "
        f"429s: {stats['limited'].get(MODEL, 0)}, rows {dict(results)}"
    )


async def _neighbour(base_url: str, seconds: float, per_second: int) -> int:
    """Another client taking the model's quota: `per_second` requests a second."""
    sent = 0
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "noisy"}],
    }
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            async with session.post(base_url + "/chat/completions", json=body) as response:
                await response.read()

        end = time.monotonic() + seconds
        async with anyio.create_task_group() as group:
            while time.monotonic() < end:
                group.start_soon(one)
                sent += 1
                await anyio.sleep(1 / per_second)
    return sent


def recovery(burst_s: float, after_s: float) -> None:
    rpm = 6000
    limit_per_s = rpm / 60
    sim = SimConfig(models={MODEL: SimModelConfig(rpm=rpm, per_second=True, latency_ms=20)})
    lead_s = 3.0
    rows = _rows(int(limit_per_s * (lead_s + burst_s + after_s)))

    async def scenario(base_url: str) -> tuple[list[RowOutcome], float]:
        burst_end = 0.0

        async def noisy() -> None:
            nonlocal burst_end
            await anyio.sleep(lead_s)
            await _neighbour(base_url, burst_s, int(limit_per_s * 2))
            burst_end = time.time()

        async with anyio.create_task_group() as group:
            group.start_soon(noisy)
            outcomes = await _dispatch_all(_job(rpm, patient=True), base_url, rows)
        return outcomes, burst_end

    with SimulatorProcess(sim, cpus=_sim_cpus()) as server:
        outcomes, burst_end = anyio.run(scenario, server.base_url)
        stats = server.stats()
    sent = sorted(
        r.started_at.timestamp()
        for o in outcomes
        for r in o.attempt_records
        if r.status_code == 200
    )
    recovered: float | None = None
    for index, stamp in enumerate(sent):
        if stamp < burst_end:
            continue
        # The first moment from which one second holds at least 90% of the limit.
        window = [s for s in sent[index : index + int(limit_per_s)] if s < stamp + 1.0]
        if len(window) >= 0.9 * limit_per_s:
            recovered = stamp - burst_end
            break
    limited = sum(1 for o in outcomes for r in o.attempt_records if r.status_code == 429)
    shown = "never" if recovered is None else f"{recovered:.2f} s"
    print(
        f"recovery     {burst_s:.0f} s burst of 429s ({limited} drawn by batchroute, "
        f"server total {stats['requests'].get(MODEL, {}).get('429', 0)}): back to 90% of "
        f"the limit {shown} after the burst; rows {dict(Counter(o.status for o in outcomes))}"
    )


PACED_RPMS = (60, 120, 300, 600, 3000)


def _paced_job(name: str, rpm: int) -> Job:
    config = parse_job(
        {
            "name": "pacing",
            "input": {"path": "unused.jsonl"},
            "request": {"max_tokens": 32},
            "tiers": {"standard": name},
            "models": {
                name: {"input_per_mtok": 1, "output_per_mtok": 2, "rpm": rpm, "max_concurrency": 64}
            },
        },
        path=Path("bench.yaml"),
    )
    return Job(config, path=Path("bench.yaml"), text_sha256="0" * 64)


def pacing(seconds: float) -> None:
    """Every rpm at once, each on its own model, for `seconds` of sending."""
    names = {rpm: f"paced-{rpm}" for rpm in PACED_RPMS}
    sim = SimConfig(
        models={
            name: SimModelConfig(rpm=rpm, per_second=True, latency_ms=20)
            for rpm, name in names.items()
        }
    )

    async def one(dispatcher: Dispatcher, rpm: int, into: dict[int, list[RowOutcome]]) -> None:
        outcomes: list[RowOutcome] = []
        rows = iter(_rows(int(rpm / 60 * seconds)))

        async def worker() -> None:
            for row in rows:
                outcomes.append(await dispatcher.dispatch(row))

        async with anyio.create_task_group() as group:
            for _ in range(64):
                group.start_soon(worker)
        into[rpm] = outcomes

    async def all_rpms(base_url: str) -> dict[int, list[RowOutcome]]:
        results: dict[int, list[RowOutcome]] = {}
        async with contextlib.AsyncExitStack() as stack:
            # Every client is built before the first request, as in a run: building one takes
            # the loop for tens of milliseconds, which would bunch another model's sends.
            dispatchers = {}
            for rpm in PACED_RPMS:
                job = _paced_job(names[rpm], rpm)
                dispatcher = Dispatcher(
                    job, prices=resolve_prices(job), base_urls={"simulator": base_url}
                )
                dispatchers[rpm] = await stack.enter_async_context(dispatcher)
            async with anyio.create_task_group() as group:
                for rpm in PACED_RPMS:
                    group.start_soon(one, dispatchers[rpm], rpm, results)
        return results

    with SimulatorProcess(sim, cpus=_sim_cpus()) as server:
        results = anyio.run(all_rpms, server.base_url)
        stats = server.stats()
    print(f"pacing       {seconds:.0f} s of sending per rpm, limits also enforced per second")
    for rpm in PACED_RPMS:
        outcomes = results[rpm]
        rate, span = _ok_rate(outcomes)
        statuses = Counter(o.status for o in outcomes)
        print(
            f"  rpm {rpm:>5}: {len(outcomes)} rows in {span:.1f} s, achieved "
            f"{rate * 60:.1f} RPM = {rate * 60 / rpm:.3f} of the limit (target >= 0.95), "
            f"429s: {stats['limited'].get(names[rpm], 0)} (target 0), rows {dict(statuses)}"
        )


STORM_ROWS = 1000
STORM_CONCURRENCY = 64
STORM_TIMEOUT_S = 10.0
STORM_FAULTS = FaultRates(
    rate_limit=0.05,
    retry_after_s=1.0,
    server_error=0.05,
    unavailable=0.02,
    hang=0.01,
    hang_s=30.0,
    disconnect=0.01,
    malformed=0.01,
)


def _storm_job(base_url: str) -> Job:
    config = parse_job(
        {
            "name": "storm",
            "input": {"path": "unused.jsonl"},
            "endpoint": {"base_url": base_url, "api_key_env": None, "timeout_s": STORM_TIMEOUT_S},
            "request": {"max_tokens": 32},
            "tiers": {"standard": MODEL},
            "models": {
                MODEL: {
                    "input_per_mtok": 1,
                    "output_per_mtok": 2,
                    "max_concurrency": STORM_CONCURRENCY,
                }
            },
            # One model and no fallback: its retries must carry every row through the storm.
            "retry": {"max_attempts_per_row": 8, "max_retries_per_model": 7},
        },
        path=Path("bench.yaml"),
    )
    return Job(config, path=Path("bench.yaml"), text_sha256="0" * 64)


async def _plain_storm_loop(base_url: str) -> Counter[str]:
    """The leanest honest loop: the SDK with its own retries (2) and the same timeout."""
    results: Counter[str] = Counter()
    it = iter(range(STORM_ROWS))
    async with openai.AsyncOpenAI(
        api_key="k", base_url=base_url, timeout=STORM_TIMEOUT_S
    ) as client:

        async def worker() -> None:
            for i in it:
                try:
                    await client.chat.completions.create(
                        model=MODEL,
                        max_tokens=32,
                        messages=[{"role": "user", "content": f"Classify support ticket {i}."}],
                    )
                    results["ok"] += 1
                except (openai.APIError, ValueError):
                    results["failed"] += 1

        async with anyio.create_task_group() as group:
            for _ in range(STORM_CONCURRENCY):
                group.start_soon(worker)
    return results


def storm() -> None:
    sim = SimConfig(seed=15, models={MODEL: SimModelConfig(latency_ms=50, faults=STORM_FAULTS)})
    with SimulatorProcess(sim, cpus=_sim_cpus()) as server:
        start = time.perf_counter()
        plain = anyio.run(_plain_storm_loop, server.base_url)
        plain_wall = time.perf_counter() - start
        plain_sent = server.stats()["total"]
    with SimulatorProcess(sim, cpus=_sim_cpus()) as server:
        start = time.perf_counter()
        outcomes = anyio.run(
            _dispatch_all,
            _storm_job(server.base_url),
            server.base_url,
            _rows(STORM_ROWS),
        )
        ours_wall = time.perf_counter() - start
        ours_sent = server.stats()["total"]
    statuses = Counter(o.status for o in outcomes)
    print(
        f"storm        {STORM_ROWS} rows, concurrency {STORM_CONCURRENCY}: plain SDK loop "
        f"{plain['ok']} ok in {plain_wall:.1f} s ({plain_sent} requests); batchroute "
        f"{statuses.get('ok', 0)} ok in {ours_wall:.1f} s ({ours_sent} requests); wall ratio "
        f"{ours_wall / plain_wall:.2f} (target <= 1.3, every row ok), rows {dict(statuses)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    choices = ["saturation", "quantised", "recovery", "pacing", "storm"]
    parser.add_argument("--only", nargs="+", choices=choices)
    args = parser.parse_args()
    only = set(args.only or choices)
    if "saturation" in only:
        saturation(10 if args.quick else 32)
    if "quantised" in only:
        quantised(300 if args.quick else 1000)
    if "recovery" in only:
        recovery(5 if args.quick else 10, 6 if args.quick else 10)
    if "pacing" in only:
        pacing(20 if args.quick else 60)
    if "storm" in only:
        storm()


if __name__ == "__main__":
    main()
