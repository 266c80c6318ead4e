"""Tests for batchroute.dispatch.limits: the schedule in virtual time, AIMD, pauses, headers.

No test here reads the wall clock: the limiter's clock is injected and its schedule
(`ready_at`/`take`) is checked directly. Achieved rates against a real server are measured in
`benchmarks/bench_saturation.py`.
"""

from __future__ import annotations

import math
import random

import anyio
import anyio.lowlevel
import pytest

from batchroute.dispatch.client import RateLimitHint
from batchroute.dispatch.limits import (
    BACKOFF,
    CLUSTER,
    CLUSTER_BACKOFF,
    HEADROOM,
    RECOVERY_STEP,
    TOKEN_TOLERANCE_S,
    ModelLimiter,
)
from batchroute.sim.limits import ModelLimiter as SimModelLimiter


class _Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _greedy_schedule(
    limiter: ModelLimiter, clock: _Clock, *, seconds: float, tokens: int = 0
) -> list[float]:
    """The send times of a sender that always has a row waiting, over `seconds` of virtual time."""
    stamps: list[float] = []
    start = clock.now
    while True:
        ready = max(clock.now, limiter.ready_at(clock.now, tokens))
        if ready - start >= seconds:
            return stamps
        clock.now = ready
        assert limiter.take(ready, tokens), "ready_at promised a send it then refused"
        limiter.release()
        stamps.append(ready)


def _max_in_window(times: list[float], window_s: float) -> int:
    """The most stamps in any half-open window (t - window_s, t], as the simulator counts."""
    best = 0
    start = 0
    for end, stamp in enumerate(times):
        while stamp - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("rpm", [60, 120, 300, 600, 3000])
def test_pacing_schedule_uses_95_percent_and_respects_quantised_windows(rpm: int) -> None:
    """A minute of the schedule sends >= 95% of rpm, never over rpm/60 in any second.

    The arrivals are jittered by up to 30 ms each, as a network would, and still fit.
    """
    clock = _Clock(1000.0)
    limiter = ModelLimiter("m", rpm=rpm, tpm=None, max_concurrency=10_000, clock=clock)
    stamps = _greedy_schedule(limiter, clock, seconds=60.0)
    assert len(stamps) >= 0.95 * rpm
    assert len(stamps) <= rpm
    rng = random.Random(rpm)
    arrivals = sorted(s + rng.uniform(0.0, 0.03) for s in stamps)
    assert _max_in_window(arrivals, 1.0) <= rpm // 60
    # The simulator's own quantised windows, in the same virtual time, refuse none of them.
    server = SimModelLimiter(rpm=rpm, tpm=None, window_s=60.0, per_second=True)
    assert [t for t in arrivals if server.admit(0, t) is not None] == []


def test_tpm_schedule_uses_95_percent_and_respects_quantised_windows() -> None:
    clock = _Clock()
    tpm = 60_000
    limiter = ModelLimiter("m", rpm=None, tpm=tpm, max_concurrency=10_000, clock=clock)
    stamps = _greedy_schedule(limiter, clock, seconds=60.0, tokens=100)
    assert len(stamps) * 100 >= 0.95 * tpm
    assert _max_in_window(stamps, 1.0) * 100 <= tpm // 60


def test_bucket_starts_part_full() -> None:
    """A fresh limiter admits one or two requests at once, never a minute's quota."""
    clock = _Clock()
    limiter = ModelLimiter("m", rpm=6000, tpm=None, max_concurrency=500, clock=clock)
    taken = 0
    while limiter.take(0.0, 0):
        taken += 1
    assert 1 <= taken <= 2


def test_concurrency_is_capped() -> None:
    clock = _Clock()
    limiter = ModelLimiter("m", rpm=None, tpm=None, max_concurrency=3, clock=clock)
    assert [limiter.take(0.0, 0) for _ in range(5)] == [True, True, True, False, False]
    limiter.release()
    assert limiter.take(0.0, 0)


def test_a_stray_429_slows_the_model_without_pausing_it() -> None:
    clock = _Clock(50.0)
    limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10, clock=clock)
    assert limiter.take(50.0, 0)
    limiter.release()
    paused = limiter.rate_limited(5.0)
    assert not paused
    assert not limiter.is_cooling()
    assert limiter.pauses == 0
    assert limiter.factor == pytest.approx(BACKOFF)
    # The next send is paced at the lowered rate, not held for the 429's five seconds.
    assert limiter.ready_at(50.0, 0) < 50.0 + 1.0


def test_a_cluster_of_429s_pauses_the_model_for_the_retry_after() -> None:
    clock = _Clock(50.0)
    limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10, clock=clock)
    results = [limiter.rate_limited(2.0) for _ in range(CLUSTER)]
    assert results == [False] * (CLUSTER - 1) + [True]
    assert limiter.is_cooling()
    assert limiter.pauses == 1
    assert limiter.ready_at(50.0, 0) >= 52.0
    assert limiter.factor == pytest.approx(BACKOFF ** (CLUSTER - 1) * CLUSTER_BACKOFF)


