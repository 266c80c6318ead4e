"""Per-model limits: requests and tokens per minute, concurrency, and a shared 429 cooldown.

Limits belong to a model, not a tier, because a fallback spends the quota of the model it falls
back to. One `ModelLimiter` per model paces every row that calls it.

Why not aiolimiter's `AsyncLimiter` alone: it starts full (`AsyncLimiter(50, 1)` admits 100 in
its first second against a provider that enforces 50 in any one second), it cannot refund tokens
once the usage is known, and its rate is fixed, while a 429 cooldown, the ramp after it and the
`x-ratelimit-*` headers all need a rate that moves. So this module keeps aiolimiter's shape (a
FIFO of waiters woken by `loop.call_at`, O(1) per acquire) with a GCRA bucket underneath: one
"theoretical arrival time" per resource, a tolerance of two requests (so wake-up lateness and
short stalls cost no throughput), and a rate a little under the configured limit. On top, the
log of recent sends caps any one second at that second's share of the rate: safe under quantised
enforcement ("3,000 RPM" meaning at most 50 in any one second) even after the event loop stalls.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import anyio

from batchroute.dispatch.client import RateLimitHint

__all__ = [
    "COOLDOWN_DEFAULT_S",
    "HEADROOM",
    "RAMP_FLOOR",
    "RAMP_S",
    "ModelLimiter",
]

HEADROOM: Final = 0.96
"""The share of a configured limit batchroute aims at, leaving room for clock and network jitter."""
REQUEST_TOLERANCE: Final = 2.0
"""How far (in request intervals) a request may go ahead of its slot, to absorb wake-up lateness."""
TOKEN_TOLERANCE_S: Final = 0.05
"""The same for tokens, in seconds of the token rate."""
PER_SECOND_SHARE: Final = 0.96
"""The most of one second's share of the limit sent in any one second (quantised enforcement)."""
START_SHARE: Final = 0.8
START_S: Final = 1.0
"""For this long after its first send, a model sends at most START_SHARE of a second's share in
any second: a cold start delays the first requests (new connections, a busy loop releasing every
waiting row at once, TLS handshakes), and the provider sees them bunched into its first window."""
COOLDOWN_DEFAULT_S: Final = 1.0
"""The pause after a 429 that carries no retry-after."""
RAMP_S: Final = 3.0
"""After a cooldown, the rate climbs from `RAMP_FLOOR` of the limit back to all of it over this."""
RAMP_FLOOR: Final = 0.25
PACED_RAMP_FLOOR: Final = 0.5
"""The ramp's start for a model with a known rate: the bucket already spaces the requests out,
so the ramp need not start as low as for a model whose rate batchroute only observed."""
LOW_REMAINING: Final = 0.01
"""At or below this share of the header's limit remaining, slow to `LOW_REMAINING_FACTOR`."""
LOW_REMAINING_FACTOR: Final = 0.9
MAX_SLOW_S: Final = 1.0
_RECENT_SENDS: Final = 1024
"""Send times kept for the one-second cap (so it applies up to 61,440 RPM)."""


