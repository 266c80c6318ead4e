"""The budget cap: reserve each request's worst case before sending, settle it after.

A reservation is counted against the cap before its request is sent, and replaced by the actual
cost when the answer comes back. So spend ≤ cap holds at every moment, as long as no request
costs more than its reservation: the reservation must be a true upper bound, which
`FloatRates.worst_case_usd` gives from a true bound on the prompt's tokens
(`tokens.message_token_bound`) and on the output (`reserved_output_tokens`). The amounts here are
floats and only steer dispatch; the exact Decimal costs are computed from usage by the costs
module.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from batchroute.pricing.tokens import DEFAULT_OUTPUT_TOKENS, output_token_limit

__all__ = ["Budget", "reserved_output_tokens"]


def reserved_output_tokens(body: Mapping[str, Any], *, context_window: int | None) -> int:
    """The output tokens to reserve for a request with this chat-completions body.

    The limit the body sends (`max_completion_tokens` or `max_tokens`, the smaller) bounds the
    output, reasoning included. Without one, the model's context window does. With neither,
    nothing bounds it, and `DEFAULT_OUTPUT_TOKENS` is reserved: a job with a budget cap should
    send an output limit.
    """
    limit = output_token_limit(body)
    if limit is not None:
        return limit
    return context_window if context_window is not None else DEFAULT_OUTPUT_TOKENS


class Budget:
    """A spend cap in USD shared by every row of a run (one event loop, so no locking)."""

    def __init__(self, max_cost_usd: Decimal | float | None = None) -> None:
        self.max_cost_usd = None if max_cost_usd is None else float(max_cost_usd)
        self.spent_usd = 0.0
        """Settled spend: the actual cost of the attempts that finished."""
        self.reserved_usd = 0.0
        """The expected cost of the attempts in flight."""
        self.exhausted = False
        """True once a reservation was refused; every later reservation is refused too."""

    def __repr__(self) -> str:
        cap = "none" if self.max_cost_usd is None else f"{self.max_cost_usd:.6f}"
        return (
            f"<Budget(max_cost_usd={cap}) [spent: {self.spent_usd:.6f}, "
            f"reserved: {self.reserved_usd:.6f}, exhausted: {self.exhausted}]>"
        )

    @property
    def remaining_usd(self) -> float | None:
        """What may still be reserved; None without a cap."""
        if self.max_cost_usd is None:
            return None
        return self.max_cost_usd - self.spent_usd - self.reserved_usd

    def reserve(self, amount_usd: float) -> bool:
        """Reserve an attempt's expected cost; False (and `exhausted`) if it would pass the cap."""
        if self.exhausted:
            return False
        if self.max_cost_usd is not None and (
            self.spent_usd + self.reserved_usd + amount_usd > self.max_cost_usd
        ):
            self.exhausted = True
            return False
        self.reserved_usd += amount_usd
        return True

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """Replace a reservation with the attempt's actual cost (0 when nothing was billed)."""
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.spent_usd += actual_usd
