"""Group commit: a session's answers made durable together, and the slots they hold till then.

A finished row's answer waits in the session's `OutcomeBuffer`. `GroupCommit` writes what is
buffered to the journal in one write and one fsync (`Journal.commit`, in a worker thread): at
once when the writer is idle, else at most once an interval (`output.commit_interval_ms`).
Answers that arrive while a commit is being synced wait for the rest of the interval and go out
together in the next one, so one fsync serves many rows.

An answered row keeps its in-flight slot (one of the session's `slots`) until the commit that
makes its answer durable gives it back. So a crash at any instant re-buys at most the requests in
flight plus the answers of the last commit interval.
"""

from __future__ import annotations

import anyio

from batchroute.store.journal import Journal
from batchroute.store.outcomes import OutcomeBuffer

__all__ = ["GroupCommit"]


class GroupCommit:
    """Commits `buffer` to `journal`, and gives back each answered row's slot once its answer
    is durable. Made inside the session's event loop; `run` it in a task group."""

    def __init__(
        self,
        journal: Journal,
        buffer: OutcomeBuffer,
        slots: anyio.Semaphore,
        *,
        interval_s: float,
    ) -> None:
        self.journal = journal
        self.buffer = buffer
        self.slots = slots
        self.interval_s = interval_s
        self._wanted = anyio.Event()
        self._durable = anyio.Event()
        """Set by the commit that makes what was buffered before it durable."""
        self._lock = anyio.Lock()  # a batch collection commits beside the periodic commits
        self._held = 0
        """Answered rows whose slot waits for the commit that makes their answer durable."""

    def __repr__(self) -> str:
        return (
            f"<GroupCommit [slots held: {self._held}, buffered: {len(self.buffer)}, "
            f"every {self.interval_s * 1000:g} ms]>"
        )

    def hold(self) -> None:
        """A row's answer was buffered: its slot comes back with the commit that keeps it."""
        self._held += 1
        self._wanted.set()

    def want(self) -> None:
        """Rows that hold no slot were buffered (cache hits): commit them soon."""
        self._wanted.set()

    async def durable(self) -> None:
        """Return once everything buffered so far is durable, with the next commit."""
        durable = self._durable
        self._wanted.set()
        await durable.wait()

    async def run(self) -> None:
        """Commit whenever something was buffered: at once when the writer is idle, else at
        most once an interval. Runs until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            started = anyio.current_time()
            await self.commit()
            await anyio.sleep(max(0.0, started + self.interval_s - anyio.current_time()))

    async def commit(self) -> None:
        """Write what is buffered now, whole or not at all, then give back the slots held."""
        if self.buffer.is_empty:
            return
        results, attempts = self.buffer.take()
        held, self._held = self._held, 0
        durable, self._durable = self._durable, anyio.Event()
        with anyio.CancelScope(shield=True):  # a commit is written whole or not at all
            async with self._lock:
                await anyio.to_thread.run_sync(self.journal.commit, results, attempts)
        for _ in range(held):
            self.slots.release()
        durable.set()