class ModelLimiter:
    """Paces one model's requests: RPM, TPM, max concurrency, 429 cooldown and ramp-up.

    `acquire(tokens)` before one HTTP attempt and `release()` after it; `settle(...)` the tokens
    once the usage is known. `cool_down` after a 429 pauses every caller of the model at once.
    """

    def __init__(
        self,
        model: str,
        *,
        rpm: int | None,
        tpm: int | None,
        max_concurrency: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.rpm = rpm
        self.tpm = tpm
        self.max_concurrency = max_concurrency
        self._clock = clock
        self._concurrency = anyio.Semaphore(max_concurrency, fast_acquire=True)
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._request_tat = 0.0  # GCRA theoretical arrival times, on the monotonic clock
        self._token_tat = 0.0
        self._header_rpm: int | None = None
        self._header_tpm: int | None = None
        self._slow_until = 0.0
        self.cooldown_until = 0.0
        self.ramp_until = 0.0
        self.pauses = 0
        """How many distinct cooldowns the model went through."""
        self.in_flight = 0
        self.sent = 0
        self._recent: deque[float] = deque(maxlen=_RECENT_SENDS)
        self._ramp_start = RAMP_FLOOR
        self._first_send_at = 0.0

    def __repr__(self) -> str:
        now = self._clock()
        cooling = max(0.0, self.cooldown_until - now)
        return (
            f"<ModelLimiter {self.model!r} (rpm={self.rpm}, tpm={self.tpm}, "
            f"max_concurrency={self.max_concurrency}) [rate: {self.rate_factor(now):.2f}, "
            f"in flight: {self.in_flight}, waiters: {len(self._waiters)}, "
            f"cooling: {cooling:.2f}s, pauses: {self.pauses}, sent: {self.sent}]>"
        )

    def is_cooling(self, now: float | None = None) -> bool:
        """Whether the model is in a 429 cooldown right now."""
        return (self._clock() if now is None else now) < self.cooldown_until

    def rate_factor(self, now: float) -> float:
        """The share of the limit allowed now: below 1 while ramping back after a cooldown."""
        factor = 1.0
        if now < self.ramp_until:
            progress = 1.0 - (self.ramp_until - now) / RAMP_S
            start = self._ramp_start
            factor = start + (1.0 - start) * max(0.0, progress)
        if now < self._slow_until:
            factor = min(factor, LOW_REMAINING_FACTOR)
        return factor

    def _limits(self) -> tuple[float | None, float | None]:
        """Requests and tokens per second allowed at full speed (None: no limit)."""
        rpm = _lowest(self.rpm, self._header_rpm)
        tpm = _lowest(self.tpm, self._header_tpm)
        return (
            None if rpm is None else rpm * HEADROOM / 60.0,
            None if tpm is None else tpm * HEADROOM / 60.0,
        )

    def _window(self, now: float) -> int:
        """How many requests may be in flight now.

        A model with no known rate ramps back after a cooldown through this window instead:
        from a quarter of `max_concurrency` to all of it, whatever its latency.
        """
        if now >= self.ramp_until or self.rpm is not None or self._header_rpm is not None:
            return self.max_concurrency
        return max(1, math.ceil(self.max_concurrency * self.rate_factor(now)))

    async def acquire(self, tokens: int) -> None:
        """Wait for a concurrency slot, then for the pace (call `release` after the attempt)."""
        await self._concurrency.acquire()
        try:
            await self._pace(tokens)
        except BaseException:
            self._concurrency.release()
            raise

    def release(self) -> None:
        """Give back the concurrency slot taken by `acquire`."""
        self.in_flight -= 1
        self._concurrency.release()
        if self._waiters and self._timer is None:
            self._schedule()  # a waiter held back by the ramp's window may go now

    async def _pace(self, tokens: int) -> None:
        if not self._waiters and self._try_take(self._clock(), tokens):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, tokens))
        self._schedule()
        try:
            await future
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                # Woken and cancelled in the same tick: the slot was taken but goes unused; give
                # the tokens back so the pace is not lost.
                self.in_flight -= 1
                self.settle(tokens, 0)
            raise

    def _ready_at(self, now: float, tokens: int) -> float:
        """The earliest time a send of `tokens` is allowed, given the current rates."""
        ready = self.cooldown_until
        request_rate, token_rate = self._limits()
        factor = self.rate_factor(now)
        if request_rate is not None:
            allowed = request_rate * factor
            ready = max(ready, self._request_tat - REQUEST_TOLERANCE / allowed)
            # At most 96% of one second's share of the limit in any one second, whatever the
            # lateness: safe under quantised enforcement, and loose enough never to bind while
            # the bucket keeps its schedule.
            share = PER_SECOND_SHARE if now - self._first_send_at >= START_S else START_SHARE
            per_second = max(1, int(allowed / HEADROOM * share))
            recent = self._recent
            if len(recent) >= per_second:
                ready = max(ready, recent[-per_second] + 1.0)
        if token_rate is not None and tokens > 0:
            ready = max(ready, self._token_tat - TOKEN_TOLERANCE_S)
        return ready

    def _try_take(self, now: float, tokens: int) -> bool:
        if self._ready_at(now, tokens) > now or self.in_flight >= self._window(now):
            return False
        request_rate, token_rate = self._limits()
        factor = self.rate_factor(now)
        if request_rate is not None:
            interval = 1.0 / (request_rate * factor)
            # An idle bucket refills to two requests, not to 1 + REQUEST_TOLERANCE: it starts
            # (and restarts) part-full.
            tat = self._request_tat if self._request_tat >= now else now + interval
            self._request_tat = tat + interval
        self._recent.append(now)
        if not self.sent:
            self._first_send_at = now
        self.in_flight += 1
        self.sent += 1
        if token_rate is not None:
            self._token_tat = max(self._token_tat, now) + tokens / (token_rate * factor)
        return True

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        while self._waiters and self._waiters[0][0].done():
            self._waiters.popleft()  # cancelled while waiting
        if not self._waiters:
            return
        loop = asyncio.get_running_loop()
        now = self._clock()
        ready = self._ready_at(now, self._waiters[0][1])
        if ready <= now and self.in_flight >= self._window(now):
            return  # held back by the ramp's window: the next `release` reschedules
        self._timer = loop.call_at(loop.time() + max(0.0, ready - now), self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self._clock()
        while self._waiters:
            future, tokens = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._try_take(now, tokens):
                break
            self._waiters.popleft()
            future.set_result(None)
        self._schedule()

    def settle(self, reserved_tokens: int, actual_tokens: int) -> None:
        """Correct a token reservation with the usage the response reported."""
        _, token_rate = self._limits()
        if token_rate is None or reserved_tokens == actual_tokens:
            return
        self._token_tat += (actual_tokens - reserved_tokens) / token_rate
        if actual_tokens < reserved_tokens and self._waiters and self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._schedule()

    def cool_down(self, retry_after_s: float | None) -> bool:
        """Pause the model after a 429; True when this started a new cooldown, not extended one."""
        now = self._clock()
        until = now + (COOLDOWN_DEFAULT_S if retry_after_s is None else retry_after_s)
        started = now >= self.cooldown_until
        if started:
            self.pauses += 1
            # A 429 during a ramp halves the rate reached so far, rather than dropping it to the
            # floor again: sporadic 429s then slow the model down without stalling it.
            paced = _lowest(self.rpm, self._header_rpm) is not None
            floor = PACED_RAMP_FLOOR if paced else RAMP_FLOOR
            ramping = now < self.ramp_until
            self._ramp_start = max(floor, 0.5 * self.rate_factor(now)) if ramping else floor
        if until > self.cooldown_until:
            self.cooldown_until = until
            self.ramp_until = until + RAMP_S
            # Nothing is owed from before the pause: restart both buckets at its end.
            self._request_tat = until
            self._token_tat = until
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._schedule()
        return started

    def follow_headers(self, hint: RateLimitHint) -> None:
        """Slow down when the endpoint says little quota remains; never rise above the config."""
        self._header_rpm = hint.limit_requests or None
        self._header_tpm = hint.limit_tokens or None
        now = self._clock()
        for limit, remaining, reset in (
            (hint.limit_requests, hint.remaining_requests, hint.reset_requests_s),
            (hint.limit_tokens, hint.remaining_tokens, hint.reset_tokens_s),
        ):
            # Pacing at HEADROOM leaves about 4% of a window's quota unused, so less than
            # LOW_REMAINING left means someone else spends this quota too: slow down for a
            # moment. A 429, not this, is what pauses the model.
            if limit and remaining is not None and remaining <= LOW_REMAINING * limit:
                self._slow_until = now + min(reset or 1.0, MAX_SLOW_S)


def _lowest(configured: int | None, announced: int | None) -> int | None:
    if configured is None:
        return announced
    if announced is None:
        return configured
    return min(configured, announced)
