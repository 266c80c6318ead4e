"""Tests for batchroute.dispatch.limits: pacing, part-full buckets, cooldown, ramp, headers."""

from __future__ import annotations

import time

import anyio
import pytest

from batchroute.dispatch.client import RateLimitHint
from batchroute.dispatch.limits import (
    HEADROOM,
    LOW_REMAINING_FACTOR,
    PACED_RAMP_FLOOR,
    RAMP_FLOOR,
    START_S,
    START_SHARE,
    ModelLimiter,
)


def _max_in_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    best = 0
    start = 0
    for end, stamp in enumerate(times):
        while stamp - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


async def _send_many(limiter: ModelLimiter, count: int, *, tokens: int = 0) -> list[float]:
    stamps: list[float] = []

    async def one() -> None:
        await limiter.acquire(tokens)
        stamps.append(time.monotonic())
        limiter.release()

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one)
    return stamps


def test_bucket_starts_part_full() -> None:
    """A fresh limiter admits one or two requests at once, never a minute's quota."""

    async def main() -> list[float]:
        limiter = ModelLimiter("m", rpm=6000, tpm=None, max_concurrency=500)
        return await _send_many(limiter, 30)

    stamps = anyio.run(main)
    first = min(stamps)
    assert sum(1 for s in stamps if s - first < 0.004) <= 2
    assert len(stamps) == 30


def test_quantised_window_is_never_exceeded() -> None:
    """At 3,000 RPM no one-second window sees more than 48 sends (a provider may allow 50)."""

    async def main() -> list[float]:
        limiter = ModelLimiter("m", rpm=3000, tpm=None, max_concurrency=200)
        return await _send_many(limiter, 100)

    stamps = sorted(anyio.run(main))
    assert _max_in_window(stamps, 1.0) <= 48
    first = stamps[0]
    assert sum(1 for s in stamps if s - first < START_S) <= 50 * START_SHARE * START_S + 1
    steady = [s for s in stamps if s - first >= START_S]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    assert rate == pytest.approx(50 * HEADROOM, rel=0.06)


def test_concurrency_is_capped() -> None:
    async def main() -> int:
        limiter = ModelLimiter("m", rpm=None, tpm=None, max_concurrency=3)
        peak = 0

        async def one() -> None:
            nonlocal peak
            await limiter.acquire(0)
            peak = max(peak, limiter.in_flight)
            await anyio.sleep(0.01)
            limiter.release()

        async with anyio.create_task_group() as group:
            for _ in range(12):
                group.start_soon(one)
        return peak

    assert anyio.run(main) == 3


def test_cooldown_is_shared_and_counted_once() -> None:
    """Fifty simultaneous 429s make one pause, and no request is sent during it."""

    async def main() -> tuple[ModelLimiter, float, list[float]]:
        limiter = ModelLimiter("m", rpm=None, tpm=None, max_concurrency=100)
        started = [limiter.cool_down(0.3) for _ in range(50)]
        assert started.count(True) == 1
        paused_at = time.monotonic()
        stamps = await _send_many(limiter, 5)
        return limiter, paused_at, stamps

    limiter, paused_at, stamps = anyio.run(main)
    assert limiter.pauses == 1
    assert min(stamps) >= paused_at + 0.29


def test_rate_ramps_back_after_cooldown() -> None:
    now = [100.0]
    limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10, clock=lambda: now[0])
    limiter.cool_down(1.0)
    assert limiter.is_cooling()
    now[0] = 101.0
    assert limiter.rate_factor(now[0]) == pytest.approx(PACED_RAMP_FLOOR)
    now[0] = 102.5
    assert PACED_RAMP_FLOOR < limiter.rate_factor(now[0]) < 1.0
    now[0] = 110.0
    assert limiter.rate_factor(now[0]) == 1.0
    limiter.cool_down(0.0)
    assert limiter.rate_factor(now[0]) == pytest.approx(PACED_RAMP_FLOOR)
    now[0] = 111.0
    limiter.cool_down(0.0)  # a 429 during the ramp halves the rate reached, down to the floor
    assert limiter.rate_factor(now[0]) == pytest.approx(PACED_RAMP_FLOOR)
    assert limiter.pauses == 3


