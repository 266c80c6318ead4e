"""Live progress of a run: a rich view on a terminal, a `progress` log event elsewhere.

The runner calls `sent`, `finished`, `settled` and `stopping` from the event loop; they only bump
counters. Rendering happens on rich's refresh thread (terminal) or a small ticker thread (cron),
so a slow terminal never slows the requests down.

"In flight" means sent to the provider and not yet answered: it is read from the dispatcher's
per-model limiters (`watch`), not inferred from rows handed to the dispatcher, which include rows
still queued behind `max_concurrency` or a rate limit. A model's in-flight requests are shared
among the tiers whose rows wait on it in proportion to those rows, so a request on a fallback
model counts under the tiers whose primary model that is; the total row is exact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from batchroute.config import TIERS
from batchroute.logs import log_event
from batchroute.schema import Status

__all__ = ["Progress", "TierCounts"]

logger = logging.getLogger("batchroute.progress")


class _Attempt(Protocol):
    @property
    def attempt(self) -> int: ...
    @property
    def status_code(self) -> int | None: ...


class _Budget(Protocol):
    @property
    def max_cost_usd(self) -> float | None: ...


@dataclass(slots=True)
class TierCounts:
    """Counters for one tier."""

    sent: int = 0
    """Rows handed to the dispatcher (in flight, or queued behind a limit)."""
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    """Rows the run stopped before sending (budget, abort, signal): not done."""
    reused: int = 0
    """Rows answered by an earlier session of the run directory."""
    cached: int = 0
    """Rows answered by the response cache: nothing sent."""
    retries: int = 0
    """Attempts beyond a row's first (retries, fallbacks, escalations and judge calls, those of a
    climb an earlier session made durable included), counted when the row finishes."""
    rate_limited: int = 0
    """429 answers, counted when the row finishes."""
    cost_usd: float = 0.0

    @property
    def waiting(self) -> int:
        """Handed to the dispatcher and not finished: in flight plus queued."""
        return max(self.sent - self.ok - self.failed - self.skipped, 0)

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.reused + self.cached


class Progress:
    """Counts rows as they finish and shows them, live or as periodic log events."""

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
        self.forecast_usd: float | None = None
        """Forecast cost of the rows read so far (the runner updates it batch by batch)."""
        self.budget: _Budget | None = None
        self.stop_reason: str | None = None
        self._in_flight: Callable[[], Mapping[str, int]] = dict
        self._tier_models: Mapping[str, str] = {}
        self._started = time.monotonic()

    def __repr__(self) -> str:
        done = sum(c.done for c in self.tiers.values())
        return f"<Progress [done: {done}/{self.total_rows}, stopping: {self.stop_reason}]>"

    # -- counting (event loop) -----------------------------------------------------------------

    def watch(
        self,
        in_flight: Callable[[], Mapping[str, int]],
        *,
        tier_models: Mapping[str, str],
        budget: _Budget | None = None,
    ) -> None:
        """Read true in-flight requests per model from `in_flight`; show spend against `budget`."""
        self._in_flight = in_flight
        self._tier_models = dict(tier_models)
        self.budget = budget

    def sent(self, tier: str) -> None:
        self.tiers[tier].sent += 1

    def finished(
        self,
        tier: str,
        *,
        status: str,
        cost_usd: float,
        attempts: Sequence[_Attempt] = (),
    ) -> None:
        counts = self.tiers[tier]
        if status == Status.OK:
            counts.ok += 1
        elif status == Status.FAILED:
            counts.failed += 1
        else:
            counts.skipped += 1
        counts.cost_usd += cost_usd
        # By the attempts' numbers, not their count: a climbing row's earlier attempts were made
        # durable when it climbed (in this session, or one that crashed mid-climb) and are not
        # among `attempts`, yet the numbering counts them.
        counts.retries += max((attempt.attempt for attempt in attempts), default=1) - 1
        counts.rate_limited += sum(1 for attempt in attempts if attempt.status_code == 429)

    def settled(self, tiers: Iterable[str | None], *, status: str) -> None:
        """Count rows settled without a request (invalid, reused, skipped)."""
        for tier in tiers:
            counts = self.tiers[tier or "standard"]
            if status == "reused":
                counts.reused += 1
            elif status == "cached":
                counts.cached += 1
            elif status == Status.FAILED:
                counts.failed += 1
                counts.sent += 1
            else:
                counts.skipped += 1
                counts.sent += 1

    def stopping(self, reason: str) -> None:
        """Say on screen that the run is stopping, and why."""
        self.stop_reason = reason

    # -- figures (any thread) ------------------------------------------------------------------

    def _in_flight_per_tier(self) -> tuple[dict[str, int], int]:
        """True in-flight requests per tier (shared by waiting rows), and in total."""
        per_model = dict(self._in_flight())
        waiting = {tier: c.waiting for tier, c in self.tiers.items()}
        total = min(sum(per_model.values()), sum(waiting.values()))
        shares = dict.fromkeys(self.tiers, 0)
        by_model: dict[str, list[str]] = {}
        for tier, model in self._tier_models.items():
            if tier in shares:
                by_model.setdefault(model, []).append(tier)
        for model, tiers in by_model.items():
            load = sum(waiting[t] for t in tiers)
            flying = per_model.get(model, 0)
            for tier in tiers:
                share = flying * waiting[tier] // load if load else 0
                shares[tier] = min(share, waiting[tier])
        return shares, total

    def snapshot(self) -> dict[str, Any]:
        """Every figure the views show, as plain numbers (the `progress` event's fields)."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        in_flight, total_in_flight = self._in_flight_per_tier()
        tiers: dict[str, dict[str, Any]] = {}
        for tier, c in self.tiers.items():
            if not (c.sent or c.reused or c.cached):
                continue
            tiers[tier] = {
                "done": c.done,
                "ok": c.ok,
                "failed": c.failed,
                "skipped": c.skipped,
                "in_flight": in_flight[tier],
                "queued": c.waiting - in_flight[tier],
                "rows_per_s": round((c.ok + c.failed) / elapsed, 2),
                "retries": c.retries,
                "rate_limited": c.rate_limited,
                "cost_usd": round(c.cost_usd, 6),
                "cached": c.cached,
            }
        counts = self.tiers.values()
        done = sum(c.done for c in counts)
        skipped = sum(c.skipped for c in counts)
        answered = sum(c.ok + c.failed for c in counts)
        rate = answered / elapsed
        remaining = max(self.total_rows - done - skipped, 0)
        cap = self.budget.max_cost_usd if self.budget is not None else None
        return {
            "done": done,
            "total": self.total_rows,
            "ok": sum(c.ok for c in counts),
            "failed": sum(c.failed for c in counts),
            "skipped": skipped,
            "reused": sum(c.reused for c in counts),
            "in_flight": total_in_flight,
            "queued": sum(c.waiting for c in counts) - total_in_flight,
            "rows_per_s": round(rate, 2),
            "retries": sum(c.retries for c in counts),
            "rate_limited": sum(c.rate_limited for c in counts),
            "cost_usd": round(sum(c.cost_usd for c in counts), 6),
            "forecast_usd": None if self.forecast_usd is None else round(self.forecast_usd, 6),
            "max_cost_usd": cap,
            "eta_s": round(remaining / rate, 1) if rate > 0 and not self.stop_reason else None,
            "elapsed_s": round(elapsed, 1),
            "stopping": self.stop_reason,
            "tiers": tiers,
            "cached": sum(c.cached for c in counts),
        }

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
            # The live view's modules load only when a terminal shows it (issue 15: start-up).
            from rich.live import Live
            from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn
            from rich.progress import Progress as RichProgress

            bar = RichProgress(
                TextColumn("[bold]rows"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[eta]}"),
                console=self.console,
            )
            task = bar.add_task("rows", total=total_rows or None, eta="")

            def render() -> RenderableType:
                figures = self.snapshot()
                bar.update(task, completed=figures["done"], eta=_eta_text(figures))
                return Group(bar, self.table(figures), self._footer(figures))

            with Live(
                get_renderable=render,
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
            figures = self.snapshot()
            log_event(logger, "progress", self.line(figures), run_id=run_id, **figures)

    def line(self, figures: dict[str, Any] | None = None) -> str:
        """One plain line: done, failed, in flight, rate, spend and ETA, per tier."""
        f = figures if figures is not None else self.snapshot()
        tiers = " ".join(
            f"{tier}={t['done']}/{t['failed']}f/{t['in_flight']}i/{t['queued']}q/"
            f"${t['cost_usd']:.4f}"
            for tier, t in f["tiers"].items()
        )
        stopping = f" | stopping: {f['stopping']}" if f["stopping"] else ""
        return (
            f"progress: {f['done']}/{f['total']} rows, {f['failed']} failed, "
            f"{f['skipped']} skipped, "
            + (f"{f['cached']} from the cache, " if f.get("cached") else "")
            + f"{f['in_flight']} in flight, {f['queued']} queued, "
            f"{f['rows_per_s']:.1f} rows/s, {f['retries']} retries, {f['rate_limited']} 429s, "
            f"{_spend_text(f)}, eta {_eta_text(f)}{stopping} | {tiers}"
        )

    def table(self, figures: dict[str, Any] | None = None) -> Table:
        """The per-tier table of the live view, with a total row."""
        f = figures if figures is not None else self.snapshot()
        table = Table(title=f"batchroute — {f['elapsed_s']:.0f}s", expand=False)
        columns = (
            "tier",
            "done",
            "ok",
            "failed",
            "skipped",
            "in flight",
            "queued",
            "rows/s",
            "retries",
            "429s",
            "cost so far",
        )
        for column in columns:
            table.add_column(column, justify="left" if column == "tier" else "right")
        keys = (
            "done",
            "ok",
            "failed",
            "skipped",
            "in_flight",
            "queued",
            "rows_per_s",
            "retries",
            "rate_limited",
        )
        rows = list(f["tiers"].items())
        for i, (tier, t) in enumerate(rows):
            table.add_row(
                tier, *_cells(t, keys), f"${t['cost_usd']:.4f}", end_section=i == len(rows) - 1
            )
        table.add_row("total", *_cells(f, keys), f"${f['cost_usd']:.4f}", style="bold")
        return table

    def _footer(self, figures: dict[str, Any]) -> Text:
        text = Text(f"{_spend_text(figures)}; eta {_eta_text(figures)}")
        if figures["stopping"]:
            text.append(f"\nstopping… {figures['stopping']}", style="bold yellow")
        return text


def _cells(figures: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [f"{figures[k]:.1f}" if k == "rows_per_s" else str(figures[k]) for k in keys]


def _eta_text(figures: dict[str, Any]) -> str:
    if figures["stopping"]:
        return "stopping"
    eta = figures["eta_s"]
    if eta is None:
        return "?"
    minutes, seconds = divmod(int(eta), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _spend_text(figures: dict[str, Any]) -> str:
    text = f"${figures['cost_usd']:.4f} spent"
    if figures["forecast_usd"] is not None:
        text += f" of ${figures['forecast_usd']:.4f} forecast"
    if figures["max_cost_usd"] is not None:
        text += f", cap ${figures['max_cost_usd']:.2f}"
    return text
