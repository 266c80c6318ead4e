import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batchroute.config import Job, load_job, parse_job
from batchroute.errors import PriceError
from batchroute.pricing.litellm import parse_litellm
from batchroute.pricing.prices import (
    ModelPrice,
    diff_prices,
    load_default_table,
    load_price_file,
    resolve_prices,
)

DATA = Path(__file__).parent.parent / "data"


def make_job(models: dict[str, Any], *, prices: dict[str, Any] | None = None) -> Job:
    data: dict[str, Any] = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "tiers": {"standard": next(iter(models))},
        "models": models,
    }
    if prices is not None:
        data["prices"] = prices
    path = Path("jobs/t.yaml")
    return Job(parse_job(data, path=path), path=path, text_sha256="0" * 64)


def test_default_table_is_dated_and_has_the_sketch_models() -> None:
    table, as_of = load_default_table()
    assert as_of.startswith("2026-11-")
    for model in ("claude-opus-4-7", "claude-sonnet-4-6", "gpt-5.5", "deepseek-chat"):
        assert table[model].input_per_mtok > 0
    assert table["deepseek-chat"].output_per_mtok == Decimal("1.10")


def test_inline_price_wins_over_the_default_table() -> None:
    job = make_job({"deepseek-chat": {"input_per_mtok": 0.5, "output_per_mtok": 2}})
    table = resolve_prices(job)
    price = table.get("deepseek-chat")
    assert price is not None
    assert price.input_per_mtok == Decimal("0.5")
    assert price.cached_input_per_mtok is None  # a whole inline price does not mix in the table
    assert table.source == "job file"


def test_partial_inline_fields_adjust_the_table_entry() -> None:
    job = make_job({"gpt-5.5": {"cached_input_per_mtok": 0.1}})
    price = resolve_prices(job).get("gpt-5.5")
    assert price == ModelPrice(
        Decimal("3"), Decimal("12"), Decimal("0.1"), None, Decimal("0.5"), 400000
    )
    assert resolve_prices(job).source == "job file + batchroute default table 2026-11-01"


def test_default_table_found_by_api_model() -> None:
    job = make_job({"cheap": {"api_model": "deepseek-chat"}})
    price = resolve_prices(job).get("cheap")
    assert price is not None and price.input_per_mtok == Decimal("0.27")
    assert resolve_prices(job).source.startswith("batchroute default table")


