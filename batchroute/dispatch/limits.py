"""Per-model limits: requests and tokens per minute, concurrency, and how 429s move the rate.

Limits belong to a model, not a tier, because a fallback spends the quota of the model it falls
back to. One `ModelLimiter` per model paces every row that calls it.

Pacing. A GCRA bucket per resource (one "theoretical arrival time", as aiolimiter keeps one
level) spaces sends at `HEADROOM` of the limit, with a tolerance of two requests so wake-up
lateness costs no throughput. Providers may also enforce a limit per second ("3,000 RPM" meaning
at most 50 in any one second), so at most `k = floor(rpm / 60)` sends go out in any span of
`k / rate` seconds: 1.04 s at the paced rate, which leaves 40 ms of network jitter before a
1-second window could see `k + 1`. The cap never lowers the rate below the bucket's (the old cap
floored 1.92 requests a second to 1, and ran rpm 120 at half its limit).

Adaptation (AIMD, as TCP and Netflix's concurrency-limits do). The rate is the limit times a
factor in [`FACTOR_FLOOR`, 1]. A 429 multiplies the factor by `BACKOFF`; every answer adds
`RECOVERY_STEP` back. A single 429 thus slows the model a little and delays only its own row
(the walk honours its retry-after); the whole model pauses only when `CLUSTER` 429s come back in
a row with no answer between them, or when the `x-ratelimit-remaining-*` headers say nothing is
left. A model with no configured or announced rpm has no rate to scale: its factor scales its
concurrency window instead, so it finds its rate the same way.

Time is read from an injectable clock, and `ready_at`/`take` are the whole schedule, so tests
check the schedule in virtual time; `acquire` only waits for it (a FIFO of futures woken by
`loop.call_at`, O(1) per request).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from batchroute.dispatch.client import RateLimitHint

__all__ = [
    "BACKOFF",
    "CLUSTER",
    "CLUSTER_BACKOFF",
    "COOLDOWN_DEFAULT_S",
    "FACTOR_FLOOR",
    "HEADROOM",
    "RECOVERY_STEP",
    "ModelLimiter",
]

HEADROOM: Final = 0.96
"""The share of a configured limit batchroute aims at, leaving room for clock and network jitter."""
REQUEST_TOLERANCE: Final = 2.0
"""How far (in request intervals) a request may go ahead of its slot, to absorb wake-up lateness."""
TOKEN_TOLERANCE_S: Final = 0.02
"""The same for tokens, in seconds of the token rate (kept under 1 - HEADROOM of a second)."""
COOLDOWN_DEFAULT_S: Final = 1.0
"""The pause after a cluster of 429s that carries no retry-after."""
BACKOFF: Final = 0.9
"""The factor's multiplicative decrease on one 429 (concurrency-limits' AIMD default)."""
CLUSTER: Final = 3
"""This many 429s in a row, with no answer between them, pause the whole model."""
CLUSTER_BACKOFF: Final = 0.5
"""The factor's decrease when the model pauses: a real limit was hit, so halve, as TCP does."""
RECOVERY_STEP: Final = 0.02
"""The factor's additive increase on each answer that is not a 429."""
FACTOR_FLOOR: Final = 0.1
_RECENT_SENDS: Final = 1024
"""Send times kept for the per-second cap (so it applies up to 61,440 RPM)."""