def test_an_answer_between_429s_breaks_the_cluster() -> None:
    clock = _Clock()
    limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10, clock=clock)
    for _ in range(4 * CLUSTER):
        limiter.rate_limited(1.0)
        limiter.answered()
    assert limiter.pauses == 0
    assert not limiter.is_cooling()


def test_the_rate_recovers_additively() -> None:
    clock = _Clock()
    limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10, clock=clock)
    limiter.rate_limited(None)
    lowered = limiter.factor
    limiter.answered()
    assert limiter.factor == pytest.approx(lowered + RECOVERY_STEP)
    for _ in range(100):
        limiter.answered()
    assert limiter.factor == 1.0


def test_a_lowered_factor_slows_the_schedule() -> None:
    clock = _Clock()
    limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10_000, clock=clock)
    for _ in range(CLUSTER - 1):
        limiter.rate_limited(None)
    stamps = _greedy_schedule(limiter, clock, seconds=10.0)
    assert len(stamps) <= 600 / 6 * HEADROOM * BACKOFF ** (CLUSTER - 1) + 3


def test_unpaced_model_finds_its_window_the_same_way() -> None:
    """Without a known rate, 429s shrink the concurrency window and answers grow it back."""
    clock = _Clock()
    limiter = ModelLimiter("m", rpm=None, tpm=None, max_concurrency=40, clock=clock)
    for _ in range(CLUSTER):
        limiter.rate_limited(0.0)
    shrunk = limiter.window()
    assert shrunk == math.ceil(40 * BACKOFF ** (CLUSTER - 1) * CLUSTER_BACKOFF)
    assert [limiter.take(1.0, 0) for _ in range(shrunk + 1)][-1] is False
    for _ in range(100):
        limiter.answered()
    assert limiter.window() == 40


def test_tokens_are_reserved_and_corrected() -> None:
    """A refund after the usage is known lets the next request go sooner."""
    clock = _Clock()
    limiter = ModelLimiter("m", rpm=None, tpm=6000, max_concurrency=10, clock=clock)
    rate = 6000 * HEADROOM / 60
    assert limiter.take(0.0, 200)
    assert limiter.ready_at(0.0, 100) == pytest.approx(200 / rate - TOKEN_TOLERANCE_S)
    limiter.settle(200, 50)
    assert limiter.ready_at(0.0, 100) == pytest.approx(50 / rate - TOKEN_TOLERANCE_S)
    limiter.settle(50, 300)
    assert limiter.ready_at(0.0, 100) == pytest.approx(300 / rate - TOKEN_TOLERANCE_S)


def test_headers_lower_the_limit_never_raise_it_and_pause_when_nothing_remains() -> None:
    clock = _Clock()
    limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10, clock=clock)
    limiter.follow_headers(RateLimitHint(limit_requests=100_000, remaining_requests=90_000))
    assert limiter._limits()[0] == pytest.approx(600 / 60)
    limiter.follow_headers(RateLimitHint(limit_requests=300, remaining_requests=150))
    assert limiter._limits()[0] == pytest.approx(300 / 60)
    assert not limiter.is_cooling()
    paused = limiter.follow_headers(
        RateLimitHint(limit_requests=300, remaining_requests=0, reset_requests_s=2)
    )
    assert paused and limiter.is_cooling()
    assert limiter.ready_at(0.0, 0) >= 2.0


def test_close_wakes_every_waiter_with_false() -> None:
    async def main() -> list[bool]:
        limiter = ModelLimiter("m", rpm=60, tpm=None, max_concurrency=10)
        results: list[bool] = []

        async def one() -> None:
            results.append(await limiter.acquire(0))

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(one)
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            limiter.close()
        results.append(await limiter.acquire(0))
        return results

    results = anyio.run(main)
    assert results.count(True) <= 2  # the bucket's first one or two, sent before the close
    assert results.count(False) >= 4
    assert results[-1] is False


def test_cancelled_waiter_does_not_block_others() -> None:
    async def main() -> int:
        limiter = ModelLimiter("m", rpm=600, tpm=None, max_concurrency=10)
        got = 0
        for _ in range(2):
            got += await limiter.acquire(0)
            limiter.release()
        with anyio.move_on_after(0.01):
            await limiter.acquire(0)  # waits ~0.1 s for its slot: cancelled first
        for _ in range(2):
            got += await limiter.acquire(0)
            limiter.release()
        return got

    assert anyio.run(main) == 4


def test_repr_shows_live_state() -> None:
    limiter = ModelLimiter("gpt-x", rpm=60, tpm=None, max_concurrency=4)
    text = repr(limiter)
    assert "gpt-x" in text and "in flight: 0" in text and "pauses: 0" in text
    assert "factor: 1.00" in text


def test_a_late_send_moves_its_place_in_the_per_second_log() -> None:
    """A request allowed at t but leaving at t + 0.3 pushes the next one to t + 0.3 + span."""
    clock = _Clock(10.0)
    limiter = ModelLimiter("m", rpm=60, tpm=None, max_concurrency=10, clock=clock)
    assert limiter.take(10.0, 0)
    on_time = limiter.ready_at(10.0, 0)
    clock.now = 10.3
    limiter.sending()
    assert limiter.ready_at(10.3, 0) == pytest.approx(on_time + 0.3)
