"""Response cache lookups (issue 16): 1,000,000 lookups, half hits, against in-run baselines.

Every figure is measured in this run, on the same keys, in the same file:

    dict             a Python dict of key -> JSON, decoded on a hit: the in-memory ceiling
    sqlite-select    a plain prepared `SELECT answer ... WHERE key = ?` per key, no decoding
    cache.get        ResponseCache.get, one key at a time (what an inline lookup costs)
    cache.get_many   ResponseCache.get_many, 1,000 keys a call (a batch of rows at once)
    request_key      hashing the request bodies into keys (paid on every row, hit or not)
    store            put + the writer thread's batched commits (paid on every answered miss)

Then the cost the cache adds to a run with no hits (key + miss + store, per row) is set against
two in-run baselines on the simulator (in its own process): the CPU of a request in the plainest
AsyncOpenAI loop (raw-post, as in bench_overhead), and the marginal CPU per row of a whole
`batchroute run` with no cache (its CPU on 2N rows minus on N rows, so start-up cancels). The
issue's bound is at most 5% more CPU on a run with no hits.

Last, that bound is measured directly: the same job as whole `batchroute run` processes, with
`--no-cache` and with the cache on over a new empty file (every row a miss, every answer
stored), alternating, `--repeats` pairs in this one run; the figure is on/off CPU.

    python benchmarks/bench_cache.py            # 1,000,000 lookups
    python benchmarks/bench_cache.py --quick    # 100,000 lookups
    python benchmarks/bench_cache.py --whole-only --whole-rows 5000 --repeats 3
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from batchroute.cache import CachedAnswer, ResponseCache, request_key
from batchroute.cache.answers import decode_answer, encode_answer
from batchroute.sim import SimConfig, SimulatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _raw_post

BASE_URL = "https://api.example.com/v1"
ANSWER_CHARS = 400
"""A short paragraph: roughly what a bulk or standard tier answers."""


def _body(i: int) -> dict[str, object]:
    """The i-th request body, as the dispatcher sends it (raw-post's messages)."""
    return {"model": _raw_post.MODEL, "max_tokens": 64, "messages": _raw_post.messages(i)}


def _answer(i: int) -> CachedAnswer:
    return CachedAnswer(
        content=f"{i} " + "w" * ANSWER_CHARS,
        finish_reason="stop",
        model=_raw_post.MODEL,
        input_tokens=20,
        output_tokens=90,
        created=1_780_000_000,
    )


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process, threads included) of `work`."""
    wall, cpu, _ = _timed_result(work)
    return wall, cpu


def _timed_result(work: Callable[[], object]) -> tuple[float, float, object]:
    """`_timed` with what `work` returned."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = work()
    return time.perf_counter() - wall0, time.process_time() - cpu0, result


