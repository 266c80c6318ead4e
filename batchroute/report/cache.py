"""The response cache's figures in the printed and HTML reports (savings.parquet's columns)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

__all__ = ["cache_saving_text"]


def cache_saving_text(
    savings: Mapping[str, Any], format_usd: Callable[[Decimal | None], str]
) -> str | None:
    """One sentence on what the response cache answered and saved; None with no hit.

    A savings row written before the cache was wired has no cache columns: no hit.
    """
    hits = savings.get("cache_hits") or 0
    if not hits:
        return None
    rate = savings.get("cache_hit_rate") or 0.0
    saved = savings.get("cache_saved_usd")
    return (
        f"Response cache: {hits:,} answer{'s' if hits != 1 else ''} ({100 * rate:.1f}% of those "
        f"kept) served without a request, saving {format_usd(saved)} at list price; they cost "
        "nothing new, and routing's saving above leaves them out."
    )
