"""How well a router matches labelled examples, and what its misroutes cost at the job's prices.

Under- and over-routing follow the capabilities of `batchroute.classify.decision.SERVES`:
under-routing sends a row to a tier that cannot do its labelled work (quality at risk);
over-routing sends it to another tier that can, at a price (money lost, reported in USD).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from batchroute.classify.decision import SERVES
from batchroute.classify.router import frame_from_prompts
from batchroute.config import TIERS
from batchroute.errors import DatasetError
from batchroute.pricing.forecast import prompt_tokens_expr, tier_prices

if TYPE_CHECKING:
    from batchroute.classify.router import Router
    from batchroute.config import Job

__all__ = ["Evaluation", "TierScore", "evaluate_router", "read_labelled"]


@dataclass(frozen=True, slots=True)
class TierScore:
    """Precision and recall of one tier."""

    tier: str
    precision: float
    recall: float
    support: int
    predicted: int


@dataclass(frozen=True)
class Evaluation:
    """The result of `evaluate_router`: accuracy, per-tier scores, confusion and misroute cost."""

    tiers: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    """confusion[i][j]: rows labelled tiers[i] that the router sent to tiers[j]."""
    rows: int
    correct: int
    per_tier: tuple[TierScore, ...]
    over_routed_rows: int
    """Rows sent to another tier than their label's that can also do their work."""
    over_routing_cost_usd: Decimal
    """Money lost on over-routed rows, against their label's tier."""
    under_routed_rows: int
    """Rows sent to a tier that cannot do their labelled work."""
    sources: dict[str, int]
    """How many rows each tier_source decided."""
    unpriced_tiers: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows if self.rows else 0.0

    @property
    def under_routed_share(self) -> float:
        """The share of rows under-routed (to a tier that cannot do their work)."""
        return self.under_routed_rows / self.rows if self.rows else 0.0

    @property
    def over_routed_share(self) -> float:
        """The share of rows over-routed (to a dearer tier that can also do their work)."""
        return self.over_routed_rows / self.rows if self.rows else 0.0

    def passes(self, min_accuracy: float | None) -> bool:
        """Whether the accuracy meets a gate (always, with no gate)."""
        return min_accuracy is None or self.accuracy >= min_accuracy


def read_labelled(path: Path | str) -> tuple[list[str], list[str]]:
    """The prompts and tiers of a labelled CSV (columns `prompt` and `tier`)."""
    path = Path(path)
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except FileNotFoundError:
        raise DatasetError("no such labelled file", path=path) from None
    except pl.exceptions.PolarsError as exc:
        raise DatasetError(f"cannot be read as CSV ({exc})", path=path) from None
    missing = [c for c in ("prompt", "tier") if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"has no column {', '.join(repr(c) for c in missing)}; a labelled file needs "
            f"columns prompt,tier (it has: {', '.join(frame.columns)})",
            path=path,
        )
    frame = frame.with_columns(pl.col("tier").str.strip_chars().str.to_lowercase())
    bad = frame.filter(~pl.col("tier").is_in(list(TIERS)) | pl.col("prompt").is_null())
    if bad.height:
        line = frame.with_row_index("line", offset=2).filter(
            ~pl.col("tier").is_in(list(TIERS)) | pl.col("prompt").is_null()
        )["line"][0]
        raise DatasetError(
            f"{bad.height} rows have an empty prompt or a tier that is not one of "
            f"{', '.join(TIERS)}",
            path=path,
            line=int(line),
        )
    return frame["prompt"].to_list(), frame["tier"].to_list()


def evaluate_router(
    router: Router, prompts: list[str], labels: list[str], *, job: Job
) -> Evaluation:
    """Route labelled prompts and compare with their labels, costing misroutes at job prices.

    A label naming a tier the job does not map counts as `standard`, where the job sends it.
    """
    mapped = tuple(t for t in TIERS if t in job.config.tiers)
    routed = router.classify(frame_from_prompts(prompts))
    frame = routed.select("prompt", "tier", "tier_source").with_columns(
        pl.Series("label", labels, dtype=pl.String)
    )
    frame = frame.with_columns(
        pl.when(pl.col("label").is_in(list(mapped)))
        .then(pl.col("label"))
        .otherwise(pl.lit("standard"))
        .alias("label"),
        prompt_tokens_expr(job).alias("input_tokens"),
    )
    counts = frame.group_by("label", "tier").len()
    cell = {(lab, pred): n for lab, pred, n in counts.iter_rows()}
    confusion = tuple(tuple(cell.get((lab, pred), 0) for pred in mapped) for lab in mapped)
    scores = []
    for i, tier in enumerate(mapped):
        true_pos = confusion[i][i]
        support = sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        scores.append(
            TierScore(
                tier,
                precision=true_pos / predicted if predicted else 0.0,
                recall=true_pos / support if support else 0.0,
                support=support,
                predicted=predicted,
            )
        )

    prices = tier_prices(job)
    pairs = [(tier, label) for tier in mapped for label in mapped if tier != label]
    under_pairs = [(t, lab) for t, lab in pairs if lab not in SERVES[t]]
    over_pairs = [(t, lab) for t, lab in pairs if lab in SERVES[t]]

    def is_pair(chosen: list[tuple[str, str]]) -> pl.Expr:
        pair = pl.concat_str(pl.col("tier"), pl.col("label"), separator="\x00")
        return pair.is_in(["\x00".join(p) for p in chosen])

    costed = frame.with_columns(
        is_pair(over_pairs).alias("over"), is_pair(under_pairs).alias("under")
    )
    over = (
        costed.filter(pl.col("over"))
        .group_by("label", "tier")
        .agg(pl.len().alias("rows"), pl.col("input_tokens").sum())
    )
    lost = Decimal(0)
    for label, tier, rows, in_tokens in over.iter_rows():
        lost += prices[tier].cost_usd(input_tokens=in_tokens, rows=rows)
        lost -= prices[label].cost_usd(input_tokens=in_tokens, rows=rows)
    sources = dict(frame.group_by("tier_source").len().sort("tier_source").iter_rows())
    return Evaluation(
        tiers=mapped,
        confusion=confusion,
        rows=frame.height,
        correct=sum(confusion[i][i] for i in range(len(mapped))),
        per_tier=tuple(scores),
        over_routed_rows=int(costed["over"].sum()),
        over_routing_cost_usd=lost,
        under_routed_rows=int(costed["under"].sum()),
        sources={str(k): int(v) for k, v in sources.items()},
        unpriced_tiers=tuple(t for t, p in prices.items() if not p.priced),
    )
