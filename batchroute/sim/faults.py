"""Fault injection: which misbehaviour, if any, a request draws from its model's `FaultRates`."""

from __future__ import annotations

import random

from batchroute.sim.config import FaultRates

__all__ = ["FAULTS", "FaultPicker"]

FAULTS: tuple[str, ...] = (
    "rate_limit",
    "server_error",
    "unavailable",
    "hang",
    "disconnect",
    "malformed",
    "content_filter",
)
"""The fault names, as `FaultRates` fields and as `/sim/stats` reports them."""


class FaultPicker:
    """Draws one fault (or none) per request from cumulative rates, with the server's generator."""

    __slots__ = ("_thresholds", "_until_s", "_from_s", "rates")

    def __init__(self, rates: FaultRates) -> None:
        self.rates = rates
        thresholds: list[tuple[float, str]] = []
        total = 0.0
        for name in FAULTS:
            rate = float(getattr(rates, name))
            if rate > 0:
                total += rate
                thresholds.append((total, name))
        if total > 1.0:
            # The rates are independent probabilities in the config; past 1 they are shares.
            thresholds = [(edge / total, name) for edge, name in thresholds]
        self._thresholds = tuple(thresholds)
        self._from_s = rates.active_from_s
        self._until_s = rates.active_until_s

    def draw(self, rng: random.Random, *, elapsed_s: float) -> str | None:
        """One fault name, or None; draws nothing when no fault is set or active at `elapsed_s`."""
        if not self._thresholds or elapsed_s < self._from_s:
            return None
        if self._until_s is not None and elapsed_s >= self._until_s:
            return None
        u = rng.random()
        for edge, name in self._thresholds:
            if u < edge:
                return name
        return None

    def __repr__(self) -> str:
        shares = ", ".join(f"{name}<{edge:.3f}" for edge, name in self._thresholds)
        return f"<FaultPicker [{shares or 'no faults'}]>"
