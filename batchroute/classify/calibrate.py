"""Calibration: tune the trained classifier's per-tier bias on a sample to meet a cost or share.

A negative per-tier bias makes a tier harder to choose: the model's least-expected-cost decision
multiplies the tier's own price by `exp(-bias)` (a shadow price; the most-probable decision, for
a job with no prices, adds it to the log-probability). Calibration searches one scalar λ by
bisection:

- `--max-complex-share S`: bias = {complex: -λ}; the smallest λ whose routed complex share ≤ S.
- `--target-cost USD`: bias[t] = -λ · unit_cost[t] / max(unit_cost), so pricier tiers are
  penalised more; the smallest λ whose forecast cost for the whole input ≤ USD.

Rows below the confidence gate go to `standard`, which the bias cannot move. So when no λ
meets the target at the job's gate, the search is repeated at lower gates (`_GATES`), letting the
classifier decide more rows. Hints (metadata, json_output) never change, so a target they alone
exceed cannot be met; the result says so. The scores are computed once per sample.

The calibrated bias and gate are written into a copy of the model file (`save_model`), which the
job then names in `routing.classifier.path`; `Calibration.router` is the router that file gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, cast

import polars as pl

from batchroute.classify.router import Router
from batchroute.classify.rules import TEXT_COLUMN, text_expr
from batchroute.errors import JobError
from batchroute.pricing.forecast import forecast_by_tier, prompt_tokens_expr, tier_prices
from batchroute.schema import COST_DTYPE, INPUT_SCHEMA

if TYPE_CHECKING:
    from batchroute.config import Job

__all__ = ["Calibration", "calibrate_router", "read_sample"]

_MAX_LAMBDA = 40.0
_GATES = (0.5, 0.4, 0.3, 0.2, 0.0)
"""Confidence gates tried, after the job's own, when the bias alone cannot meet the target."""
_STEPS = 30
_PICO = Decimal("0.000000000001")


@dataclass(frozen=True)
class Calibration:
    """The outcome of `calibrate_router`: the bias found and the forecasts around it."""

    bias: dict[str, float]
    min_confidence: float
    """The confidence gate the bias was found with."""
    gate_changed: bool
    """Whether `min_confidence` differs from the job's (the calibrated file then carries it)."""
    met: bool
    target: str
    sample_rows: int
    input_rows: int
    before: pl.DataFrame
    """Per-tier forecast of the whole input without calibration (see `forecast_by_tier`)."""
    after: pl.DataFrame
    """Per-tier forecast with the calibrated bias."""
    router: Router
    """The job's router with the calibrated model in it."""

    @property
    def cost_before_usd(self) -> Decimal:
        return _total(self.before)

    @property
    def cost_after_usd(self) -> Decimal:
        return _total(self.after)


def _total(forecast: pl.DataFrame) -> Decimal:
    """The forecast `plan` shows for these rows: the answers, and any checks on them."""
    return sum(forecast["forecast_cost_usd"].to_list(), Decimal(0))


def read_sample(job: Job, *, rows: int, seed: int) -> tuple[pl.DataFrame, int]:
    """A seeded random sample of the job's input (INPUT_SCHEMA), and the input's row count.

    The input is streamed batch by batch; each row gets a seeded hash of its index as a key and
    the `rows` smallest keys are kept, so memory stays bounded by `rows` plus one batch and the
    sample does not depend on the batch size.
    """
    from batchroute.dataset import open_dataset

    key = "__batchroute_sample_key"
    kept: pl.DataFrame | None = None
    total = 0
    for batch in open_dataset(job).batches(batch_rows=job.config.run.batch_rows):
        frame: pl.DataFrame = batch.rows
        total += frame.height
        keyed = frame.with_columns(pl.col("row_index").hash(seed).alias(key))
        merged = keyed if kept is None else pl.concat([kept, keyed], how="diagonal_relaxed")
        kept = merged.sort(key).head(rows)
    if kept is None:
        return pl.DataFrame(schema=INPUT_SCHEMA), 0
    return kept.sort("row_index").drop(key), total


