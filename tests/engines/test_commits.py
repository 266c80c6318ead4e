"""Group commit (`engines/commits.py`): what it writes together, and when slots come back."""

from __future__ import annotations

from typing import cast

import anyio
import polars as pl

from batchroute.engines.commits import GroupCommit
from batchroute.store.journal import Journal
from batchroute.store.outcomes import OutcomeBuffer


class _Journal:
    """Records each commit's number of result rows (the journal's own tests cover writing)."""

    def __init__(self) -> None:
        self.commits: list[int] = []

    def commit(self, results: pl.DataFrame, attempts: pl.DataFrame) -> None:
        self.commits.append(results.height)


def _answer(buffer: OutcomeBuffer, commits: GroupCommit) -> None:
    """What the session does when a row is answered: buffer it, then hold its slot."""
    buffer.add_frame(pl.DataFrame({"row_index": [0]}))
    commits.hold()


def _group(*, slots: int, interval_s: float) -> tuple[GroupCommit, _Journal, OutcomeBuffer]:
    journal, buffer = _Journal(), OutcomeBuffer(metadata_columns=())
    slots = anyio.Semaphore(slots)
    group = GroupCommit(cast(Journal, journal), buffer, slots, interval_s=interval_s)
    return group, journal, buffer


def test_an_answers_slot_comes_back_only_with_the_commit_that_keeps_it() -> None:
    async def main() -> tuple[list[int], list[int]]:
        group, journal, buffer = _group(slots=2, interval_s=0.0)
        free: list[int] = []
        for _ in range(2):
            await group.slots.acquire()
            _answer(buffer, group)
        free.append(group.slots.value)
        await group.commit()
        free.append(group.slots.value)
        return free, journal.commits

    free, commits = anyio.run(main)
    assert free == [0, 2]
    assert commits == [2]


def test_nothing_buffered_writes_nothing() -> None:
    async def main() -> list[int]:
        group, journal, _ = _group(slots=1, interval_s=0.0)
        await group.commit()
        return journal.commits

    assert anyio.run(main) == []


def test_durable_returns_once_what_was_buffered_is_committed() -> None:
    async def main() -> list[int]:
        group, journal, buffer = _group(slots=1, interval_s=0.0)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(group.run)
            buffer.add_frame(pl.DataFrame({"row_index": [7]}))  # a climbing row's attempts
            with anyio.fail_after(10):
                await group.durable()
            committed = list(journal.commits)
            tasks.cancel_scope.cancel()
        return committed

    assert anyio.run(main) == [1]


def test_answers_within_one_interval_share_one_commit() -> None:
    """The first answer is committed at once; the two that follow within the interval wait for
    the rest of it and go out together."""

    async def main() -> list[int]:
        group, journal, buffer = _group(slots=3, interval_s=0.5)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(group.run)
            with anyio.fail_after(10):
                _answer(buffer, group)
                await group.durable()
                _answer(buffer, group)
                await anyio.sleep(0.05)  # the writer is now waiting out the interval
                _answer(buffer, group)
                await group.durable()
            committed = list(journal.commits)
            tasks.cancel_scope.cancel()
        return committed

    assert anyio.run(main) == [1, 2]


def test_its_repr_says_what_it_holds() -> None:
    async def main() -> str:
        group, _, buffer = _group(slots=1, interval_s=0.025)
        _answer(buffer, group)
        return repr(group)

    assert anyio.run(main) == "<GroupCommit [slots held: 1, buffered: 1, every 25 ms]>"
