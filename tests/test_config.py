"""The job file: validation at load, key paths in errors, env expansion, chains."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchroute.config import load_job
from batchroute.errors import JobError, PriceError
from batchroute.pricing.prices import resolve_prices

JOB = """
name: nightly
input: {path: prompts.jsonl}
endpoint: {base_url: simulator}
tiers: {complex: big, standard: mid, bulk: small}
models:
  big:   {input_per_mtok: 5, output_per_mtok: 25, fallback: mid}
  mid:   {input_per_mtok: 3, output_per_mtok: 15, fallback: big}
  small: {input_per_mtok: 0.27, output_per_mtok: 1.1, fallback: mid}
baseline_model: mid
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_valid_job_loads_with_defaults(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, JOB))
    assert job.name == "nightly"
    assert job.config.retry.max_attempts_per_row == 8
    assert job.config.tier("complex").model == "big"
    assert len(job.text_sha256) == 64


def test_fallback_cycle_is_legal_and_chain_visits_each_model_once(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, JOB))
    assert job.config.chain("complex") == ("big", "mid")
    assert job.config.chain("bulk") == ("small", "mid", "big")


def test_fallback_to_unknown_model_is_refused_for_want_of_a_price(tmp_path: Path) -> None:
    path = write(tmp_path, JOB.replace("25, fallback: mid}", "25, fallback: gpt-9}"))
    job = load_job(path)  # a fallback, like a tier, may name a model with no models: entry
    assert job.config.chain("complex") == ("big", "gpt-9")
    with pytest.raises(PriceError) as err:
        resolve_prices(job)
    message = str(err.value)
    assert str(path) in message and "no price for 'gpt-9'" in message
    assert err.value.exit_code == 6


def test_a_fallback_may_name_a_model_only_the_shipped_table_prices(tmp_path: Path) -> None:
    path = write(tmp_path, JOB.replace("25, fallback: mid}", "25, fallback: deepseek-chat}"))
    job = load_job(path)
    assert job.config.chain("complex") == ("big", "deepseek-chat")
    assert job.config.models["deepseek-chat"].fallback is None
    price = resolve_prices(job).get("deepseek-chat")
    assert price is not None and price.output_per_mtok > 0


def test_unknown_key_is_refused_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, JOB.replace("endpoint: {base_url: simulator}", "endpoint: {base_ur: x}"))
    with pytest.raises(JobError, match=r"endpoint\.base_ur: is not a setting batchroute knows"):
        load_job(path)


def test_tier_naming_an_unpriced_unlisted_model_is_refused(tmp_path: Path) -> None:
    """A tier may name a model without a `models:` entry, but it must be priced somewhere."""
    path = write(tmp_path, JOB.replace("bulk: small}", "bulk: tiny}"))
    job = load_job(path)
    with pytest.raises(PriceError, match=r"models\.tiny: no price for 'tiny'"):
        resolve_prices(job)


def test_standard_tier_is_required(tmp_path: Path) -> None:
    path = write(tmp_path, JOB.replace("standard: mid, ", ""))
    with pytest.raises(JobError, match="must map the 'standard' tier"):
        load_job(path)


def test_env_vars_expand_and_missing_ones_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BR_INPUT", "from-env.jsonl")
    job = load_job(write(tmp_path, JOB.replace("prompts.jsonl", "${BR_INPUT}")))
    assert job.config.input.path == Path("from-env.jsonl")
    monkeypatch.delenv("BR_NOPE", raising=False)
    with pytest.raises(JobError, match=r"line 3 uses \$\{BR_NOPE\}"):
        load_job(write(tmp_path, JOB.replace("prompts.jsonl", "${BR_NOPE}")))
    job = load_job(write(tmp_path, JOB.replace("prompts.jsonl", "${BR_NOPE:-d.jsonl}")))
    assert job.config.input.path == Path("d.jsonl")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"job.yaml: line 2: is not valid YAML"):
        load_job(write(tmp_path, "name: x\ninput: a: b\n"))


def test_missing_job_file_is_a_job_error(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="no such job file"):
        load_job(tmp_path / "nope.yaml")


def test_tier_request_overrides_merge_params(tmp_path: Path) -> None:
    text = JOB.replace(
        "tiers: {complex: big, standard: mid, bulk: small}",
        "request: {max_tokens: 100, params: {seed: 1}}\n"
        "tiers:\n  complex: big\n  standard: mid\n  bulk: small\n"
        "  structured: {model: mid, request: {params: {response_format: {type: json_object}}}}",
    )
    job = load_job(write(tmp_path, text))
    structured = job.config.tier_request("structured")
    assert structured.wants_json
    assert structured.body_fields() == {
        "seed": 1,
        "response_format": {"type": "json_object"},
        "max_tokens": 100,
    }
    assert not job.config.tier_request("standard").wants_json


def test_warn_overrun_pct_is_validated_at_load(tmp_path: Path) -> None:
    assert load_job(write(tmp_path, JOB)).config.run.warn_overrun_pct == 25
    job = load_job(write(tmp_path, JOB + "run: {warn_overrun_pct: 50}\n"))
    assert job.config.run.warn_overrun_pct == 50
    with pytest.raises(JobError, match=r"run\.warn_overrun_pct"):
        load_job(write(tmp_path, JOB + "run: {warn_overrun_pct: -5}\n"))
