"""Bad and nasty input through `batchroute run` on the embedded simulator (issue 5)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.pricing.tokens import count_message_tokens
from batchroute.schema import ErrorType, Status
from batchroute.sim.answers import answer_for, prompt_digest
from tests.conftest import job_dict, sample_rows

JobFactory = Callable[..., Path]

RUN_DIR = Path("runs/t")


def run_cli(job: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["run", str(job), "--quiet"], catch_exceptions=False)
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stdout, result.stderr


def write_job(path: Path, **input_settings: Any) -> Path:
    """A simulator job over `path` (written beside it), with `input:` settings merged in."""
    spec = job_dict(path)
    spec["input"] = {**spec["input"], **input_settings}
    job = path.parent / "job.yaml"
    job.write_text(yaml.safe_dump(spec, sort_keys=False))
    return job


def assert_reached_simulator_intact(results: pl.DataFrame, prompts: dict[str, str]) -> None:
    """Each row's usage and answer are what the simulator gives for exactly its original prompt.

    The simulator counts input tokens with `count_message_tokens` and picks its answer by a hash
    of the model and the messages' text, so a single changed character shows up here.
    """
    json_format = {"type": "json_object"}
    for row in results.iter_rows(named=True):
        messages = [{"role": "user", "content": prompts[row["id"]]}]
        assert row["input_tokens"] == count_message_tokens(messages), row["id"]
        response_format = json_format if row["tier"] == "structured" else None
        full = answer_for(
            prompt_digest(row["model_used"], messages), response_format=response_format
        )
        assert row["content"] and full.startswith(row["content"]), row["id"]


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("prompts.jsonl", "", "is empty: it has no rows"),
        ("prompts.csv", "id,prompt,team\r\n", "has no rows: only a header"),
    ],
)
def test_empty_input_exits_6_and_leaves_no_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: str, says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    path.write_text(data)
    code, out, err = run_cli(write_job(path))
    assert code == 6, (out, err)
    assert err.strip() == f"batchroute: error: {path}: {says} (point input.path at the data)"
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "job.yaml"])


def test_skip_sets_malformed_lines_aside_and_the_counts_reconcile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rows = sample_rows(20)
    lines = [json.dumps(row) for row in rows]
    lines[6] = '{"id": "r0006", "prompt": "cut off in the mid'
    lines[15] = '"just a string"'
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    job = write_job(path, on_invalid_row="skip")
    code, out, err = run_cli(job)
    assert code == 0, (out, err)
    results = pl.read_parquet(RUN_DIR / "results.parquet")
    rejects = pl.read_parquet(RUN_DIR / "rejects.parquet")
    assert results.height + rejects.height == 20
    kept = [r["id"] for i, r in enumerate(rows) if i not in (6, 15)]
    assert results["id"].to_list() == kept
    assert (results["status"] == Status.OK).all()
    assert rejects["line"].to_list() == [7, 16]
    assert "not valid JSON" in rejects["reason"][0]
    assert "not a JSON object" in rejects["reason"][1]
    assert rejects["raw"].to_list() == [lines[6], lines[15]]


def test_empty_prompt_and_unknown_tier_hint_fail_without_being_sent(make_job: JobFactory) -> None:
    rows = sample_rows(12)
    rows[2]["prompt"] = ""
    rows[8]["tier"] = "gold"
    code, out, err = run_cli(make_job(rows))
    assert code == 1, (out, err)
    results = pl.read_parquet(RUN_DIR / "results.parquet")
    assert results.height == 12
    bad = results.filter(pl.col("id").is_in(["r0002", "r0008"])).sort("id")
    assert bad["status"].to_list() == [Status.FAILED] * 2
    assert bad["error_type"].to_list() == [ErrorType.INVALID_ROW] * 2
    assert bad["error_message"][0] == "prompt is empty"
    assert bad["error_message"][1].startswith("tier hint 'gold' names no tier of this job")
    assert bad["attempts"].to_list() == [0, 0]
    others = results.filter(~pl.col("id").is_in(["r0002", "r0008"]))
    assert (others["status"] == Status.OK).all() and others.height == 10
    attempts = pl.read_parquet(RUN_DIR / "attempts.parquet")
    assert attempts.height == 10
    assert not attempts["id"].is_in(["r0002", "r0008"]).any()


NASTY: list[dict[str, str]] = [
    {"id": "n1", "prompt": 'He said "hi, there", then left', "owner": "ann", "note": "a,b,c"},
    {"id": "n2", "prompt": "line one\nline two\n\nline four", "owner": "", "note": "x"},
    {"id": "n3", "prompt": "windows\r\nline endings\r\n", "owner": "bo", "note": ""},
    {"id": "n4-😀", "prompt": "emoji 😀🎉 and accents: café, naïve", "owner": "çé", "note": '""'},
    {"id": "n5", "prompt": "long " + "lorem ipsum, " * 3846, "owner": "z", "note": "'single'"},
    {"id": "n6", "prompt": " leading and trailing spaces ", "owner": "", "note": ""},
    {
        "id": "007",
        "prompt": '"quoted from the start", not at the end',
        "owner": "k",
        "note": ",\n,",
    },
]


def test_nasty_csv_round_trips_every_field_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert len(NASTY[4]["prompt"]) >= 50_000
    path = tmp_path / "nasty.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["id", "prompt", "owner", "note"])
        writer.writeheader()
        writer.writerows(NASTY)
    code, out, err = run_cli(write_job(path, metadata_columns=["owner", "note"]))
    assert code == 0, (out, err)
    results = pl.read_parquet(RUN_DIR / "results.parquet")
    assert results["id"].to_list() == [r["id"] for r in NASTY]
    # csv.writer writes an empty string as an empty unquoted field, which reads back as null
    assert results["owner"].to_list() == [r["owner"] or None for r in NASTY]
    assert results["note"].to_list() == [r["note"] or None for r in NASTY]
    assert (results["status"] == Status.OK).all()
    assert_reached_simulator_intact(results, {r["id"]: r["prompt"] for r in NASTY})


def test_huge_prompt_is_classified_and_sent_like_any_other(make_job: JobFactory) -> None:
    rows = sample_rows(6)
    huge = "".join(f"line {i}: GET /api/v2/orders?page={i} 200 12ms\n" for i in range(7500))
    assert len(huge) >= 300_000
    rows[3]["prompt"] = huge
    code, out, err = run_cli(make_job(rows))
    assert code == 0, (out, err)
    results = pl.read_parquet(RUN_DIR / "results.parquet")
    row = results.row(3, named=True)
    assert row["status"] == Status.OK and row["attempts"] == 1
    # The default router's model reads the whole prompt (long_prompt is a rules-only rule).
    assert row["tier_source"] == "classifier" and row["matched_signal"] == "classifier"
    assert row["tier"] in {"complex", "standard", "structured", "bulk"}
    assert_reached_simulator_intact(results, {r["id"]: r["prompt"] for r in rows})
    assert json.loads(Path(RUN_DIR / "run.json").read_text())["counts"]["ok"] == 6
