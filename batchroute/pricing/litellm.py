"""Import LiteLLM's `model_prices_and_context_window.json`, which prices per token.

Each entry's per-token costs become USD per 1M tokens: `input_cost_per_token`,
`output_cost_per_token`, `cache_read_input_token_cost` and `output_cost_per_reasoning_token`.
`input_cost_per_token_batches` gives the batch discount, and `max_input_tokens` (or
`max_tokens`) the context window. Entries without both an input and an output cost (image,
audio and rerank models, LiteLLM's `sample_spec`) are skipped; a cost that is present but not a
non-negative number is an error naming the entry and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from batchroute.errors import PriceError
from batchroute.pricing.price import ModelPrice, to_price

__all__ = ["parse_litellm"]

_PER_MTOK = Decimal(1_000_000)
_SKIPPED = frozenset({"sample_spec"})


def _per_mtok(entry: Mapping[str, Any], key: str, *, where: str) -> Decimal | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{where}.{key}: must be a cost per token in USD, got {value!r}")
    try:
        per_token = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{where}.{key}: must be a cost per token in USD, got {value!r}") from None
    if not per_token.is_finite() or per_token < 0:
        raise ValueError(f"{where}.{key}: must be a cost of 0 or more, got {value!r}")
    return to_price(per_token * _PER_MTOK, where=f"{where}.{key}")


def _window(entry: Mapping[str, Any]) -> int | None:
    for key in ("max_input_tokens", "max_tokens"):
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _parse_entry(name: str, entry: Mapping[str, Any]) -> ModelPrice | None:
    where = name
    input_price = _per_mtok(entry, "input_cost_per_token", where=where)
    output_price = _per_mtok(entry, "output_cost_per_token", where=where)
    cached = _per_mtok(entry, "cache_read_input_token_cost", where=where)
    reasoning = _per_mtok(entry, "output_cost_per_reasoning_token", where=where)
    batch_input = _per_mtok(entry, "input_cost_per_token_batches", where=where)
    if input_price is None or output_price is None:
        return None
    discount = Decimal(0)
    if batch_input is not None and input_price > 0 and batch_input <= input_price:
        discount = (1 - batch_input / input_price).quantize(Decimal("0.000001"))
    return ModelPrice(
        input_per_mtok=input_price,
        output_per_mtok=output_price,
        cached_input_per_mtok=cached,
        reasoning_per_mtok=reasoning,
        batch_discount=discount,
        context_window=_window(entry),
    )


def parse_litellm(data: Any, *, path: Path | str) -> dict[str, ModelPrice]:
    """Prices per 1M tokens from parsed LiteLLM JSON; `PriceError` names a bad entry and key."""
    if not isinstance(data, Mapping):
        raise PriceError(
            "is neither a batchroute price table (a 'models' mapping) nor LiteLLM's format "
            "(a mapping of model names to per-token costs)",
            path=path,
        )
    prices: dict[str, ModelPrice] = {}
    for name, entry in data.items():
        if name in _SKIPPED:
            continue
        if not isinstance(entry, Mapping):
            raise PriceError(f"{name}: must be a mapping of LiteLLM price fields", path=path)
        try:
            price = _parse_entry(str(name), entry)
        except ValueError as exc:
            raise PriceError(str(exc), path=path) from None
        if price is not None:
            prices[str(name)] = price
    if not prices:
        raise PriceError(
            "holds no model with both input_cost_per_token and output_cost_per_token", path=path
        )
    return prices
