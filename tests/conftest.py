"""Shared fixtures: small jobs over generated prompts, run against the simulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from batchroute.config import Job, parse_job
from batchroute.dataset import open_dataset
from batchroute.errors import DatasetError
from batchroute.exitcodes import ExitCode

PROMPTS = [
    ("Refactor this payment service to remove the race condition in the retry loop.", None),
    ("Summarise the attached incident ticket for the weekly ops review.", None),
    ("Extract the customer name, order id and total from this email as JSON.", None),
    ("Add docstrings to every public function in utils/dates.py.", None),
    ("Explain the trade-offs between Kafka and SQS for our event bus.", None),
    ("Draft a polite reply to a customer asking about a delayed refund.", None),
    ("Parse this nginx log line and return the status code and path.", None),
    ("Translate all the UI strings in en.json into German.", None),
    ("What is the capital of Australia?", None),
    ("Rewrite this paragraph so it reads well for a non-technical audience.", "bulk"),
]


def sample_rows(count: int) -> list[dict[str, Any]]:
    """`count` rows cycling through a few realistic prompts, each made unique by its number."""
    rows = []
    for i in range(count):
        prompt, hint = PROMPTS[i % len(PROMPTS)]
        row: dict[str, Any] = {"id": f"r{i:04d}", "prompt": f"{prompt} (case {i})", "team": "data"}
        if hint is not None:
            row["tier"] = hint
        rows.append(row)
    return rows


def job_dict(input_path: Path, **overrides: Any) -> dict[str, Any]:
    """A job over `input_path` on the embedded simulator, with overrides merged at top level."""
    job: dict[str, Any] = {
        "name": "t",
        "input": {
            "path": str(input_path),
            "id_column": "id",
            "prompt_column": "prompt",
            "metadata_columns": ["team"],
        },
        "endpoint": {"base_url": "simulator", "api_key_env": "BR_TEST_KEY", "timeout_s": 10},
        "request": {"max_tokens": 64},
        "tiers": {
            "complex": "big",
            "standard": "mid",
            "structured": {
                "model": "mid",
                "request": {"params": {"response_format": {"type": "json_object"}}},
            },
            "bulk": "small",
        },
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25, "fallback": "mid"},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15, "fallback": "big"},
            "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1, "fallback": "mid"},
        },
        "baseline_model": "mid",
        "output": {"dir": "runs/{name}", "checkpoint_rows": 20},
        "retry": {"backoff_initial_s": 0.01, "backoff_max_s": 0.05},
    }
    for key, value in overrides.items():
        job[key] = value
    return job


@pytest.fixture(autouse=True)
def _private_response_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test's response cache lives in its own temporary directory, never the user's.

    Set through XDG_CACHE_HOME, so CLI subprocesses a test starts inherit it too.
    """
    root = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(root))
    return root / "batchroute" / "responses.sqlite3"


@pytest.fixture
def make_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write `rows` as JSONL and a job over them into tmp_path (the working directory)."""
    monkeypatch.chdir(tmp_path)

    def make(rows: list[dict[str, Any]] | None = None, **overrides: Any) -> Path:
        data = tmp_path / "prompts.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in (rows or sample_rows(40))))
        job_path = tmp_path / "job.yaml"
        job_path.write_text(yaml.safe_dump(job_dict(data, **overrides), sort_keys=False))
        return job_path

    return make


def dataset_job(path: Path, **input_settings: Any) -> Job:
    """A minimal job reading `path` with the given `input:` settings."""
    data = {
        "name": "t",
        "input": {"path": str(path), **input_settings},
        "tiers": {"standard": "m"},
        "models": {"m": {"input_per_mtok": 1, "output_per_mtok": 1}},
    }
    job_path = path.parent / "job.yaml"
    return Job(parse_job(data, path=job_path), path=job_path, text_sha256="0" * 64)


def read_all(job: Job, batch_rows: int = 10_000) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every batch of the job's input: its rows, and its rejects."""
    batches = list(open_dataset(job).batches(batch_rows=batch_rows))
    return pl.concat([b.rows for b in batches]), pl.concat([b.rejects for b in batches])


def dataset_error(job: Job) -> DatasetError:
    """The error checking the job's input raises (a bad-input one, exit 6)."""
    with pytest.raises(DatasetError) as info:
        open_dataset(job).check()
    assert info.value.exit_code == ExitCode.BAD_INPUT
    return info.value
