"""The cost-aware decision: from a row's tier probabilities, the tier of least expected cost.

Tiers are capabilities, not a single ladder. `bulk < standard < complex` is one order of how
hard the work may be; `structured` is its own capability (its tier answers in a data format),
which only `complex` also covers. `SERVES[t]` lists the work tier `t` can do:

    complex    → complex, standard, structured, bulk   (the most capable model)
    standard   → standard, bulk
    structured → structured
    bulk       → bulk

A row labelled `l` and sent to tier `t` is **under-routed** when `l` is not in `SERVES[t]` (the
work is beyond the tier, or needs a format it does not give: quality is at risk), and
**over-routed** when `t != l` but `t` serves `l` (the work is done, at a higher price).

Choosing tier `t` for a row whose label is `l` costs the row's price on `t`, plus, when `t` does
not serve `l`, `under_routing_penalty × the row's price on l`: the work must be redone on the right
tier, and its quality lost meanwhile. The expected cost of `t` over the row's probabilities is

    E[t] = price[t] + penalty · Σ_l p(l) · [l ∉ SERVES[t]] · price[l]

and the decision is `argmin_t E[t]`. A penalty of 0 picks the cheapest tier; the larger it is,
the more probable a harder label must be before a cheaper tier is chosen.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from batchroute.pricing.tokens import CHARS_PER_TOKEN

if TYPE_CHECKING:
    from batchroute.config import Job

__all__ = [
    "SERVES",
    "TierCosts",
    "is_over_routed",
    "is_under_routed",
    "least_expected_cost",
]

SERVES: Mapping[str, frozenset[str]] = {
    "complex": frozenset({"complex", "standard", "structured", "bulk"}),
    "standard": frozenset({"standard", "bulk"}),
    "structured": frozenset({"structured"}),
    "bulk": frozenset({"bulk"}),
}
"""The labels each tier can do the work of (see the module docstring)."""


def is_under_routed(tier: str, label: str) -> bool:
    """Whether sending work labelled `label` to `tier` puts its quality at risk."""
    return label not in SERVES.get(tier, frozenset({tier}))


def is_over_routed(tier: str, label: str) -> bool:
    """Whether `tier` does work labelled `label` that a cheaper, right tier would have done."""
    return tier != label and not is_under_routed(tier, label)


def least_expected_cost(
    probs: np.ndarray[Any, Any],
    row_costs: np.ndarray[Any, Any],
    *,
    tiers: Sequence[str],
    serves: Mapping[str, Collection[str]] = SERVES,
    penalty: float,
    price_scale: np.ndarray[Any, Any] | None = None,
) -> np.ndarray[Any, Any]:
    """Each row's column (into `tiers`) of least expected cost.

    `probs` and `row_costs` are (rows × tiers); `row_costs[i, t]` is row i's price on tier t.
    `price_scale` multiplies each tier's own price (calibration's bias), not the price of the
    work it would under-route. Ties go to the earlier tier of `tiers`.
    """
    k = len(tiers)
    misses = np.array(
        [[0.0 if tiers[lab] in serves.get(tiers[t], ()) else 1.0 for lab in range(k)]
         for t in range(k)]
    )  # fmt: skip
    # expected[i, t] = cost[i, t] + penalty * sum_l probs[i, l] * misses[t, l] * cost[i, l]
    own = row_costs if price_scale is None else row_costs * price_scale
    expected = own + penalty * ((probs * row_costs) @ misses.T)
    return np.asarray(expected.argmin(axis=1))


@dataclass(frozen=True)
class TierCosts:
    """Each tier's price of one request, as a function of the prompt's length.

    A row's price on tier t is `(ceil(chars / CHARS_PER_TOKEN) + fixed_tokens) · per_token[t] +
    per_request[t]`: the token estimate of `batchroute.pricing.forecast`, the tier's input
    price, and its expected output at the output price. A tier whose model has no price is
    costed at the dearest priced tier's rates, so routing never favours it for being "free".
    """

    per_token_usd: Mapping[str, float]
    per_request_usd: Mapping[str, float]
    fixed_tokens: int

    @classmethod
    def from_job(cls, job: Job) -> TierCosts | None:
        """The job's tier costs, or None when no tier is priced (the model's argmax decides).

        A job whose prices cannot be resolved routes by argmax here; the command that needs the
        prices (run, plan, eval-classifier) reports the `PriceError` itself.
        """
        from batchroute.errors import PriceError
        from batchroute.pricing.forecast import prompt_tokens_expr, tier_prices

        try:
            prices = tier_prices(job)
        except PriceError:
            return None
        priced = {t: p for t, p in prices.items() if p.priced}
        if not priced:
            return None
        # the one cost formula, read as a line: a request's price is fixed + tokens × per token
        per_request = {t: p.unit_cost_usd(0) for t, p in priced.items()}
        per_token = {t: p.unit_cost_usd(1) - per_request[t] for t, p in priced.items()}
        worst_token, worst_request = max(per_token.values()), max(per_request.values())
        for tier in prices:
            per_token.setdefault(tier, worst_token)
            per_request.setdefault(tier, worst_request)
        empty = pl.DataFrame({"prompt": [""]}, schema={"prompt": pl.String})
        fixed = int(empty.select(prompt_tokens_expr(job))[0, 0])
        return cls(per_token, per_request, fixed)

    def row_costs(self, texts: pl.Series, *, tiers: Sequence[str]) -> np.ndarray[Any, Any]:
        """(rows × tiers) price of each text on each tier, in USD."""
        chars = texts.cast(pl.String).fill_null("").str.len_chars().to_numpy()
        tokens = (chars.astype(np.float64) + (CHARS_PER_TOKEN - 1)) // CHARS_PER_TOKEN
        tokens += self.fixed_tokens
        rate = np.array([self.per_token_usd.get(t, 0.0) for t in tiers])
        fixed = np.array([self.per_request_usd.get(t, 0.0) for t in tiers])
        return np.asarray(tokens[:, None] * rate + fixed)
