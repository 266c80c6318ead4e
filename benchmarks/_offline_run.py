"""`batchroute run` with every HTTP attempt answered at once, in process, by a canned completion.

bench_overhead's workload `batchroute-offline`: what is left is batchroute's own CPU (reading,
classifying, pacing, the walk, bookkeeping, group commits, the cache, assembly and the
reports), with no client, no socket and no server in the figure. For measuring only: the
answers are not real, and nothing here is how a run is tested (the tests send through the real
AsyncOpenAI client to the simulator).

    python benchmarks/_offline_run.py JOB_FILE
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Mapping
from typing import Any

# Imported with the collector paused and what they built frozen, as the command line imports a
# command's modules (`cli._collector_paused`): the start-up then costs what `batchroute run`'s
# does (without the freeze, 40 ms more).
gc.disable()
import anyio.lowlevel  # noqa: E402
import openai  # noqa: E402

import batchroute.dispatch.walk  # noqa: E402
from batchroute.cli import entry  # noqa: E402
from batchroute.dispatch.client import Completion, Reply  # noqa: E402

gc.freeze()
gc.enable()


async def instant_answer(client: openai.AsyncOpenAI, body: Mapping[str, Any]) -> Reply:
    """A complete answer with usage, after one turn of the event loop (as a reply would take)."""
    await anyio.lowlevel.checkpoint()
    return Reply(200, completion=Completion("A short answer.", "stop", True, 12, 5, 0, 0))


if __name__ == "__main__":
    # The walk's one call to the endpoint (imported there by name from dispatch.client).
    batchroute.dispatch.walk.send_chat = instant_answer  # type: ignore[attr-defined]
    sys.argv = ["batchroute", "run", sys.argv[1], "--quiet"]
    entry()
