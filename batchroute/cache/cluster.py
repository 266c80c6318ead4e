"""The response cache on a Ray cluster: the driver's node keeps the file, the workers ask it.

A Ray run serves and stores answers exactly as a local run does, with the same keys, so the two
engines share one cache:

- The **driver** looks up each batch's first requests itself (`RunCache.lookup`, one
  `get_many`) before cutting the batch into shards, as the local engine does before queueing
  it. A hit is settled at the driver and never reaches a worker.
- A **`CacheHost` actor, pinned to the driver's node**, opens the same file for the workers.
  A worker's walk computes its keys from the job, as a local walk does (`RunCache.key`). It
  sends the answers the policy accepted to the host in chunks, without waiting for them
  (`RemoteResponses.put`). When a row falls back, the walk asks the host for that fallback's
  stored answer (`get`), just before it would send the request.

Why one owner and not a cache per worker: `cache.path` may be on storage that the other nodes
do not see, or that each node has its own copy of (the default is under the user's home).
SQLite's WAL mode also needs a local file system: its `-shm` index is shared memory, and
`file.connect` refuses a share where WAL cannot be set. If shards opened `cache.path`
themselves, a rerun's hits would depend on which node the scheduler chose for a shard, and
answers stored on one node would be lost to the others. With one owner on the driver's node,
the file is where a local run on that machine would keep it. This is correct whether or not the
path is shared, and it costs each answer one extra trip to the driver's node.

A lost store costs a request in a later run, never a wrong answer. That happens if a worker dies
with answers still in its buffer, or if the host cannot be reached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from batchroute.cache.answers import CachedAnswer
from batchroute.cache.store import ResponseCache, cache_settings
from batchroute.config import CacheConfig, Job

__all__ = ["CacheHost", "RemoteResponses", "start_cache_host"]

STORE_CHUNK = 256
"""Answers a worker gathers before sending them to the host in one call."""
STORE_LINGER_S = 0.5
"""A worker sends its gathered answers at least this often while it answers rows."""

logger = logging.getLogger("batchroute")


class CacheHost:
    """The response cache's file, opened once for a whole Ray run (a Ray actor on the driver's
    node): lookups of fallbacks and stores of accepted answers, for every worker."""

    def __init__(self, config: CacheConfig) -> None:
        self.cache = ResponseCache.from_config(config)
        self.cache.open()

    def __repr__(self) -> str:
        return f"<CacheHost {self.cache!r}>"

    def node(self) -> str:
        """The Ray node id this host runs on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def get(self, key: bytes) -> CachedAnswer | None:
        return self.cache.get(key)

    def put_many(self, items: list[tuple[bytes, CachedAnswer]]) -> int:
        return self.cache.put_many(items)

    def close(self) -> dict[str, int]:
        """Commit every answer stored so far and close the file; the host's counts."""
        self.cache.close()
        return self.cache.stats


def start_cache_host(ray: Any, job: Job, *, no_cache: bool, refresh_cache: bool) -> Any:
    """A `CacheHost` actor on this (the driver's) node, over the file a local run would use.

    The path is resolved here, in the driver: the actor's process may not share the driver's
    working directory or environment (`XDG_CACHE_HOME`).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    settings = cache_settings(job.config.cache, no_cache=no_cache, refresh_cache=refresh_cache)
    path = ResponseCache.from_config(settings, base_dir=Path(job.base_dir)).path
    settings = settings.model_copy(update={"path": path})

    here = ray.get_runtime_context().get_node_id()
    host = (
        ray.remote(CacheHost)
        .options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
        )
        .remote(settings)
    )
    ray.get(host.node.remote())  # a file it cannot open stops the run here, before any request
    return host


class RemoteResponses:
    """A worker's stand-in for `ResponseCache`, backed by the run's `CacheHost` actor.

    `RunCache` uses it as it uses the file: `get` asks the host and waits for the answer, which
    happens only when a row falls back. `put` gathers answers and sends them in chunks without
    waiting. `close` sends the rest and waits until the host has them all. A host that cannot
    be reached never fails a row: lookups miss, stores are dropped, and `failed` is set.
    """

    def __init__(self, host: Any, *, read: bool, write: bool) -> None:
        self.host = host
        self.read = read
        self.write = write
        self._pending: list[tuple[bytes, CachedAnswer]] = []
        self._sent: list[Any] = []
        self._last_send = time.monotonic()
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self.failed = False
        """Set when the host could not be reached: lookups miss from then on (a lost answer
        costs a request; a row must not fail because the cache did)."""

    def __repr__(self) -> str:
        modes = "".join(("r" if self.read else "-", "w" if self.write else "-"))
        failed = ", host failed" if self.failed else ""
        return (
            f"<RemoteResponses [{modes}{failed}, hits: {self.hits}, misses: {self.misses}, "
            f"stored: {self.stored}, gathered: {len(self._pending)}, unconfirmed sends: "
            f"{len(self._sent)}]>"
        )

    def open(self) -> None:
        """Nothing to open: the host opened the file when the run started."""

    def get(self, key: bytes) -> CachedAnswer | None:
        if not self.read or self.failed:
            return None
        import ray

        try:
            answer: CachedAnswer | None = ray.get(self.host.get.remote(key))
        except ray.exceptions.RayError:
            logger.debug("the response cache's host failed", exc_info=True)
            self.failed = True
            return None
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    def get_many(self, keys: Sequence[bytes]) -> list[CachedAnswer | None]:
        return [self.get(key) for key in keys]

    def put(self, key: bytes, answer: CachedAnswer) -> bool:
        """Gather an answer; send the gathered ones when a chunk is full or has waited long."""
        if not self.write or not answer.is_cacheable:
            return False
        self._pending.append((key, answer))
        if (
            len(self._pending) >= STORE_CHUNK
            or time.monotonic() - self._last_send >= STORE_LINGER_S
        ):
            self._send()
        return True

    def put_many(self, items: Iterable[tuple[bytes, CachedAnswer]]) -> int:
        return sum(self.put(key, answer) for key, answer in items)

    def _send(self) -> None:
        import ray

        self._last_send = time.monotonic()
        if self.failed:
            self._pending = []
            return
        if self._pending:
            self.stored += len(self._pending)
            self._sent.append(self.host.put_many.remote(self._pending))
            self._pending = []
        if self._sent:  # forget the sends the host has confirmed (memory stays bounded)
            done, self._sent = ray.wait(self._sent, num_returns=len(self._sent), timeout=0)
            self._confirm(done)

    def _confirm(self, sent: list[Any]) -> None:
        import ray

        try:
            ray.get(sent)
        except ray.exceptions.RayError:
            logger.debug("the response cache's host failed", exc_info=True)
            self.failed = True
            self._sent = []

    def close(self) -> None:
        """Send what is gathered and wait until the host has queued every answer; `failed`
        then says whether some were lost."""
        self._send()
        sent, self._sent = self._sent, []
        self._confirm(sent)