def calibrate_router(
    router: Router,
    sample: pl.DataFrame,
    *,
    job: Job,
    input_rows: int | None = None,
    target_cost_usd: Decimal | None = None,
    max_complex_share: float | None = None,
) -> Calibration:
    """Find the per-tier bias that meets one target on `sample`, scaled to `input_rows`."""
    if (target_cost_usd is None) == (max_complex_share is None):
        raise ValueError("give exactly one of target_cost_usd and max_complex_share")
    classifier = router.classifier
    if classifier is None:
        raise JobError(
            "calibrate tunes the router model, but routing.classifier.kind is 'rules'; "
            "remove that key (the shipped model) or set classifier: {kind: model, path: ...}",
            path=job.path,
            key="routing.classifier",
        )
    if sample.height == 0:
        raise JobError("the job's input has no rows to calibrate on", path=job.path)
    input_rows = sample.height if input_rows is None else input_rows
    scale = Decimal(input_rows) / Decimal(sample.height)
    texts = sample.select(text_expr(sample).alias(TEXT_COLUMN))[TEXT_COLUMN]
    scores = classifier.predict_proba(texts)

    if max_complex_share is not None:
        target = f"complex share <= {max_complex_share:.1%}"
        direction = {"complex": 1.0}

        def measure(routed: pl.DataFrame) -> float:
            return int((routed["tier"] == "complex").sum()) / max(routed.height, 1)

        goal = max_complex_share
    else:
        assert target_cost_usd is not None
        target = f"forecast cost <= ${target_cost_usd}"
        prices = tier_prices(job)
        mean = sample.select(prompt_tokens_expr(job).mean()).to_series()[0]
        mean_tokens = float(cast(float, mean) or 0.0)
        unit = {t: p.unit_cost_usd(mean_tokens) for t, p in prices.items()}
        top = max(unit.values()) or 1.0
        direction = {t: u / top for t, u in unit.items()}

        def measure(routed: pl.DataFrame) -> float:
            return float(_total(forecast_by_tier(routed, job=job)) * scale)

        goal = float(target_cost_usd)

    def route(gated: Router, lam: float) -> pl.DataFrame:
        bias = {t: -lam * d for t, d in direction.items()}
        return gated.classify(sample, scores=scores, bias=bias)

    def search(gated: Router) -> tuple[float, bool]:
        if measure(route(gated, 0.0)) <= goal:
            return 0.0, True
        if measure(route(gated, _MAX_LAMBDA)) > goal:
            return _MAX_LAMBDA, False
        low, high = 0.0, _MAX_LAMBDA
        for _ in range(_STEPS):
            mid = (low + high) / 2
            low, high = (low, mid) if measure(route(gated, mid)) <= goal else (mid, high)
        return high, measure(route(gated, high)) <= goal

    before = router.classify(sample, scores=scores, bias=dict(classifier.tier_bias))
    gates = [router.min_confidence, *(g for g in _GATES if g < router.min_confidence)]
    for gate in gates:
        gated = Router(
            router.rules,
            classifier=classifier,
            min_confidence=gate,
            costs=router.costs,
            under_routing_penalty=router.under_routing_penalty,
        )
        best, met = search(gated)
        if met:
            break
    after = route(gated, best)
    bias = {t: -best * d + 0.0 for t, d in direction.items()}  # + 0.0 turns -0.0 into 0.0
    return Calibration(
        bias=bias,
        min_confidence=gate,
        gate_changed=gate != router.min_confidence,
        met=met,
        target=target,
        sample_rows=sample.height,
        input_rows=input_rows,
        before=_scaled(forecast_by_tier(before, job=job), scale),
        after=_scaled(forecast_by_tier(after, job=job), scale),
        router=Router(
            router.rules,
            classifier=classifier.with_bias(bias, min_confidence=gate),
            min_confidence=gate,
            costs=router.costs,
            under_routing_penalty=router.under_routing_penalty,
        ),
    )


def _scaled(forecast: pl.DataFrame, scale: Decimal) -> pl.DataFrame:
    """A sample's forecast scaled up to the whole input (rows, tokens and costs)."""
    factor = float(scale)
    return forecast.with_columns(
        (pl.col("rows") * factor).round(0).cast(pl.Int64),
        (pl.col("input_tokens") * factor).round(0).cast(pl.Int64),
        (pl.col("output_tokens") * factor).round(0).cast(pl.Int64),
        *(
            pl.Series(name, [(c * scale).quantize(_PICO) for c in forecast[name]], dtype=COST_DTYPE)
            for name in ("cost_usd", "forecast_cost_usd")
        ),
    )
