"""The cost-aware decision: capabilities, under/over-routing, least expected cost."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from batchroute.classify.decision import (
    SERVES,
    TierCosts,
    is_over_routed,
    is_under_routed,
    least_expected_cost,
)

TIERS = ("bulk", "complex", "standard", "structured")
# One row's price on each tier (USD): complex is 10x standard, bulk half of standard.
PRICE = np.array([[0.5, 10.0, 1.0, 1.0]])


def choose(probs: list[float], *, penalty: float) -> str:
    best = least_expected_cost(np.array([probs]), PRICE, tiers=TIERS, penalty=penalty)
    return TIERS[int(best[0])]


def test_capabilities_define_under_and_over_routing() -> None:
    assert is_under_routed("standard", "complex") and is_under_routed("bulk", "standard")
    assert is_under_routed("structured", "standard") and is_under_routed("standard", "structured")
    assert is_over_routed("complex", "structured") and is_over_routed("standard", "bulk")
    assert not is_under_routed("complex", "bulk") and not is_over_routed("bulk", "bulk")
    assert all(tier in serves for tier, serves in SERVES.items())


def test_without_penalty_the_cheapest_tier_wins() -> None:
    assert choose([0.0, 0.9, 0.1, 0.0], penalty=0.0) == "bulk"


def test_the_penalty_buys_capability_when_harder_work_is_likely_enough() -> None:
    # p(complex) = 0.4. Standard: 1 + 2 * 0.4 * 10 = 9 < complex's 10; at penalty 3, 13 > 10.
    probs = [0.0, 0.4, 0.6, 0.0]
    assert choose(probs, penalty=2.0) == "standard"
    assert choose(probs, penalty=3.0) == "complex"


def test_a_sure_row_goes_to_its_own_tier() -> None:
    for i, tier in enumerate(TIERS):
        probs = [0.0] * 4
        probs[i] = 1.0
        assert choose(probs, penalty=3.0) == tier


def test_uncertain_bulk_or_standard_goes_to_standard() -> None:
    # Bulk: 0.5 + 3 * 0.3 * 1 = 1.4 > standard's 1.0: a 30% chance of standard work is too much.
    assert choose([0.7, 0.0, 0.3, 0.0], penalty=3.0) == "standard"
    # ...but a 10% chance is not: 0.5 + 3 * 0.1 = 0.8 < 1.0.
    assert choose([0.9, 0.0, 0.1, 0.0], penalty=3.0) == "bulk"


def test_structured_is_its_own_capability() -> None:
    # Neither standard nor structured does the other's work: each risks 0.5 * penalty * 1.
    # At penalty 30 that is 16 > 10, and complex, which does both, is cheaper.
    assert choose([0.0, 0.0, 0.5, 0.5], penalty=3.0) in {"standard", "structured"}
    assert choose([0.0, 0.0, 0.5, 0.5], penalty=30.0) == "complex"
    assert choose([0.0, 0.0, 0.0, 1.0], penalty=30.0) == "structured"


def test_row_costs_follow_prompt_length_and_price_unpriced_tiers_at_the_dearest() -> None:
    costs = TierCosts(
        per_token_usd={"bulk": 1e-6, "complex": 5e-6},
        per_request_usd={"bulk": 1e-4, "complex": 1e-3},
        fixed_tokens=10,
    )
    texts = pl.Series(["x" * 40, "x" * 41])  # 10 and 11 tokens, plus 10 fixed
    out = costs.row_costs(texts, tiers=["bulk", "complex"])
    np.testing.assert_allclose(out, [[1.2e-4, 1.1e-3], [1.21e-4, 1.105e-3]])


@pytest.mark.parametrize("penalty", [0.0, 1.0, 5.0])
def test_decision_is_vectorised_row_by_row(penalty: float) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50)
    costs = np.tile(PRICE, (50, 1))
    whole = least_expected_cost(probs, costs, tiers=TIERS, penalty=penalty)
    one_by_one = [
        least_expected_cost(probs[i : i + 1], costs[i : i + 1], tiers=TIERS, penalty=penalty)[0]
        for i in range(50)
    ]
    assert whole.tolist() == one_by_one


def test_a_price_scale_makes_a_tier_dearer_to_choose_not_its_work() -> None:
    """Calibration's bias: complex priced x100 loses a row it would win, at the same penalty."""
    probs = np.array([[0.0, 0.4, 0.6, 0.0]])
    assert TIERS[int(least_expected_cost(probs, PRICE, tiers=TIERS, penalty=3.0)[0])] == "complex"
    scale = np.array([1.0, 100.0, 1.0, 1.0])
    best = least_expected_cost(probs, PRICE, tiers=TIERS, penalty=3.0, price_scale=scale)
    assert TIERS[int(best[0])] == "standard"


def test_the_penalty_is_validated_at_load_with_its_key() -> None:
    from pathlib import Path

    from batchroute.config import parse_job
    from batchroute.errors import JobError

    data = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "tiers": {"standard": "m"},
        "models": {"m": {"input_per_mtok": 1, "output_per_mtok": 1}},
        "routing": {"under_routing_penalty": -1},
    }
    with pytest.raises(JobError, match="routing.under_routing_penalty"):
        parse_job(data, path=Path("job.yaml"))
    data["routing"] = {"under_routing_penalty": 0.5}
    assert parse_job(data, path=Path("job.yaml")).routing.under_routing_penalty == 0.5


def test_unpriced_tiers_are_costed_at_the_dearest_priced_rates() -> None:
    from pathlib import Path

    from batchroute.config import Job, parse_job

    data = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "request": {"max_tokens": 100},
        "tiers": {"complex": "big", "standard": "big", "bulk": "mystery-model-x"},
        "models": {"big": {"input_per_mtok": 5, "output_per_mtok": 25}, "mystery-model-x": {}},
        "prices": {"allow_unpriced": True},
    }
    job = Job(parse_job(data, path=Path("j.yaml")), path=Path("j.yaml"), text_sha256="")
    costs = TierCosts.from_job(job)
    assert costs is not None
    assert costs.per_token_usd["bulk"] == costs.per_token_usd["complex"] == pytest.approx(5e-6)
    assert costs.per_request_usd["bulk"] == costs.per_request_usd["complex"]
    data["prices"] = {"allow_unpriced": False}
    strict = Job(parse_job(data, path=Path("j.yaml")), path=Path("j.yaml"), text_sha256="")
    assert TierCosts.from_job(strict) is None
