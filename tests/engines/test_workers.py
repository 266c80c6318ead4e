from __future__ import annotations

import anyio
import anyio.lowlevel
import polars as pl
import pytest

from batchroute.engines.workers import Backlog, Lane, WorkerPool


def test_every_item_is_handled_once_and_the_workers_end_when_closed() -> None:
    handled: list[int] = []

    async def handle(item: int) -> None:
        await anyio.lowlevel.checkpoint()
        handled.append(item)

    async def main() -> None:
        pool: WorkerPool[int] = WorkerPool(4, handle)
        async with anyio.create_task_group() as group:
            pool.start(group)
            for item in range(100):
                pool.put(item)
            pool.close()

    anyio.run(main)
    assert sorted(handled) == list(range(100))


def test_concurrency_is_the_pool_size() -> None:
    running = peak = 0

    async def handle(item: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1

    async def main() -> None:
        pool: WorkerPool[int] = WorkerPool(8, handle)
        async with anyio.create_task_group() as group:
            pool.start(group)
            for item in range(40):
                pool.put(item)
            pool.close()

    anyio.run(main)
    assert peak == 8


def test_put_queues_a_whole_batch_without_yielding() -> None:
    """The producer hands over every item before any worker runs (one event-loop turn)."""
    started: list[int] = []
    queued_before_first_start: list[int] = []

    async def handle(item: int) -> None:
        if not started:
            queued_before_first_start.append(queued)
        started.append(item)

    async def main() -> None:
        nonlocal queued
        pool: WorkerPool[int] = WorkerPool(16, handle)
        async with anyio.create_task_group() as group:
            pool.start(group)
            await anyio.sleep(0.01)  # the workers are idle, waiting
            for item in range(16):
                pool.put(item)
                queued += 1
            pool.close()

    queued = 0
    anyio.run(main)
    assert queued_before_first_start == [16]


def test_items_not_taken_before_a_cancel_are_drained() -> None:
    handled: list[int] = []

    async def handle(item: int) -> None:
        handled.append(item)
        await anyio.sleep(10)

    async def main() -> list[int]:
        pool: WorkerPool[int] = WorkerPool(2, handle)
        async with anyio.create_task_group() as group:
            pool.start(group)
            for item in range(10):
                pool.put(item)
            await anyio.sleep(0.05)
            group.cancel_scope.cancel()
        return pool.drain()

    left = anyio.run(main)
    assert handled == [0, 1]  # two workers, each stuck on its first item
    assert left == list(range(2, 10))
    assert sorted(handled + left) == list(range(10))


def test_a_closed_pool_refuses_items_and_a_pool_needs_a_worker() -> None:
    async def handle(item: int) -> None:
        return None

    async def main() -> None:
        pool: WorkerPool[int] = WorkerPool(1, handle)
        pool.close()
        with pytest.raises(RuntimeError, match="closed"):
            pool.put(1)
        with pytest.raises(ValueError, match="at least one worker"):
            WorkerPool(0, handle)

    anyio.run(main)


def test_lane_hands_out_frames_in_order_and_caps_its_rows_in_flight() -> None:
    async def main() -> tuple[list[int], bool, pl.DataFrame | None]:
        lane = Lane("complex", capacity=2)
        lane.put(pl.DataFrame({"x": [1]}))
        lane.put(pl.DataFrame({"x": [2]}))
        lane.close()
        got: list[int] = []
        while (frame := await lane.get()) is not None:
            got.append(int(frame["x"][0]))
        await lane.acquire()
        await lane.acquire()
        blocked = True
        with anyio.move_on_after(0.01):
            await lane.acquire()
            blocked = False
        lane.release()
        return got, blocked, await lane.get()

    got, blocked, last = anyio.run(main)
    assert got == [1, 2]
    assert blocked, "a third row waits while two are in flight"
    assert last is None


def test_backlog_waits_until_it_falls_below_its_limit() -> None:
    async def main() -> list[str]:
        backlog = Backlog(3)
        backlog.add(5)
        events: list[str] = []

        async def reader() -> None:
            await backlog.wait_below_capacity()
            events.append(f"read at {backlog.rows}")

        async with anyio.create_task_group() as group:
            group.start_soon(reader)
            await anyio.lowlevel.checkpoint()
            backlog.remove(2)
            events.append("removed 2")
            await anyio.lowlevel.checkpoint()
            backlog.remove(1)
        return events

    assert anyio.run(main) == ["removed 2", "read at 2"]
