"""One model's price, and how a number in a price file becomes one.

Prices are USD per 1M tokens, held as `Decimal` quantized to six places (a picodollar per token),
so that every cost computed from them is exact in `COST_DTYPE`. This module is the leaf of the
pricing wing: the price table (`prices`) and its sources (`litellm`) both build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["PRICE_FIELDS", "QUANTUM", "ModelPrice", "to_price"]

PRICE_FIELDS: tuple[str, ...] = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "reasoning_per_mtok",
)
"""The fields of a price that enter a cost, in USD per 1M tokens."""

QUANTUM = Decimal("0.000001")
"""The smallest step of a price per 1M tokens."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's price in USD per 1M tokens; cached and reasoning fall back to input/output."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    batch_discount: Decimal = Decimal(0)
    """The provider's discount on its asynchronous Batch API, as a fraction (0.5: half price)."""
    context_window: int | None = None
    batch_input_per_mtok: Decimal | None = None
    """The Batch API's own input price; without it, the input price less `batch_discount`."""
    batch_output_per_mtok: Decimal | None = None
    """The Batch API's own output price; without it, the output price less `batch_discount`."""

    @property
    def cached_rate(self) -> Decimal:
        """The price of a cached input token per 1M: its own, or the input price."""
        return (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else self.cached_input_per_mtok
        )

    @property
    def reasoning_rate(self) -> Decimal:
        """The price of a reasoning token per 1M: its own, or the output price."""
        return self.output_per_mtok if self.reasoning_per_mtok is None else self.reasoning_per_mtok

    def batch_price(self) -> ModelPrice:
        """The price of the same tokens sent through the Batch API.

        Explicit batch prices win; otherwise each rate is discounted by `batch_discount`,
        quantized to six places like every price, so batch costs stay exact in `COST_DTYPE`.
        """
        keep = Decimal(1) - self.batch_discount

        def discounted(rate: Decimal | None) -> Decimal | None:
            return None if rate is None else (rate * keep).quantize(QUANTUM)

        input_rate = self.batch_input_per_mtok
        output_rate = self.batch_output_per_mtok
        cached = discounted(self.cached_input_per_mtok)
        if input_rate is not None and self.cached_input_per_mtok is None:
            cached = None  # a cached token then costs the batch input price
        return ModelPrice(
            input_per_mtok=input_rate
            if input_rate is not None
            else discounted(self.input_per_mtok),  # type: ignore[arg-type]
            output_per_mtok=output_rate
            if output_rate is not None
            else discounted(self.output_per_mtok),  # type: ignore[arg-type]
            cached_input_per_mtok=cached,
            reasoning_per_mtok=discounted(self.reasoning_per_mtok) if output_rate is None else None,
            context_window=self.context_window,
        )

    def canonical(self) -> dict[str, str | int | None]:
        """The price as JSON-ready values, decimals as fixed-point strings (for hashing).

        The batch prices appear only when set, so tables without them keep their hashes.
        """
        explicit = {
            name: _text(value)
            for name, value in (
                ("batch_input_per_mtok", self.batch_input_per_mtok),
                ("batch_output_per_mtok", self.batch_output_per_mtok),
            )
            if value is not None
        }
        return explicit | {
            "input_per_mtok": _text(self.input_per_mtok),
            "output_per_mtok": _text(self.output_per_mtok),
            "cached_input_per_mtok": _text(self.cached_input_per_mtok),
            "reasoning_per_mtok": _text(self.reasoning_per_mtok),
            "batch_discount": _text(self.batch_discount),
            "context_window": self.context_window,
        }


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def to_price(value: Any, *, where: str) -> Decimal:
    """A non-negative price as a Decimal quantized to six places; `ValueError` names `where`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{where}: must be a number, got {value!r}")
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{where}: must be a number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"{where}: must be a number of 0 or more, got {value!r}")
    quantized = number.quantize(QUANTUM)
    if number and not quantized:  # rounding must never turn a real price into $0
        raise ValueError(f"{where}: {value!r} is below $0.000001 per 1M tokens, the smallest price")
    return quantized
