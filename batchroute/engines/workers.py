"""How rows reach the senders: per-tier lanes, a bounded backlog, and a fixed pool of senders.

`Lane`: one per tier, a queue of row frames and a cap on the tier's rows in flight, so a tier
whose model is slow or paused never holds the run's slots that other tiers need. `Backlog`
bounds the rows queued on all lanes together, so memory stays bounded when a tier lags.

`WorkerPool`: a fixed pool of tasks that handle queued items, instead of a task per item.

Starting a task under anyio costs about 40 µs of CPU (`TaskGroup.start_soon`: the coroutine, the
asyncio task, anyio's handle and cancel scope), more than everything batchroute itself does for
a request, and a run of a million rows would start a million of them. The pool starts its
workers once. `put` queues an item and wakes one idle worker without yielding, so a producer can
hand over a whole batch in one turn of the event loop.

Nothing queued is lost: an item is either taken by a worker, which then owns it (and handles its
own cancellation), or still in the queue, where `drain` returns it after the pool has stopped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import anyio.abc
import polars as pl

__all__ = ["Backlog", "Lane", "WorkerPool", "acquire"]

T = TypeVar("T")


class WorkerPool(Generic[T]):
    """`size` workers, each handling one queued item at a time with `handle`."""

    def __init__(self, size: int, handle: Callable[[T], Awaitable[None]]) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, not {size}")
        self.size = size
        self._handle = handle
        self._items: deque[T] = deque()
        # One permit per queued item, plus one per worker once the pool is closed.
        self._permits = anyio.Semaphore(0, fast_acquire=True)
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<WorkerPool [{state}, workers: {self.size}, queued: {len(self._items)}]>"

    def start(self, group: anyio.abc.TaskGroup) -> None:
        """Start the workers in `group`; they end when the pool is closed and empty."""
        for _ in range(self.size):
            group.start_soon(self._work)

    def put(self, item: T) -> None:
        """Queue an item for the next idle worker (never blocks, never yields)."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        self._items.append(item)
        self._permits.release()

    def close(self) -> None:
        """No more items: each worker ends once the queue is empty."""
        if not self._closed:
            self._closed = True
            for _ in range(self.size):
                self._permits.release()

    def drain(self) -> list[T]:
        """Remove and return the items no worker took (the pool was cancelled first)."""
        items = list(self._items)
        self._items.clear()
        return items

    async def _work(self) -> None:
        while True:
            await acquire(self._permits)  # the handler's own awaits check for cancellation
            if not self._items:
                return  # a closing permit: the queue is empty for good
            await self._handle(self._items.popleft())


class Lane:
    """One tier's queue of row frames, and its cap on rows in flight."""

    def __init__(self, tier: str, *, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a lane needs a capacity of at least one, not {capacity}")
        self.tier = tier
        self.capacity = capacity
        self._slots = anyio.Semaphore(capacity, fast_acquire=True)
        self._frames: deque[pl.DataFrame] = deque()
        self._ready = anyio.Event()
        self._closed = False

    def __repr__(self) -> str:
        in_flight = self.capacity - self._slots.value
        return (
            f"<Lane {self.tier!r} [in flight: {in_flight}/{self.capacity}, "
            f"frames queued: {len(self._frames)}, closed: {self._closed}]>"
        )

    @property
    def in_flight(self) -> int:
        return self.capacity - self._slots.value

    def put(self, frame: pl.DataFrame) -> None:
        """Queue a frame of this tier's rows (never blocks)."""
        self._frames.append(frame)
        self._ready.set()

    def close(self) -> None:
        """No more frames: `get` returns None once the queue is empty."""
        self._closed = True
        self._ready.set()

    async def get(self) -> pl.DataFrame | None:
        """The next frame, waiting for one; None when the lane is closed and empty."""
        while not self._frames:
            if self._closed:
                return None
            self._ready = anyio.Event()
            await self._ready.wait()
        return self._frames.popleft()

    async def acquire(self) -> None:
        """Wait for one of the tier's in-flight places (a free one is taken at once)."""
        await acquire(self._slots)

    def release(self) -> None:
        self._slots.release()


async def acquire(semaphore: anyio.Semaphore) -> None:
    """`semaphore.acquire()`, without its cancellation checkpoint when a place is free.

    With `fast_acquire` the free path never yields anyway; the checkpoint alone costs about a
    microsecond per row (a task lookup and a walk up the cancel scopes; issue 15). A cancelled
    caller still stops at its next await that blocks.
    """
    if semaphore.value:
        semaphore.acquire_nowait()
    else:
        await semaphore.acquire()


class Backlog:
    """A count of queued rows, with a wait for it to fall below a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows = 0
        self._fell = anyio.Event()

    def __repr__(self) -> str:
        return f"<Backlog [rows: {self.rows}, limit: {self.limit}]>"

    def add(self, rows: int) -> None:
        self.rows += rows

    def remove(self, rows: int) -> None:
        self.rows -= rows
        if self.rows < self.limit:
            self._fell.set()

    async def wait_below_capacity(self) -> None:
        """Return once fewer than `limit` rows are queued."""
        while self.rows >= self.limit:
            self._fell = anyio.Event()
            await self._fell.wait()