def test_unpaced_model_ramps_from_a_quarter() -> None:
    now = [0.0]
    limiter = ModelLimiter("m", rpm=None, tpm=None, max_concurrency=10, clock=lambda: now[0])
    limiter.cool_down(1.0)
    now[0] = 1.0
    assert limiter.rate_factor(now[0]) == pytest.approx(RAMP_FLOOR)


def test_unpaced_model_ramps_back_through_its_concurrency() -> None:
    """Without a known rate, the herd after a cooldown is held to a quarter of the window."""

    async def main() -> tuple[int, int]:
        limiter = ModelLimiter("m", rpm=None, tpm=None, max_concurrency=40)
        limiter.cool_down(0.05)
        peak_early = 0
        peak_late = 0

        async def one(hold_s: float) -> None:
            nonlocal peak_early, peak_late
            await limiter.acquire(0)
            if time.monotonic() < limiter.cooldown_until + 0.3:
                peak_early = max(peak_early, limiter.in_flight)
            else:
                peak_late = max(peak_late, limiter.in_flight)
            await anyio.sleep(hold_s)
            limiter.release()

        async with anyio.create_task_group() as group:
            for _ in range(40):
                group.start_soon(one, 0.2)
        await anyio.sleep(limiter.ramp_until - time.monotonic())
        async with anyio.create_task_group() as group:
            for _ in range(40):
                group.start_soon(one, 0.05)
        return peak_early, peak_late

    early, late = anyio.run(main)
    assert early <= 40 * RAMP_FLOOR + 3
    assert late == 40


def test_tokens_are_reserved_and_corrected() -> None:
    """A refund after the usage is known lets the next request go sooner."""
    now = [0.0]
    limiter = ModelLimiter("m", rpm=None, tpm=6000, max_concurrency=10, clock=lambda: now[0])
    rate = 6000 * HEADROOM / 60
    assert limiter._try_take(0.0, 200)
    assert limiter._ready_at(0.0, 100) == pytest.approx(200 / rate - 0.05)
    limiter.settle(200, 50)
    assert limiter._ready_at(0.0, 100) == pytest.approx(50 / rate - 0.05)
    limiter.settle(50, 300)
    assert limiter._ready_at(0.0, 100) == pytest.approx(300 / rate - 0.05)


def test_headers_slow_down_but_never_raise_above_config() -> None:
    now = [0.0]
    limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10, clock=lambda: now[0])
    limiter.follow_headers(RateLimitHint(limit_requests=100_000, remaining_requests=90_000))
    assert limiter._limits()[0] == pytest.approx(600 * HEADROOM / 60)
    limiter.follow_headers(RateLimitHint(limit_requests=300, remaining_requests=200))
    assert limiter._limits()[0] == pytest.approx(300 * HEADROOM / 60)
    limiter.follow_headers(RateLimitHint(limit_requests=300, remaining_requests=150))
    assert limiter.rate_factor(0.0) == 1.0
    limiter.follow_headers(
        RateLimitHint(limit_requests=300, remaining_requests=0, reset_requests_s=2)
    )
    assert limiter.rate_factor(0.5) == pytest.approx(LOW_REMAINING_FACTOR)
    assert limiter.rate_factor(1.5) == 1.0, "the slowdown lasts a moment, not until the reset"
    assert not limiter.is_cooling(), "only a 429 pauses the model"


def test_cancelled_waiter_does_not_block_others() -> None:
    async def main() -> int:
        limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10)
        await limiter.acquire(0)
        limiter.release()
        with anyio.move_on_after(0.01):
            await limiter.acquire(0)  # waits ~0.1 s for its slot: cancelled first
        stamps = await _send_many(limiter, 2)
        return len(stamps)

    assert anyio.run(main) == 2


def test_repr_shows_live_state() -> None:
    limiter = ModelLimiter("gpt-x", rpm=60, tpm=None, max_concurrency=4)
    text = repr(limiter)
    assert "gpt-x" in text and "in flight: 0" in text and "pauses: 0" in text