def _run_cpu_s(base_url: str, rows: int, tmp: Path, *, cache: bool = False, tag: str = "") -> float:
    """CPU seconds of a whole `batchroute run` process sending `rows` requests.

    `cache=False` runs with `--no-cache`; `cache=True` with a new, empty cache file of its own,
    so every row is a miss whose answer is stored: the cache's whole cost on a run with no hits.
    """
    name = f"{rows}{tag}"
    data = tmp / f"prompts-{rows}.jsonl"
    if not data.exists():
        data.write_text(
            "".join(
                json.dumps({"id": f"r{i}", "prompt": _raw_post.messages(i)[0]["content"]}) + "\n"
                for i in range(rows)
            )
        )
    job = {
        "name": "bench",
        "input": {"path": str(data), "id_column": "id"},
        "endpoint": {"base_url": base_url, "api_key_env": None},
        "request": {"max_tokens": 64},
        "tiers": {"standard": _raw_post.MODEL},
        "models": {_raw_post.MODEL: {"input_per_mtok": 1, "output_per_mtok": 2}},
        "output": {"dir": str(tmp / f"run-{name}")},
        "cache": {"path": str(tmp / f"cache-{name}.sqlite3")},
    }
    job_path = tmp / f"job-{name}.yaml"
    job_path.write_text(json.dumps(job))  # JSON is YAML
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [sys.executable, "-m", "batchroute", "run", str(job_path), "--quiet"]
    if not cache:
        command.append("--no-cache")
    # never the user's cache directory, whatever the job says
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg")}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cache:
        with sqlite3.connect(tmp / f"cache-{name}.sqlite3") as db:
            kept = db.execute("SELECT count(*) FROM responses").fetchone()[0]
        assert kept > 0, "the cache-on run stored nothing: it did not measure the cache"
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _whole_runs(base_url: str, rows: int, repeats: int) -> None:
    """The same job run with the cache off and on (no hits), alternating, in this one run."""
    off: list[float] = []
    on: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            # alternate which goes first, so a drift in the machine's load falls on both
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for cache in order:
                cpu = _run_cpu_s(base_url, rows, Path(tmp), cache=cache, tag=f"-{repeat}-{cache}")
                (on if cache else off).append(cpu)
    ratios = sorted(b / a for a, b in zip(off, on, strict=True))
    print(
        f"whole run, {rows:,} rows, x{repeats}: cache off {sum(off) / repeats:.2f} CPU-s, "
        f"on with no hits {sum(on) / repeats:.2f} CPU-s; on/off = {sum(on) / sum(off):.3f} "
        f"(median pair {ratios[len(ratios) // 2]:.3f}; per pair: "
        f"{', '.join(f'{r:.3f}' for r in ratios)}; target <= 1.05)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 lookups, not 1,000,000")
    parser.add_argument("--lookups", type=int)
    parser.add_argument("--requests", type=int, default=3000, help="raw-post requests")
    parser.add_argument("--run-rows", type=int, default=2000, help="N for the whole-run baseline")
    parser.add_argument(
        "--whole-rows", type=int, default=5000, help="rows of each cache off/on whole run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="cache off/on whole-run pairs")
    parser.add_argument(
        "--whole-only", action="store_true", help="only the cache off/on whole-run comparison"
    )
    args = parser.parse_args()
    lookups = args.lookups or (100_000 if args.quick else 1_000_000)
    stored = lookups // 2
    if args.whole_only:
        _whole_only(args.whole_rows, args.repeats)
        return

    print(f"{lookups:,} lookups, {stored:,} answers stored ({ANSWER_CHARS}-character answers)")
    keys: list[bytes] = []
    wall, cpu = _timed(lambda: keys.extend(request_key(BASE_URL, _body(i)) for i in range(lookups)))
    key_us = cpu * 1e6 / lookups
    print(f"request_key      {lookups / wall:>12,.0f} keys/s     {key_us:6.2f} CPU-us/key")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "responses.sqlite3"
        answers = [_answer(i) for i in range(stored)]
        cache = ResponseCache(path, max_size_mb=100_000)
        cache.open()

        def store() -> None:
            for i in range(stored):
                cache.put(keys[i], answers[i])
            cache.flush()

        wall, cpu = _timed(store)
        store_us = cpu * 1e6 / stored
        print(f"store            {stored / wall:>12,.0f} writes/s   {store_us:6.2f} CPU-us/write")

        order = list(range(lookups))
        random.Random(16).shuffle(order)
        probe = [keys[i] for i in order]  # hits and misses interleaved, in no useful order
        expected_hits = sum(1 for i in order if i < stored)

        table = {keys[i]: encode_answer(answers[i]) for i in range(stored)}
        results: dict[str, tuple[float, float, int]] = {}

        def dict_lookups() -> int:
            hits = 0
            for key in probe:
                text = table.get(key)
                if text is not None and decode_answer(text) is not None:
                    hits += 1
            return hits

        def select_lookups() -> int:
            db = sqlite3.connect(path)
            statement = "SELECT answer FROM responses WHERE key = ?"
            hits = sum(1 for key in probe if db.execute(statement, (key,)).fetchone() is not None)
            db.close()
            return hits

        def get_lookups() -> int:
            get = cache.get
            return sum(1 for key in probe if get(key) is not None)

        def get_many_lookups() -> int:
            hits = 0
            for start in range(0, len(probe), 1000):
                hits += sum(1 for a in cache.get_many(probe[start : start + 1000]) if a)
            return hits

        for name, work in (
            ("dict", dict_lookups),
            ("sqlite-select", select_lookups),
            ("cache.get", get_lookups),
            ("cache.get_many", get_many_lookups),
        ):
            wall, cpu, hits = _timed_result(work)
            assert hits == expected_hits, (name, hits, expected_hits)
            results[name] = (wall, cpu, expected_hits)
            print(
                f"{name:<16} {lookups / wall:>12,.0f} lookups/s  "
                f"{cpu * 1e6 / lookups:6.2f} CPU-us/lookup  ({lookups / cpu:,.0f} per CPU-second)"
            )
        cache.close()
        size_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
        print(f"file size        {size_mb:,.0f} MB for {stored:,} answers")

    # CPU, not wall time, is the figure to compare: the machine may be shared, and a lookup
    # that waits for a core is not slower code. Both rates are printed.
    base = results["sqlite-select"][1]
    for name in ("cache.get", "cache.get_many"):
        wall, cpu, _ = results[name]
        print(
            f"{name:<16} {cpu / base:5.2f}x the CPU of plain sqlite SELECTs, "
            f"{cpu / results['dict'][1]:5.2f}x a dict; {lookups / wall:,.0f} lookups/s wall, "
            f"{lookups / cpu:,.0f} per CPU-second (target >= 50,000)"
        )

    cpus = os.sched_getaffinity(0)
    sim_cpus = [max(cpus)] if len(cpus) > 1 else None
    if sim_cpus:
        os.sched_setaffinity(0, cpus - set(sim_cpus))
    with SimulatorProcess(SimConfig(), cpus=sim_cpus) as sim:
        anyio.run(_raw_post.run, sim.base_url, 200, 16)  # warm up
        wall, cpu = _timed(lambda: anyio.run(_raw_post.run, sim.base_url, args.requests, 64))
        with tempfile.TemporaryDirectory() as tmp:
            small = _run_cpu_s(sim.base_url, args.run_rows, Path(tmp))
            large = _run_cpu_s(sim.base_url, 2 * args.run_rows, Path(tmp))
        _whole_runs(sim.base_url, args.whole_rows, args.repeats)
    request_us = cpu * 1e6 / args.requests
    run_us = (large - small) * 1e6 / args.run_rows
    print(
        f"raw-post         {args.requests / wall:>12,.0f} requests/s {request_us:6.1f} CPU-us/req"
    )
    print(f"batchroute run   {run_us:>12.1f} CPU-us per row, marginal (no cache)")
    for name in ("cache.get", "cache.get_many"):
        miss_us = results[name][1] * 1e6 / lookups  # a miss costs about what a hit does
        added_us = key_us + miss_us + store_us
        print(
            f"no hits, {name:<14} key {key_us:.1f} + lookup {miss_us:.1f} + store {store_us:.1f}"
            f" = {added_us:.1f} CPU-us per row = {100 * added_us / run_us:.1f}% of a whole run's"
            f" CPU per row (target <= 5%), {100 * added_us / request_us:.1f}% of a raw-post"
            " request's"
        )


def _whole_only(rows: int, repeats: int) -> None:
    cpus = os.sched_getaffinity(0)
    sim_cpus = [max(cpus)] if len(cpus) > 1 else None
    if sim_cpus:
        os.sched_setaffinity(0, cpus - set(sim_cpus))
    with SimulatorProcess(SimConfig(), cpus=sim_cpus) as sim:
        _whole_runs(sim.base_url, rows, repeats)


if __name__ == "__main__":
    main()
