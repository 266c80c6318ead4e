"""How many chat completions per second the simulator serves on one core, against bare aiohttp.

Both servers run in a child process pinned to one CPU; client processes on the other CPU(s) drive
them over loopback with a lean aiohttp client (no SDK) at a fixed total concurrency. The figures
are the server process's CPU-seconds per request (from psutil) and the achieved requests/s; the
bare aiohttp.web server returning a fixed JSON body, measured in the same run, is the baseline.
One-core capacity is 1 / (CPU-seconds per request): what the server would serve with its core to
itself, whatever the clients or the other tenants of the machine manage.

    python benchmarks/bench_sim.py [--requests 5000] [--concurrency 64] [--clients 2]
"""

# ruff: noqa: T201 - a benchmark script reports its figures on stdout

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]  # no stubs installed
from aiohttp import web

from batchroute.sim import SimConfig, SimulatorProcess

_BODY = json.dumps(
    {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "You are a concise senior engineer."},
            {"role": "user", "content": "Explain how to make a flaky integration test reliable."},
        ],
        "max_tokens": 256,
        "temperature": 0,
    }
).encode()

_FIXED = json.dumps(
    {
        "id": "chatcmpl-fixed",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A fixed answer.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34},
    }
).encode()


def _bare_server(cpus: list[int], conn: Connection) -> None:
    os.sched_setaffinity(0, cpus)

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=_FIXED, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(f"http://127.0.0.1:{site.port}/v1")
        await asyncio.Event().wait()

    asyncio.run(main())


async def _drive(url: str, requests: int, concurrency: int) -> int:
    connector = aiohttp.TCPConnector(limit=concurrency)
    ok = 0
    remaining = requests
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok, remaining
            headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
            while remaining > 0:
                remaining -= 1
                async with session.post(url, data=_BODY, headers=headers) as response:
                    await response.read()
                    ok += response.status == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def _client(url: str, requests: int, concurrency: int, cpus: list[int], conn: Connection) -> None:
    os.sched_setaffinity(0, cpus)
    conn.recv()  # start together
    conn.send(asyncio.run(_drive(url, requests, concurrency)))


def _load(
    base_url: str, pid: int, args: argparse.Namespace, client_cpus: list[int]
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    url = base_url + "/chat/completions"
    per_client = args.requests // args.clients
    pipes, procs = [], []
    for _ in range(args.clients):
        mine, theirs = context.Pipe()
        proc = context.Process(
            target=_client,
            args=(url, per_client, args.concurrency // args.clients, client_cpus, theirs),
        )
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    asyncio.run(_drive(url, 200, 8))  # warm up the server's code paths
    server = psutil.Process(pid)
    before = server.cpu_times()
    started = time.perf_counter()
    for pipe in pipes:
        pipe.send("go")
    ok = sum(pipe.recv() for pipe in pipes)
    wall = time.perf_counter() - started
    after = server.cpu_times()
    for proc in procs:
        proc.join()
    cpu = (after.user - before.user) + (after.system - before.system)
    total = per_client * args.clients
    return {
        "ok": ok,
        "total": total,
        "wall_s": wall,
        "rps": total / wall,
        "cpu_per_req": cpu / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = [cpus[0]]
    client_cpus = cpus[1:] or cpus

    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    bare = context.Process(target=_bare_server, args=(server_cpus, theirs), daemon=True)
    bare.start()
    try:
        assert bare.pid is not None
        baseline = _load(mine.recv(), bare.pid, args, client_cpus)
    finally:
        bare.terminate()
        bare.join()

    with SimulatorProcess(SimConfig(), cpus=server_cpus) as sim:
        measured = _load(sim.base_url, sim.pid, args, client_cpus)
        counted = sim.stats()["total"]

    print(
        f"requests {args.requests}, concurrency {args.concurrency}, client processes {args.clients}"
    )
    print(f"server pinned to CPU {server_cpus}, clients on CPUs {client_cpus}")
    for name, r in (("bare aiohttp.web", baseline), ("batchroute sim", measured)):
        print(
            f"{name:18s} {r['rps']:7.0f} req/s achieved   {r['cpu_per_req'] * 1e3:6.3f} CPU-ms/req"
            f"   one-core capacity {1 / r['cpu_per_req']:7.0f} req/s   ok {r['ok']}/{r['total']}"
        )
    print(f"simulator counted {counted} requests (incl. warm-up)")
    cpu_ratio = measured["cpu_per_req"] / baseline["cpu_per_req"]
    rps_ratio = measured["rps"] / baseline["rps"]
    print(f"simulator / bare: CPU per request x{cpu_ratio:.2f}, achieved req/s x{rps_ratio:.2f}")
    capacity = 1 / measured["cpu_per_req"]
    verdict = "meets" if capacity >= 3000 else "MISSES"
    print(f"simulator one-core capacity {capacity:.0f} req/s: {verdict} the 3,000 req/s target")


if __name__ == "__main__":
    main()
