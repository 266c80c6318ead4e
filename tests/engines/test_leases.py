"""The lease actor's arithmetic, as plain objects in virtual time (no Ray)."""

from __future__ import annotations

import anyio
import pytest

from batchroute.dispatch.limits import ModelLimiter
from batchroute.engines.leases import (
    LEASE_GRACE_S,
    ClusterLimits,
    LeasedBudget,
    LeasedLimiter,
    LeaseKeeper,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_shares_never_add_up_past_the_limit() -> None:
    clock = Clock()
    limits = ClusterLimits({"m": (600, 60_000)}, workers=3, max_cost_usd=None, clock=clock)
    leases = [limits.lease(f"w{i}#a", "m") for i in range(3)]
    assert [lease.units for lease in leases] == [3, 3, 3]
    assert sum(lease.rpm or 0 for lease in leases) <= 600
    assert sum(lease.tpm or 0 for lease in leases) <= 60_000
    # per second: the floors of the shares add up to at most rpm / 60
    assert sum((lease.rpm or 0) // 60 for lease in leases) <= 10
    # a fourth asker (a retry) finds nothing free until a holder's lease runs out
    assert limits.lease("w3#b", "m").units == 1  # the 10th unit
    assert limits.lease("w4#c", "m").units == 0


def test_a_model_with_only_a_tpm_is_shared_too() -> None:
    limits = ClusterLimits({"m": (None, 90_000)}, workers=3, max_cost_usd=None, clock=Clock())
    leases = [limits.lease(f"w{i}#a", "m") for i in range(3)]
    assert [(lease.rpm, lease.tpm) for lease in leases] == [(None, 30_000)] * 3
    assert limits.lease("w3#b", "m").units == 0


def test_a_dead_workers_units_come_back_when_its_lease_expires() -> None:
    clock = Clock()
    limits = ClusterLimits({"m": (120, None)}, workers=2, max_cost_usd=None, clock=clock)
    first = limits.lease("w0#a", "m")
    assert first.units == 1 and limits.lease("w1#a", "m").units == 1
    assert limits.lease("w0#b", "m").units == 0  # w0's retry while w0#a still holds
    clock.now += first.lease_s + LEASE_GRACE_S + 0.01
    limits.lease("w1#a", "m")  # w1 renews in time; w0#a does not
    assert limits.lease("w0#b", "m").units == 1


def test_a_finished_worker_leaves_its_share_to_the_others() -> None:
    limits = ClusterLimits({"m": (600, None)}, workers=2, max_cost_usd=None, clock=Clock())
    assert limits.lease("w0#a", "m").units == 5
    assert limits.lease("w1#a", "m").units == 5
    limits.finish("w1#a")
    assert limits.lease("w0#a", "m").units == 10


def test_budget_leases_never_pass_the_cap() -> None:
    limits = ClusterLimits({}, workers=2, max_cost_usd=1.0, clock=Clock())
    budgets = [LeasedBudget(limits.lease_budget) for _ in range(2)]
    spent = 0.0
    for turn in range(100):
        budget = budgets[turn % 2]
        if budget.reserve(0.03):
            budget.settle(0.03, 0.02)
            spent += 0.02
    assert all(budget.exhausted for budget in budgets)
    leased = sum(budget.max_cost_usd or 0.0 for budget in budgets)
    assert leased <= 1.0 + 1e-9
    assert spent <= 1.0
    assert spent > 0.9, "the cap is used, not stranded in chunks"
    for budget in budgets:
        limits.return_budget(budget.unused_usd, budget.spent_usd)
    assert limits.stats()["budget_spent_usd"] == pytest.approx(spent)


def test_a_limiter_with_no_units_sends_nothing_until_a_lease_grants_some() -> None:
    limits = ClusterLimits({"m": (60, None)}, workers=2, max_cost_usd=None)
    holder = LeasedLimiter(ModelLimiter("m", rpm=60, tpm=None, max_concurrency=4))
    starved = LeasedLimiter(ModelLimiter("m", rpm=60, tpm=None, max_concurrency=4))
    holder.apply(limits.lease("w0#a", "m"))
    starved.apply(limits.lease("w1#a", "m"))
    assert (holder.units, starved.units) == (1, 0)

    async def main() -> None:
        assert await holder.acquire(0)
        with anyio.move_on_after(0.3):
            await starved.acquire(0)
            raise AssertionError("a worker without units sent")
        limits.finish("w0#a")
        keeper = LeaseKeeper({"m": starved}, worker="w1#a", call=_direct(limits))
        await keeper.renew("m")
        with anyio.fail_after(2):
            assert await starved.acquire(0)

    anyio.run(main)


def _direct(limits: ClusterLimits):  # type: ignore[no-untyped-def]
    async def call(method: str, *args: object) -> object:
        return getattr(limits, method)(*args)

    return call


def test_a_pause_on_one_worker_reaches_the_others_at_their_next_lease() -> None:
    limits = ClusterLimits({"m": (600, None)}, workers=2, max_cost_usd=None)
    here = LeasedLimiter(ModelLimiter("m", rpm=600, tpm=None, max_concurrency=4))
    there = LeasedLimiter(ModelLimiter("m", rpm=600, tpm=None, max_concurrency=4))
    keepers = [
        LeaseKeeper({"m": limiter}, worker=f"w{i}#a", call=_direct(limits))
        for i, limiter in enumerate((here, there))
    ]

    async def main() -> None:
        for keeper in keepers:
            await keeper.start()
        for _ in range(3):  # a cluster of 429s pauses the model here
            here.rate_limited(5.0)
        assert here.is_cooling() and not there.is_cooling()
        with anyio.move_on_after(0.25):
            await keepers[0].run()  # reports the pause to the actor
        await keepers[1].renew("m")
        assert there.is_cooling()

    anyio.run(main)
