"""The live view: true in-flight counts, retries and 429s, spend against forecast and cap, ETA,
a total row, and a visible "stopping…" after a signal."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from batchroute.progress import Progress


@dataclass
class _Attempt:
    status_code: int | None
    attempt: int = 1


@dataclass
class _Budget:
    max_cost_usd: float | None


def _progress(in_flight: dict[str, int]) -> Progress:
    progress = Progress(live=False, enabled=False)
    progress.total_rows = 100
    progress.watch(
        lambda: in_flight,
        tier_models={"complex": "big", "standard": "mid", "structured": "mid", "bulk": "small"},
        budget=_Budget(max_cost_usd=2.5),
    )
    return progress


def test_in_flight_is_what_the_limiters_sent_not_rows_still_queued() -> None:
    """Issue 18: 228 rows showed as in flight with max_concurrency 64."""
    flying = {"big": 0, "mid": 4, "small": 0}
    progress = _progress(flying)
    for _ in range(30):
        progress.sent("standard")
    for _ in range(10):
        progress.sent("structured")
    figures = progress.snapshot()
    assert figures["in_flight"] == 4 and figures["queued"] == 36
    tiers = figures["tiers"]
    assert tiers["standard"]["in_flight"] == 3 and tiers["standard"]["queued"] == 27
    assert tiers["structured"]["in_flight"] == 1 and tiers["structured"]["queued"] == 9


def test_retries_and_429s_come_from_the_finished_rows_attempts() -> None:
    progress = _progress({})
    progress.sent("bulk")
    progress.finished(
        "bulk",
        status="ok",
        cost_usd=0.5,
        attempts=[_Attempt(429, 1), _Attempt(500, 2), _Attempt(200, 3)],
    )
    figures = progress.snapshot()
    assert figures["retries"] == 2 and figures["rate_limited"] == 1
    assert figures["tiers"]["bulk"]["rate_limited"] == 1


def test_skipped_rows_are_not_done_and_the_eta_counts_the_rest() -> None:
    progress = _progress({})
    progress._started -= 10  # ten rows in ten seconds: one row/s
    for _ in range(10):
        progress.sent("standard")
        progress.finished("standard", status="ok", cost_usd=0.01)
    progress.settled(["standard"] * 5, status="skipped_interrupted")
    figures = progress.snapshot()
    assert figures["done"] == 10 and figures["skipped"] == 5
    assert figures["eta_s"] is not None and 84 <= figures["eta_s"] <= 86  # 85 rows left


def test_the_view_has_a_total_row_spend_against_forecast_and_cap_and_says_stopping() -> None:
    progress = _progress({"mid": 2})
    progress.forecast_usd = 1.75
    for _ in range(4):
        progress.sent("standard")
    progress.finished("standard", status="ok", cost_usd=0.25, attempts=[_Attempt(200)])
    console = Console(record=True, width=160, force_terminal=True)
    console.print(progress.table())
    progress.stopping("SIGINT received; finishing in-flight requests")
    console.print(progress._footer(progress.snapshot()))
    text = console.export_text()
    for heading in ("in flight", "queued", "rows/s", "retries", "429s", "total"):
        assert heading in text, heading
    assert "$0.2500 spent of $1.7500 forecast, cap $2.50" in text
    assert "stopping… SIGINT received" in text
    assert progress.snapshot()["eta_s"] is None  # no promise of an end while stopping
    assert "stopping: SIGINT" in progress.line()


def test_rows_the_response_cache_answers_count_as_done_and_cached() -> None:
    from batchroute.progress import Progress

    progress = Progress(live=False, enabled=False)
    progress.total_rows = 3
    progress.settled(["standard", "bulk"], status="cached")
    snapshot = progress.snapshot()
    assert (snapshot["done"], snapshot["cached"], snapshot["skipped"]) == (2, 2, 0)
    assert snapshot["tiers"]["bulk"]["cached"] == 1
    assert "2 from the cache" in progress.line(snapshot)


def test_retries_count_the_attempts_a_climb_made_durable_before_it_went_on() -> None:
    """A row that climbed (its first two attempts journaled when it did, in this session or a
    crashed one) finishes with only its later attempts in hand: their numbers count the rest."""
    progress = _progress({})
    progress.sent("bulk")
    progress.finished("bulk", status="ok", cost_usd=0.5, attempts=[_Attempt(200, 3)])
    progress.sent("bulk")
    progress.finished("bulk", status="failed", cost_usd=0.0, attempts=[])
    assert progress.snapshot()["retries"] == 2
