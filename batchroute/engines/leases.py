"""One limit per model across a cluster: the lease actor, and the worker's side of its leases.

`ClusterLimits` is a plain class that the Ray engine runs as one actor for the whole run. It holds,
for every model with an `rpm` (or a `tpm`), the cluster's rate cut into per-second *units*
(`floor(rpm / 60)`, at least one; one per worker for a model with only a `tpm`), who holds how
many, until when, and the model's cooldown; and the run's budget cap. A worker does not ask it
per request: it *leases* a share of each model's rate (`units`, and the matching share of `rpm`
and `tpm`) for `lease_s` seconds, long enough for about `LEASE_REQUESTS` requests, and paces its
own requests against that share with the ordinary `ModelLimiter`. It renews the lease before it
runs out and gives the units back when its shard is done. Likewise it leases budget in chunks
and returns what it did not spend.

Why this holds the limit: the shares granted at any moment sum to at most the model's rpm (and
tpm), and each worker's limiter keeps its own share on every sliding second (at most
`floor(share / 60)` sends in any one second) and minute. The sum of the floors is at most
`floor(rpm / 60)`, so the provider's per-second window holds too. A worker that dies keeps its
units until its lease expires (`lease_s + LEASE_GRACE_S`); its retry then gets them.

Budget: the budget chunks leased at any moment sum to at most the cap, and each worker's local
`Budget` never reserves past what it leased, so spend ≤ cap holds across the cluster. A dead
worker's chunk is not given back (conservative: the cap still holds, the run may stop early).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

from batchroute.dispatch.limits import ModelLimiter
from batchroute.pricing.budget import Budget

__all__ = [
    "LEASE_REQUESTS",
    "ClusterLimits",
    "Lease",
    "LeasedBudget",
    "LeasedLimiter",
    "LeaseKeeper",
]

LEASE_REQUESTS: Final = 100
"""A lease lasts long enough for about this many requests at its share of the rate."""
MIN_LEASE_S: Final = 2.0
MAX_LEASE_S: Final = 30.0
LEASE_GRACE_S: Final = 1.0
"""How long past its term the actor still counts a lease as held (the call's own latency)."""
RENEW_AT: Final = 0.75
"""A worker renews its lease when this share of its term has passed."""
STARVED_RETRY_S: Final = 0.5
"""How soon a worker granted no units asks again."""
BUDGET_CHUNKS_PER_WORKER: Final = 4
"""A budget lease is about cap / (workers * this): a worker asks a few times in a run."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's share of one model's rate, until `lease_s` seconds from when it was granted."""

    units: int
    rpm: int | None
    tpm: int | None
    lease_s: float
    cooldown_s: float
    """How much longer the model is paused cluster-wide (0: not paused)."""


class _ModelShares:
    __slots__ = ("holders", "rpm", "tpm", "units", "cooldown_until")

    def __init__(self, rpm: int | None, tpm: int | None, *, workers: int) -> None:
        self.rpm = rpm
        self.tpm = tpm
        # A model with only a tpm is cut into one unit per worker.
        self.units = max(1, rpm // 60) if rpm is not None else max(1, workers)
        self.holders: dict[str, tuple[int, float]] = {}  # worker -> (units, held until)
        self.cooldown_until = 0.0


class ClusterLimits:
    """The lease actor's state (run it as one Ray actor; every method is one actor call)."""

    def __init__(
        self,
        models: Mapping[str, tuple[int | None, int | None]],
        *,
        workers: int,
        max_cost_usd: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._models = {
            name: _ModelShares(rpm, tpm, workers=workers)
            for name, (rpm, tpm) in models.items()
            if rpm is not None or tpm is not None
        }
        self._workers = workers
        self._finished: set[str] = set()
        self.max_cost_usd = max_cost_usd
        self._budget_leased = 0.0
        self._budget_spent = 0.0
        self._budget_exhausted = False
        self.calls = 0

    # -- rate ------------------------------------------------------------------------------

    def lease(self, worker: str, model: str) -> Lease:
        """Grant (or renew) `worker`'s share of `model`'s rate."""
        self.calls += 1
        shares = self._models[model]
        now = self._clock()
        for name, (_, until) in list(shares.holders.items()):
            if until < now:
                del shares.holders[name]  # a dead worker's lease ran out
        others = sum(units for name, (units, _) in shares.holders.items() if name != worker)
        free = shares.units - others
        expected = max(1, self._workers - len(self._finished))
        fair = max(1, shares.units // expected)
        units = max(0, min(free, fair))
        cooldown_s = max(0.0, shares.cooldown_until - now)
        if units == 0:
            shares.holders.pop(worker, None)
            return Lease(0, None, None, STARVED_RETRY_S, cooldown_s)
        rpm = None if shares.rpm is None else shares.rpm * units // shares.units
        tpm = None if shares.tpm is None else shares.tpm * units // shares.units
        per_lease = MAX_LEASE_S / 3 if rpm is None else LEASE_REQUESTS * 60 / rpm
        lease_s = min(MAX_LEASE_S, max(MIN_LEASE_S, per_lease))
        shares.holders[worker] = (units, now + lease_s + LEASE_GRACE_S)
        return Lease(units, rpm, tpm, lease_s, cooldown_s)

    def cool_down(self, model: str, pause_s: float) -> None:
        """A worker saw the model pause (a cluster of 429s): pause it for every worker."""
        self.calls += 1
        shares = self._models.get(model)
        if shares is not None:
            shares.cooldown_until = max(shares.cooldown_until, self._clock() + pause_s)

    def finish(self, worker: str) -> None:
        """A worker's shard is done: its units go back to the others."""
        self.calls += 1
        self._finished.add(worker.split("#", 1)[0])
        for shares in self._models.values():
            shares.holders.pop(worker, None)

    # -- budget ----------------------------------------------------------------------------

    def lease_budget(self, want_usd: float) -> float:
        """Up to `want_usd` more of the cap for a worker (0.0: the cap is reached)."""
        self.calls += 1
        if self.max_cost_usd is None:
            return want_usd
        if self._budget_exhausted:
            return 0.0
        chunk = max(want_usd, self.max_cost_usd / (self._workers * BUDGET_CHUNKS_PER_WORKER))
        granted = min(chunk, self.max_cost_usd - self._budget_leased)
        if granted < want_usd:
            self._budget_exhausted = True  # as a local Budget: once refused, always refused
            return 0.0
        self._budget_leased += granted
        return granted

    def return_budget(self, unused_usd: float, spent_usd: float) -> None:
        """A worker is done: give back what it leased and did not spend."""
        self.calls += 1
        self._budget_leased -= unused_usd
        self._budget_spent += spent_usd

    def stats(self) -> dict[str, Any]:
        """Calls so far and the budget's state (not counted as a call)."""
        return {
            "calls": self.calls,
            "budget_leased_usd": self._budget_leased,
            "budget_spent_usd": self._budget_spent,
            "budget_exhausted": self._budget_exhausted,
        }


class LeasedLimiter(ModelLimiter):
    """A `ModelLimiter` that paces at the share of the rate its worker leased.

    With no units leased it sends nothing until a lease grants some.
    """

    def __init__(self, base: ModelLimiter) -> None:
        super().__init__(
            base.model, rpm=base.rpm, tpm=base.tpm, max_concurrency=base.max_concurrency
        )
        self.units = 0

    def apply(self, lease: Lease) -> None:
        self.units = lease.units
        if lease.units:
            self.rpm, self.tpm = lease.rpm, lease.tpm
        if lease.cooldown_s > 0:
            self.cool_down(lease.cooldown_s)
        self._reschedule()

    def expire(self) -> None:
        self.units = 0

    def ready_at(self, now: float, tokens: int) -> float:
        if self.units == 0:
            return now + 3600.0  # until a lease grants units (`apply` reschedules)
        return super().ready_at(now, tokens)


class LeasedBudget(Budget):
    """A worker's `Budget`: its cap is what it leased from the actor, topped up on demand."""

    def __init__(self, lease: Callable[[float], float]) -> None:
        super().__init__(0.0)
        self._lease = lease

    def reserve(self, amount_usd: float) -> bool:
        if self.exhausted:
            return False
        assert self.max_cost_usd is not None
        if self.spent_usd + self.reserved_usd + amount_usd > self.max_cost_usd:
            granted = self._lease(amount_usd)  # a blocking actor call, once per chunk
            if granted <= 0.0:
                self.exhausted = True
                return False
            self.max_cost_usd += granted
        return super().reserve(amount_usd)

    @property
    def unused_usd(self) -> float:
        assert self.max_cost_usd is not None
        return max(0.0, self.max_cost_usd - self.spent_usd - self.reserved_usd)


class LeaseKeeper:
    """The worker's side: lease every paced model's share, renew in time, give back at the end.

    `call(method, *args)` is one awaited actor call.
    """

    def __init__(
        self,
        limiters: Mapping[str, LeasedLimiter],
        *,
        worker: str,
        call: Callable[..., Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiters = dict(limiters)
        self.worker = worker
        self._call = call
        self._clock = clock
        self._renew_at: dict[str, float] = {}
        self._expires_at: dict[str, float] = {}
        self._pauses = dict.fromkeys(limiters, 0)

    async def renew(self, model: str) -> None:
        lease: Lease = await self._call("lease", self.worker, model)
        now = self._clock()
        limiter = self.limiters[model]
        limiter.apply(lease)
        self._pauses[model] = limiter.pauses
        self._expires_at[model] = now + lease.lease_s
        self._renew_at[model] = now + (lease.lease_s * RENEW_AT if lease.units else lease.lease_s)

    async def start(self) -> None:
        for model in self.limiters:
            await self.renew(model)

    async def run(self) -> None:
        """Renew leases as they come due; tell the actor when a model paused here."""
        while True:
            await anyio.sleep(0.1)
            now = self._clock()
            for model, limiter in self.limiters.items():
                if limiter.pauses > self._pauses[model]:
                    self._pauses[model] = limiter.pauses
                    pause_s = max(0.0, limiter.cooldown_until - now)
                    await self._call("cool_down", model, pause_s)
                if now >= self._expires_at.get(model, math.inf):
                    limiter.expire()  # never send on a lease the actor may have reclaimed
                if now >= self._renew_at.get(model, math.inf):
                    await self.renew(model)
