"""Tests for batchroute.dispatch.params: what known models accept, and what batchroute sends."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.dispatch.params import adapt_body, rejection, rules_for

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "model", ["gpt-5", "gpt-5-mini", "o1", "o3-mini", "o4-mini", "openai/gpt-5-nano"]
)
def test_reasoning_models_are_known(model: str) -> None:
    rules = rules_for(model)
    assert rules is not None and rules.max_tokens_field == "max_completion_tokens"


@pytest.mark.parametrize(
    "model", ["gpt-4o", "gpt-4.1-mini", "claude-opus-4-7", "gpt-5-chat-latest"]
)
def test_other_models_are_left_alone(model: str) -> None:
    fields = {"max_tokens": 10, "temperature": 0}
    assert rules_for(model) is None
    assert adapt_body(model, fields) == (fields, [])


def test_adapt_body_translates_and_drops_what_the_model_refuses() -> None:
    body, changes = adapt_body(
        "gpt-5-mini", {"max_tokens": 10, "temperature": 0.2, "top_p": 1, "logprobs": True}
    )
    assert body == {"max_completion_tokens": 10, "top_p": 1}
    assert [c.param for c in changes] == ["max_tokens", "temperature", "logprobs"]
    assert rejection("gpt-5-mini", body) is None
    kept, none = adapt_body("gpt-5-mini", {"temperature": 1})
    assert kept == {"temperature": 1} and none == []


def test_rejection_words_it_as_openai_does() -> None:
    refused = rejection("o3", {"temperature": 0.0})
    assert refused is not None
    assert (refused.param, refused.code) == ("temperature", "unsupported_value")
    assert refused.message == (
        "Unsupported value: 'temperature' does not support 0 with this model. "
        "Only the default (1) value is supported."
    )


def test_the_sample_job_runs_unchanged_against_the_strict_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jobs/tests.yaml asks gpt-5-mini for temperature 0: validate and plan say what is sent
    instead, and the run answers every row from a simulator that refuses temperature 0."""
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    shutil.copytree(REPO / "sample_data", tmp_path / "sample_data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    runner = CliRunner()
    for command in (["validate", "jobs/tests.yaml"], ["plan", "jobs/tests.yaml"]):
        result = runner.invoke(main, command, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "gpt-5-mini accepts only the default temperature (1)" in result.stdout
        assert "sent as max_completion_tokens" in result.stdout
    result = runner.invoke(main, ["run", "jobs/tests.yaml"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    results = pl.read_parquet(next(tmp_path.glob("runs/tests/*/results.parquet")))
    assert (results["status"] == "ok").all()
    assert results.filter(pl.col("model_used") == "gpt-5-mini").height > 0
