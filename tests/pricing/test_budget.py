"""Tests for batchroute.pricing.budget: reservations, settlement, and the cap."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batchroute.pricing.budget import Budget, reserved_output_tokens


def test_no_cap_always_reserves() -> None:
    budget = Budget(None)
    assert budget.reserve(1e9)
    assert not budget.exhausted
    assert budget.remaining_usd is None


def test_reservation_past_the_cap_is_refused_and_sticks() -> None:
    budget = Budget(Decimal("1.00"))
    assert budget.reserve(0.6)
    assert not budget.reserve(0.5)
    assert budget.exhausted
    budget.settle(0.6, 0.1)
    assert not budget.reserve(0.01), "once exhausted, every later reservation is refused"


def test_settle_replaces_reservation_with_actual_cost() -> None:
    budget = Budget(Decimal("2"))
    assert budget.reserve(0.5)
    assert budget.reserved_usd == pytest.approx(0.5)
    budget.settle(0.5, 0.2)
    assert budget.reserved_usd == pytest.approx(0.0)
    assert budget.spent_usd == pytest.approx(0.2)
    assert budget.remaining_usd == pytest.approx(1.8)


def test_spend_never_passes_cap_by_more_than_in_flight() -> None:
    budget = Budget(Decimal("1"))
    in_flight: list[float] = []
    while budget.reserve(0.07):
        in_flight.append(0.07)
    assert budget.spent_usd + budget.reserved_usd <= 1.0
    for amount in in_flight:
        budget.settle(amount, amount)
    assert budget.spent_usd <= 1.0


def test_repr_shows_state() -> None:
    budget = Budget(Decimal("3"))
    budget.reserve(1)
    assert "reserved: 1.000000" in repr(budget) and "exhausted: False" in repr(budget)


def test_reserved_output_is_the_limit_sent_else_the_context_window() -> None:
    """A request without `max_tokens` may still send `max_completion_tokens`: that bounds it."""
    assert reserved_output_tokens({"max_completion_tokens": 200}, context_window=None) == 200
    assert reserved_output_tokens({"max_tokens": 64}, context_window=128_000) == 64
    assert reserved_output_tokens({}, context_window=128_000) == 128_000
