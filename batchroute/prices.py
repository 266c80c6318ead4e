"""PLACEHOLDER: the costs/reports helper replaces this module. Interface only."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchroute.config import Job


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    context_window: int | None = None


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, ModelPrice]
    unpriced: frozenset[str]
    source: str
    sha256: str

    def get(self, model: str) -> ModelPrice | None:
        return self.prices.get(model)


def resolve_prices(job: Job) -> PriceTable:
    prices = {}
    for name, m in job.config.models.items():
        if m.input_per_mtok is not None and m.output_per_mtok is not None:
            prices[name] = ModelPrice(m.input_per_mtok, m.output_per_mtok, m.cached_input_per_mtok, m.reasoning_per_mtok, m.context_window)
    return PriceTable(prices, frozenset(set(job.config.models) - set(prices)), "job", "")
