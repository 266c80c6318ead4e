"""The best plain loop through the AsyncOpenAI client: `client.post` with a raw response.

Its own script so that, run as a process (bench_overhead's workload (e)), it imports only what
such a loop needs: the figures compare batchroute with the leanest process that does the same
requests, not one that also loads the benchmark's imports.

    python benchmarks/_raw_post.py BASE_URL REQUESTS CONCURRENCY
"""

from __future__ import annotations

import json
import sys

import anyio
import httpx2
import openai

MODEL = "bench-model"
LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=512)
"""The connection limits batchroute's client uses (`dispatch/client.py`): the SDK's default keeps
only 100 connections alive, so at concurrency above 100 the raw loop would reconnect while
batchroute does not, and the two would not compare like with like."""


def messages(i: int) -> list[dict[str, str]]:
    """The i-th request's messages (the same in every workload of bench_overhead)."""
    return [{"role": "user", "content": f"Summarise ticket {i}: the nightly export fails."}]


async def run(base_url: str, count: int, concurrency: int) -> None:
    """Send `count` chat requests through `concurrency` workers and decode every answer."""
    client = openai.AsyncOpenAI(
        api_key="k",
        base_url=base_url,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(limits=LIMITS),
    )
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            body = {"model": MODEL, "messages": messages(i), "max_tokens": 64}
            response = await client.post("/chat/completions", body=body, cast_to=httpx2.Response)
            json.loads(response.content)

    async with client, anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)


if __name__ == "__main__":
    url, requests, concurrency = sys.argv[1:]
    anyio.run(run, url, int(requests), int(concurrency))
