"""Per-model request and token limits, enforced over sliding windows as a provider would.

A model with `rpm`/`tpm` gets a window of `limit_window_s` that admits at most
`rpm * limit_window_s / 60` requests and the matching share of tokens. With `per_second`, a second
window of one second also admits at most `rpm / 60` requests and `tpm / 60` tokens, which is how
OpenAI may quantise a limit ("3,000 RPM can also mean at most 50 requests in any one second").

Tokens are counted as prompt tokens plus `max_tokens`, as OpenAI counts them. A denied request
consumes nothing. Time comes from the caller, so the windows are testable without sleeping.
"""

from __future__ import annotations

import math
from collections import deque

from batchroute.sim.wire import format_duration

__all__ = ["Denial", "ModelLimiter"]


class Denial:
    """Why a request was refused, and how long until it would be admitted."""

    __slots__ = ("kind", "limit", "requested", "used", "wait_s")

    def __init__(self, *, kind: str, limit: int, used: int, requested: int, wait_s: float):
        self.kind = kind
        """"requests" or "tokens", as the 429 body's `type` says."""
        self.limit = limit
        self.used = used
        self.requested = requested
        self.wait_s = wait_s

    def __repr__(self) -> str:
        return f"<Denial {self.kind} [used {self.used}/{self.limit}, wait {self.wait_s:.3f}s]>"


class _Window:
    """A sliding log of (time, tokens) over `span_s` seconds."""

    __slots__ = ("_entries", "_token_sum", "max_requests", "max_tokens", "oversize_ok", "span_s")

    def __init__(
        self,
        span_s: float,
        *,
        max_requests: int | None,
        max_tokens: int | None,
        oversize_ok: bool,
    ) -> None:
        self.span_s = span_s
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.oversize_ok = oversize_ok
        """Admit one request larger than the whole token cap when the window is empty."""
        self._entries: deque[tuple[float, int]] = deque()
        self._token_sum = 0

    def _expire(self, now: float) -> None:
        entries = self._entries
        horizon = now - self.span_s
        while entries and entries[0][0] <= horizon:
            self._token_sum -= entries.popleft()[1]

    def requests(self, now: float) -> int:
        self._expire(now)
        return len(self._entries)

    def tokens(self, now: float) -> int:
        self._expire(now)
        return self._token_sum

    def check(self, tokens: int, now: float) -> Denial | None:
        self._expire(now)
        entries = self._entries
        if self.max_requests is not None and len(entries) >= self.max_requests:
            oldest_needed = entries[len(entries) - self.max_requests][0]
            return Denial(
                kind="requests",
                limit=self.max_requests,
                used=len(entries),
                requested=1,
                wait_s=oldest_needed + self.span_s - now,
            )
        cap = self.max_tokens
        if cap is None or self._token_sum + tokens <= cap:
            return None
        if tokens > cap:
            if self.oversize_ok and not entries:
                return None
            wait_s = (entries[-1][0] + self.span_s - now) if entries else self.span_s
        else:
            excess = self._token_sum + tokens - cap
            freed = 0
            wait_s = self.span_s
            for stamp, spent in entries:
                freed += spent
                if freed >= excess:
                    wait_s = stamp + self.span_s - now
                    break
        return Denial(
            kind="tokens", limit=cap, used=self._token_sum, requested=tokens, wait_s=wait_s
        )

    def add(self, tokens: int, now: float) -> None:
        self._entries.append((now, tokens))
        self._token_sum += tokens

    def reset_s(self, now: float) -> float:
        """Seconds until the window is empty again (its "reset to the initial state")."""
        self._expire(now)
        return self._entries[-1][0] + self.span_s - now if self._entries else 0.0


class ModelLimiter:
    """The rpm/tpm windows of one model, and the `x-ratelimit-*` headers they imply."""

    __slots__ = ("_main", "_second", "rpm", "tpm")

    def __init__(
        self, *, rpm: int | None, tpm: int | None, window_s: float, per_second: bool
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        scale = window_s / 60.0
        self._main = _Window(
            window_s,
            max_requests=None if rpm is None else max(1, math.floor(rpm * scale)),
            max_tokens=None if tpm is None else max(1, math.floor(tpm * scale)),
            oversize_ok=False,
        )
        self._second = (
            _Window(
                1.0,
                max_requests=None if rpm is None else max(1, rpm // 60),
                max_tokens=None if tpm is None else max(1, tpm // 60),
                oversize_ok=True,
            )
            if per_second
            else None
        )

    def admit(self, tokens: int, now: float) -> Denial | None:
        """Admit one request of `tokens` (consuming quota), or say why not (consuming none)."""
        denial = self._main.check(tokens, now)
        if self._second is not None:
            second = self._second.check(tokens, now)
            if second is not None and (denial is None or second.wait_s > denial.wait_s):
                denial = second
        if denial is not None:
            return denial
        self._main.add(tokens, now)
        if self._second is not None:
            self._second.add(tokens, now)
        return None

    def headers(self, now: float) -> dict[str, str]:
        """The `x-ratelimit-*` headers for a response sent at `now`."""
        main = self._main
        reset = format_duration(main.reset_s(now))
        headers: dict[str, str] = {}
        if self.rpm is not None and main.max_requests is not None:
            headers["x-ratelimit-limit-requests"] = str(self.rpm)
            headers["x-ratelimit-remaining-requests"] = str(
                max(0, main.max_requests - main.requests(now))
            )
            headers["x-ratelimit-reset-requests"] = reset
        if self.tpm is not None and main.max_tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(
                max(0, main.max_tokens - main.tokens(now))
            )
            headers["x-ratelimit-reset-tokens"] = reset
        return headers

    def __repr__(self) -> str:
        return (
            f"<ModelLimiter rpm={self.rpm} tpm={self.tpm} [in window: {len(self._main._entries)}]>"
        )