def test_price_file_wins_over_default_table(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text(
        "as_of: 2026-10-01\nmodels:\n  deepseek-chat: {input_per_mtok: 0.1, output_per_mtok: 0.2}\n"
    )
    job = make_job({"deepseek-chat": {}}, prices={"file": str(file)})
    table = resolve_prices(job)
    assert table.get("deepseek-chat") == ModelPrice(Decimal("0.1"), Decimal("0.2"))
    assert table.source == f"prices.file {file} 2026-10-01"


def test_sha256_changes_with_prices_and_is_stable() -> None:
    a = resolve_prices(make_job({"m": {"input_per_mtok": 1, "output_per_mtok": 2}}))
    b = resolve_prices(make_job({"m": {"input_per_mtok": "1.000", "output_per_mtok": 2}}))
    c = resolve_prices(make_job({"m": {"input_per_mtok": 1, "output_per_mtok": 3}}))
    assert a.sha256 == b.sha256 != c.sha256
    assert len(a.sha256) == 64


def test_unpriced_model_is_refused_with_what_to_do() -> None:
    with pytest.raises(PriceError) as caught:
        resolve_prices(make_job({"my-local-model": {}}))
    message = str(caught.value)
    assert message.startswith("jobs/t.yaml: models.my-local-model:")
    assert "'my-local-model'" in message
    assert "prices.allow_unpriced: true" in message and "prices.file" in message


def test_unpriced_model_allowed_is_listed_not_priced() -> None:
    job = make_job({"my-local-model": {}}, prices={"allow_unpriced": True})
    table = resolve_prices(job)
    assert table.unpriced == frozenset({"my-local-model"})
    assert table.get("my-local-model") is None
    assert table.source == "none"


def test_resolving_prices_refuses_unpriced_model(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "name: t\ninput: {path: in.jsonl}\ntiers: {standard: mystery}\nmodels: {mystery: {}}\n"
    )
    job = load_job(job_file)  # loading prices nothing: the commands that price resolve them
    with pytest.raises(PriceError, match=r"job\.yaml: models\.mystery: no price for 'mystery'"):
        resolve_prices(job)


def test_config_does_not_import_pricing() -> None:
    """Finding 2: the config ↔ prices ↔ litellm cycle is gone; loading a job prices nothing."""
    code = (
        "import sys, batchroute.config as c; "
        "print(sorted(m for m in sys.modules if m.startswith('batchroute.pricing')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_tier_may_name_a_model_only_the_shipped_table_prices(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "name: t\ninput: {path: in.jsonl}\n"
        "tiers: {standard: deepseek-chat, complex: {model: gpt-5.5}}\n"
    )
    job = load_job(job_file)
    assert set(job.config.models) == {"deepseek-chat", "gpt-5.5"}  # the dispatcher's fleet
    table = resolve_prices(job)
    price = table.get("deepseek-chat")
    assert price is not None and price.output_per_mtok == Decimal("1.10")
    assert table.source.startswith("batchroute default table")


def test_litellm_importer_converts_per_token_to_per_mtok() -> None:
    prices, source = load_price_file(DATA / "litellm_small.json")
    assert source.endswith("(LiteLLM format)")
    assert set(prices) == {"gpt-4o", "o3-mini", "deepseek/deepseek-chat"}  # no image model
    assert prices["gpt-4o"] == ModelPrice(
        input_per_mtok=Decimal("2.5"),
        output_per_mtok=Decimal("10"),
        cached_input_per_mtok=Decimal("1.25"),
        batch_discount=Decimal("0.5"),
        context_window=128000,
    )
    assert prices["o3-mini"].reasoning_per_mtok == Decimal("4.4")
    assert prices["deepseek/deepseek-chat"].cached_input_per_mtok == Decimal("0.07")


def test_litellm_file_prices_a_job_by_short_name(tmp_path: Path) -> None:
    job = make_job({"deepseek-chat": {}}, prices={"file": str(DATA / "litellm_small.json")})
    table = resolve_prices(job)
    price = table.get("deepseek-chat")
    assert price is not None and price.input_per_mtok == Decimal("0.27")
    assert "LiteLLM" in table.source


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input_cost_per_token": "cheap", "output_cost_per_token": 1e-6}, "input_cost_per_token"),
        ({"input_cost_per_token": 1e-6, "output_cost_per_token": -1e-6}, "0 or more"),
        ({"input_cost_per_token": [1], "output_cost_per_token": 1e-6}, "cost per token"),
        ({"input_cost_per_token": 1e-15, "output_cost_per_token": 1e-6}, "smallest price"),
    ],
)
def test_litellm_importer_names_the_bad_entry(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(PriceError, match=message) as caught:
        parse_litellm({"bad-model": entry}, path="litellm.json")
    assert str(caught.value).startswith("litellm.json: bad-model.")


def test_litellm_importer_refuses_a_file_with_no_prices(tmp_path: Path) -> None:
    file = tmp_path / "empty.json"
    file.write_text(json.dumps({"dall-e-3": {"mode": "image_generation"}}))
    with pytest.raises(PriceError, match="no model with both"):
        load_price_file(file)


def test_own_table_errors_name_the_key(tmp_path: Path) -> None:
    file = tmp_path / "p.json"
    file.write_text(json.dumps({"models": {"x": {"input_per_mtok": 1, "ouput_per_mtok": 2}}}))
    with pytest.raises(PriceError, match=r"models\.x\.ouput_per_mtok: is not a price field"):
        load_price_file(file)


def test_missing_price_file_is_an_error() -> None:
    job = make_job({"gpt-5.5": {}}, prices={"file": "/nonexistent/p.json"})
    with pytest.raises(PriceError, match="no such price file"):
        resolve_prices(job)


def test_diff_prices_names_each_field_that_differs() -> None:
    job = make_job({"gpt-4o": {"input_per_mtok": 3, "output_per_mtok": 10}})
    other, _ = load_price_file(DATA / "litellm_small.json")
    differences = diff_prices(resolve_prices(job), other)
    assert ("gpt-4o", "input_per_mtok", Decimal(3), Decimal("2.5")) in differences
    assert ("gpt-4o", "cached_input_per_mtok", Decimal(3), Decimal("1.25")) in differences
    assert not any(field == "output_per_mtok" for _, field, _, _ in differences)


def test_each_price_says_where_it_came_from() -> None:
    models = {
        "mine": {"input_per_mtok": 1, "output_per_mtok": 2},
        "gpt-5.5": {},
        "deepseek-chat": {"output_per_mtok": 2},  # adjusts the shipped price
    }
    assert resolve_prices(make_job(models)).sources == {
        "mine": "job file",
        "gpt-5.5": "batchroute default table 2026-11-01",
        "deepseek-chat": "job file + batchroute default table 2026-11-01",
    }