class ModelLimiter:
    """Paces one model's requests: RPM, TPM, max concurrency, and the AIMD factor.

    `acquire(tokens)` before one HTTP attempt (False: the limiter was closed, send nothing) and
    `release()` after it; `settle(...)` the tokens once the usage is known; report each reply
    with `answered()` or `rate_limited(...)`.
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
        self._waiters: deque[tuple[asyncio.Future[bool], int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._request_tat = -math.inf  # GCRA theoretical arrival times, on the clock
        self._token_tat = -math.inf
        self._header_rpm: int | None = None
        self._header_tpm: int | None = None
        self._recent: deque[float] = deque(maxlen=_RECENT_SENDS)
        self._unstamped = 0
        """Entries of `_recent` taken but not yet marked `sending`, at its end."""
        self._streak = 0
        self.factor = 1.0
        """The share of the limit (or, unpaced, of max_concurrency) allowed now."""
        self.cooldown_until = 0.0
        self.pauses = 0
        """How many times the whole model paused."""
        self.rate_limited_count = 0
        self.in_flight = 0
        self.sent = 0
        self.closed = False

    def __repr__(self) -> str:
        cooling = max(0.0, self.cooldown_until - self._clock())
        return (
            f"<ModelLimiter {self.model!r} (rpm={self.rpm}, tpm={self.tpm}, "
            f"max_concurrency={self.max_concurrency}) [factor: {self.factor:.2f}, "
            f"in flight: {self.in_flight}, waiters: {len(self._waiters)}, "
            f"cooling: {cooling:.2f}s, pauses: {self.pauses}, 429s: {self.rate_limited_count}, "
            f"sent: {self.sent}]>"
        )

    def is_cooling(self, now: float | None = None) -> bool:
        """Whether the whole model is paused right now."""
        return (self._clock() if now is None else now) < self.cooldown_until

    @property
    def is_paced(self) -> bool:
        """Whether the model has a request rate to pace (configured or announced)."""
        return self.rpm is not None or self._header_rpm is not None

    def _limits(self) -> tuple[float | None, float | None]:
        """Requests and tokens per second of the limit itself (None: no limit)."""
        rpm = _lowest(self.rpm, self._header_rpm)
        tpm = _lowest(self.tpm, self._header_tpm)
        return (None if rpm is None else rpm / 60.0, None if tpm is None else tpm / 60.0)

    def window(self) -> int:
        """How many requests may be in flight now (the factor scales it for an unpaced model)."""
        if self.is_paced:
            return self.max_concurrency
        return max(1, math.ceil(self.max_concurrency * self.factor))

    # -- the schedule ----------------------------------------------------------------------

    def ready_at(self, now: float, tokens: int) -> float:
        """The earliest time a send of `tokens` is allowed by the pace (concurrency aside)."""
        ready = self.cooldown_until
        request_limit, token_limit = self._limits()
        if request_limit is not None:
            rate = request_limit * HEADROOM * self.factor
            ready = max(ready, self._request_tat - REQUEST_TOLERANCE / rate)
            per_second = max(1, math.floor(request_limit))
            recent = self._recent
            if len(recent) >= per_second:
                ready = max(ready, recent[-per_second] + per_second / rate)
        if token_limit is not None and tokens > 0:
            ready = max(ready, self._token_tat - TOKEN_TOLERANCE_S)
        return ready

    def take(self, now: float, tokens: int) -> bool:
        """Claim a send of `tokens` at `now` if the pace and the window allow it."""
        if self.ready_at(now, tokens) > now or self.in_flight >= self.window():
            return False
        request_limit, token_limit = self._limits()
        if request_limit is not None:
            interval = 1.0 / (request_limit * HEADROOM * self.factor)
            # An idle bucket refills to two requests, not to 1 + REQUEST_TOLERANCE: it starts
            # (and restarts) part-full.
            tat = self._request_tat if self._request_tat >= now else now + interval
            self._request_tat = tat + interval
        if token_limit is not None:
            rate = token_limit * HEADROOM * self.factor
            self._token_tat = max(self._token_tat, now) + tokens / rate
        self._recent.append(now)
        self._unstamped += 1
        self.in_flight += 1
        self.sent += 1
        return True

    def sending(self) -> None:
        """The request taken longest ago is leaving now: its place in the per-second log moves
        from when it was allowed to when it really goes, so a task that resumed late does not
        bunch with the next one on the wire."""
        if self._unstamped <= 0:
            return
        recent = self._recent
        index = len(recent) - self._unstamped
        self._unstamped -= 1
        if index >= 0:
            recent[index] = max(recent[index], self._clock())

    # -- waiting ---------------------------------------------------------------------------

    async def acquire(self, tokens: int) -> bool:
        """Wait for the pace and a slot; False if the limiter was closed (send nothing then).

        After True, call `release` once the attempt is over.
        """
        if self.closed:
            return False
        if not self._waiters and self.take(self._clock(), tokens):
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, tokens))
        self._schedule()
        try:
            return await future
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
            elif not future.cancelled() and future.result():
                # Woken and cancelled in the same tick: the slot was taken but goes unused.
                self.sending()
                self.in_flight -= 1
                self.settle(tokens, 0)
            raise

    def release(self) -> None:
        """Give back the slot taken by `acquire`."""
        self.in_flight -= 1
        if self._waiters and self._timer is None:
            self._schedule()

    def close(self) -> None:
        """Send nothing more: every waiting and future `acquire` returns False at once."""
        self.closed = True
        self._cancel_timer()
        while self._waiters:
            future, _ = self._waiters.popleft()
            if not future.done():
                future.set_result(False)

    def _schedule(self) -> None:
        if self._timer is not None or self.closed:
            return
        while self._waiters and self._waiters[0][0].done():
            self._waiters.popleft()  # cancelled while waiting
        if not self._waiters:
            return
        now = self._clock()
        ready = self.ready_at(now, self._waiters[0][1])
        if ready <= now and self.in_flight >= self.window():
            return  # waiting for a slot: the next `release` reschedules
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + max(0.0, ready - now), self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self._clock()
        while self._waiters:
            future, tokens = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self.take(now, tokens):
                break
            self._waiters.popleft()
            future.set_result(True)
        self._schedule()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _reschedule(self) -> None:
        self._cancel_timer()
        if self._waiters:
            self._schedule()

    # -- feedback --------------------------------------------------------------------------

    def settle(self, reserved_tokens: int, actual_tokens: int) -> None:
        """Correct a token reservation with the usage the response reported."""
        _, token_limit = self._limits()
        if token_limit is None or reserved_tokens == actual_tokens:
            return
        self._token_tat += (actual_tokens - reserved_tokens) / (token_limit * HEADROOM)
        if actual_tokens < reserved_tokens and self._timer is not None:
            self._reschedule()

    def answered(self) -> None:
        """An answer that was not a 429: the factor recovers additively."""
        self._streak = 0
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor + RECOVERY_STEP)

    def rate_limited(self, retry_after_s: float | None) -> bool:
        """A 429: slow the model down; pause it if 429s cluster. True when it paused."""
        self.rate_limited_count += 1
        self._streak += 1
        if self._streak >= CLUSTER:
            self._streak = 0
            self._set_factor(self.factor * CLUSTER_BACKOFF)
            return self.cool_down(retry_after_s)
        self._set_factor(self.factor * BACKOFF)
        return False

    def _set_factor(self, factor: float) -> None:
        old = self.factor
        self.factor = max(FACTOR_FLOOR, factor)
        if self.factor < old and self._request_tat > self._clock():
            # Re-space what is already scheduled at the new, slower rate.
            now = self._clock()
            self._request_tat = now + (self._request_tat - now) * old / self.factor

    def cool_down(self, pause_s: float | None) -> bool:
        """Pause the whole model; True when this started a pause, not extended one."""
        now = self._clock()
        until = now + (COOLDOWN_DEFAULT_S if pause_s is None else pause_s)
        started = now >= self.cooldown_until
        if started:
            self.pauses += 1
        if until > self.cooldown_until:
            self.cooldown_until = until
            # Nothing is owed from before the pause: restart both buckets at its end.
            self._request_tat = until
            self._token_tat = until
            self._reschedule()
        return started

    def follow_headers(self, hint: RateLimitHint) -> bool:
        """Take the endpoint's announced limits; pause when it says nothing remains.

        An announced limit lowers the pace but never raises it above the configured one.
        True when the headers paused the model.
        """
        self._header_rpm = hint.limit_requests or None
        self._header_tpm = hint.limit_tokens or None
        paused = False
        for limit, remaining, reset in (
            (hint.limit_requests, hint.remaining_requests, hint.reset_requests_s),
            (hint.limit_tokens, hint.remaining_tokens, hint.reset_tokens_s),
        ):
            if limit and remaining is not None and remaining <= 0:
                paused = self.cool_down(reset) or paused
        return paused


def _lowest(configured: int | None, announced: int | None) -> int | None:
    if configured is None:
        return announced
    if announced is None:
        return configured
    return min(configured, announced)
