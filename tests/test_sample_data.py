"""The shipped sample prompts and example jobs: complete, consistent, and loadable as they are."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
import yaml

from batchroute.config import TIERS, JobConfig, RoutingConfig, load_job, parse_job

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
EXAMPLES = ROOT / "jobs" / "examples"
EXAMPLE_NAMES = ["openai", "openrouter", "litellm-proxy", "ollama", "vllm"]
REHEARSAL_NAMES = ["batch"]
"""Examples that rehearse a feature offline on the simulator, rather than name a real endpoint."""
COLUMNS = ["id", "prompt", "team", "source", "tier", "json_output"]


@pytest.fixture(scope="module")
def jsonl() -> pl.DataFrame:
    return pl.read_ndjson(SAMPLE / "prompts.jsonl")


@pytest.fixture(scope="module")
def csv() -> pl.DataFrame:
    return pl.read_csv(SAMPLE / "prompts.csv", infer_schema=False)


def _example(name: str) -> tuple[Path, JobConfig]:
    path = EXAMPLES / f"{name}.yaml"
    return path, parse_job(yaml.safe_load(path.read_text(encoding="utf-8")), path=path)


def test_jsonl_has_enough_rows_with_unique_ids_and_prompts(jsonl: pl.DataFrame) -> None:
    assert jsonl.columns == COLUMNS
    assert jsonl.height >= 200
    assert jsonl["id"].null_count() == 0
    assert jsonl["id"].n_unique() == jsonl.height
    assert jsonl["id"].str.contains(r"^req-\d{4}$").all()
    assert jsonl["prompt"].null_count() == 0
    assert (jsonl["prompt"].str.strip_chars().str.len_chars() > 0).all()
    assert jsonl["prompt"].n_unique() == jsonl.height


def test_csv_holds_the_same_rows_as_jsonl(jsonl: pl.DataFrame, csv: pl.DataFrame) -> None:
    """Ids and prompts match exactly, in order; the hint columns match as text."""
    assert csv.columns == COLUMNS
    assert csv.select("id", "prompt").equals(jsonl.select("id", "prompt"))
    as_text = jsonl.with_columns(
        pl.col("json_output").cast(pl.String).str.to_lowercase(),
    )
    assert csv.select("team", "source", "tier", "json_output").equals(
        as_text.select("team", "source", "tier", "json_output")
    )


def test_csv_quoting_is_exercised(jsonl: pl.DataFrame) -> None:
    """Enough prompts carry newlines, quotes and commas that a naive CSV reader would break."""
    prompts = jsonl["prompt"]
    assert prompts.str.contains("\n", literal=True).sum() >= 50
    assert prompts.str.contains('"', literal=True).sum() >= 20
    assert prompts.str.contains(",", literal=True).sum() >= 100
    assert prompts.str.contains(r"[^\x00-\x7f]").sum() >= 3


def test_hints_name_valid_tiers_on_a_minority_of_rows(jsonl: pl.DataFrame) -> None:
    hints = jsonl["tier"].drop_nulls()
    assert set(hints.unique()) == set(TIERS)
    assert jsonl["json_output"].drop_nulls().unique().to_list() == [True]
    hinted = jsonl.filter(pl.col("tier").is_not_null() | pl.col("json_output").is_not_null())
    assert 0.10 <= hinted.height / jsonl.height <= 0.20


def test_metadata_columns_are_always_filled(jsonl: pl.DataFrame) -> None:
    assert jsonl["team"].null_count() == 0
    assert jsonl["source"].null_count() == 0
    assert jsonl["team"].n_unique() >= 5
    assert jsonl["source"].n_unique() >= 4


def test_a_few_prompts_exceed_the_long_prompt_threshold(jsonl: pl.DataFrame) -> None:
    words = jsonl["prompt"].str.count_matches(r"\S+")
    long_rows = (words > RoutingConfig().long_prompt_words).sum()
    assert 2 <= long_rows <= 5


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_job_parses_and_loads(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each example validates as written, and every model in it has a price."""
    path, config = _example(name)
    assert config.name
    assert not config.endpoint.is_simulator
    assert config.endpoint.base_url.startswith(("https://", "http://localhost:"))
    assert (ROOT / config.input.path).is_file()
    assert set(config.input.metadata_columns) <= set(COLUMNS)
    monkeypatch.chdir(ROOT)
    job = load_job(path)
    assert job.config == config


def test_examples_cover_every_example_file() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(
        EXAMPLE_NAMES + REHEARSAL_NAMES
    )


def test_batch_example_rehearses_the_bulk_tier_in_batch_mode_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    config = load_job(EXAMPLES / "batch.yaml").config
    assert config.endpoint.is_simulator
    modes = {tier: config.tier_mode(tier) for tier in config.tiers}
    assert modes == {
        "complex": "online",
        "standard": "online",
        "structured": "online",
        "bulk": "batch",
    }


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_takes_its_key_from_the_environment(name: str) -> None:
    """No example holds a key; the hosted ones name the variable that does."""
    path, config = _example(name)
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"\b(sk-[A-Za-z0-9]{8,}|api_key\s*:)", text)
    if config.endpoint.base_url.startswith("https://"):
        assert config.endpoint.api_key_env is not None
        assert config.endpoint.api_key_env.endswith("_API_KEY")


def test_openrouter_example_maps_models_to_provider_names() -> None:
    _, config = _example("openrouter")
    assert config.endpoint.base_url == "https://openrouter.ai/api/v1"
    assert all("/" in config.api_model(name) for name in config.models)


def test_ollama_example_is_keyless_and_free() -> None:
    _, config = _example("ollama")
    assert config.endpoint.base_url == "http://localhost:11434/v1"
    assert config.endpoint.api_key_env is None
    for model in config.models.values():
        assert model.input_per_mtok == 0
        assert model.output_per_mtok == 0


def test_vllm_example_sends_each_model_to_its_own_server() -> None:
    _, config = _example("vllm")
    urls = {config.endpoint_for(name).base_url for name in config.models}
    assert urls == {"http://localhost:8000/v1", "http://localhost:8001/v1"}


def test_openai_example_sends_reasoning_models_max_completion_tokens() -> None:
    """OpenAI refuses `max_tokens` for the gpt-5 family, so no tier may send it."""
    _, config = _example("openai")
    for tier in config.tiers:
        body = config.tier_request(tier).body_fields()
        assert "max_tokens" not in body
        assert "temperature" not in body
        assert body["max_completion_tokens"] > 0
    assert config.tier_request("structured").wants_json
    assert "json" in (config.input.system_prompt or "").lower()
