"""Live progress of a run: a rich table on a terminal, a log line every few seconds elsewhere.

The runner calls `sent`, `finished` and `settled` from the event loop; they only bump counters.
Rendering happens on rich's refresh thread (terminal) or a small ticker thread (cron), so a slow
terminal never slows the requests down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table

from batchroute.config import TIERS
from batchroute.schema import Status

__all__ = ["Progress", "TierCounts"]

logger = logging.getLogger("batchroute.progress")


@dataclass(slots=True)
class TierCounts:
    """Counters for one tier."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    reused: int = 0
    cost_usd: float = 0.0

    @property
    def in_flight(self) -> int:
        return self.sent - self.ok - self.failed - self.skipped

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.skipped + self.reused


class Progress:
    """Counts rows as they finish and shows them, live or as periodic lines."""

    def __init__(
        self,
        *,
        live: bool,
        interval_s: float = 5.0,
        console: Console | None = None,
        enabled: bool = True,
    ) -> None:
        self.is_live = live
        self.interval_s = interval_s
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.tiers: dict[str, TierCounts] = {tier: TierCounts() for tier in TIERS}
        self.total_rows = 0
        self._started = time.monotonic()

    def __repr__(self) -> str:
        done = sum(c.done for c in self.tiers.values())
        return f"<Progress [done: {done}/{self.total_rows}]>"

    # -- counting (event loop) -----------------------------------------------------------------

    def sent(self, tier: str) -> None:
        self.tiers[tier].sent += 1

    def finished(self, tier: str, *, status: str, cost_usd: float) -> None:
        counts = self.tiers[tier]
        if status == Status.OK:
            counts.ok += 1
        elif status == Status.FAILED:
            counts.failed += 1
        else:
            counts.skipped += 1
        counts.cost_usd += cost_usd

    def settled(self, tiers: Iterable[str | None], *, status: str) -> None:
        """Count rows settled without a request (invalid, reused, skipped)."""
        for tier in tiers:
            counts = self.tiers[tier or "standard"]
            if status == "reused":
                counts.reused += 1
            elif status == Status.FAILED:
                counts.failed += 1
                counts.sent += 1
            else:
                counts.skipped += 1
                counts.sent += 1

    # -- showing -------------------------------------------------------------------------------

    @contextmanager
    def live(self, *, run_id: str, total_rows: int) -> Iterator[None]:
        """Show progress for the duration of the block."""
        self.total_rows = total_rows
        self._started = time.monotonic()
        if not self.enabled:
            yield
            return
        if self.is_live:
            with Live(
                get_renderable=self.table,
                console=self.console,
                refresh_per_second=4,
                transient=True,
            ):
                yield
            return
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(stop, run_id), daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()

    def _tick(self, stop: threading.Event, run_id: str) -> None:
        # a thread does not inherit the run's context variables: name the run explicitly
        while not stop.wait(self.interval_s):
            logger.info(self.line(), extra={"run_id": run_id})

    def line(self) -> str:
        """One plain line: done, failed, in flight, rate, cost so far and ETA, per tier."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        done = sum(c.done for c in self.tiers.values())
        rate = sum(c.ok + c.failed for c in self.tiers.values()) / elapsed
        remaining = max(self.total_rows - done, 0)
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
        cost = sum(c.cost_usd for c in self.tiers.values())
        tiers = " ".join(
            f"{tier}={c.done}/{c.failed}f/{c.in_flight}i/${c.cost_usd:.4f}"
            for tier, c in self.tiers.items()
            if c.sent or c.reused
        )
        return (
            f"progress: {done}/{self.total_rows} rows, "
            f"{sum(c.failed for c in self.tiers.values())} failed, "
            f"{sum(c.in_flight for c in self.tiers.values())} in flight, "
            f"{rate:.1f} rows/s, ${cost:.4f} so far, eta {eta} | {tiers}"
        )

    def table(self) -> Table:
        """The live table shown on a terminal."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        table = Table(title=f"batchroute — {elapsed:.0f}s", expand=False)
        for column in ("tier", "done", "ok", "failed", "in flight", "rows/s", "cost so far"):
            table.add_column(column, justify="left" if column == "tier" else "right")
        for tier, c in self.tiers.items():
            if not (c.sent or c.reused):
                continue
            table.add_row(
                tier,
                str(c.done),
                str(c.ok),
                str(c.failed),
                str(c.in_flight),
                f"{(c.ok + c.failed) / elapsed:.1f}",
                f"${c.cost_usd:.4f}",
            )
        done = sum(c.done for c in self.tiers.values())
        table.caption = f"{done}/{self.total_rows} rows"
        return table
