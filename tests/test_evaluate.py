"""eval-classifier: accuracy, confusion matrix and misroute cost against hand-computed figures."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from batchroute.classify import build_router
from batchroute.classify.evaluate import evaluate_router, read_labelled
from batchroute.cli import main
from batchroute.config import load_job
from batchroute.errors import DatasetError
from batchroute.exitcodes import ExitCode

# (prompt, label); the comment is what the default rules (kind: rules) route it to.
EXAMPLES = [
    ("Refactor this module", "complex"),  # complex
    ("Refactor the parser", "standard"),  # complex: over-routed
    ("Say hello to the team", "bulk"),  # standard: over-routed
    ("Write unit tests for this", "bulk"),  # bulk
    ("Return the rows as JSON", "structured"),  # structured
    ("Summarise this memo", "complex"),  # standard: under-routed
    ("What is the capital of Peru?", "standard"),  # standard
    ("Extract the names from this list", "bulk"),  # structured: under-routed (no such capability)
]


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    job = {
        "name": "evaluation",
        "input": {"path": str(tmp_path / "in.jsonl")},
        "request": {"max_tokens": 100},
        "tiers": {"complex": "big", "standard": "mid", "structured": "mid2", "bulk": "small"},
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15},
            "mid2": {"input_per_mtok": 2, "output_per_mtok": 10},
            "small": {"input_per_mtok": 0.25, "output_per_mtok": 1},
        },
        "routing": {"classifier": {"kind": "rules"}},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    path = tmp_path / "labelled.csv"
    pl.DataFrame(EXAMPLES, schema=["prompt", "tier"], orient="row").write_csv(path)
    return path


def test_confusion_matrix_and_scores_match_a_hand_computed_example(
    job_file: Path, labelled: Path
) -> None:
    job = load_job(job_file)
    prompts, labels = read_labelled(labelled)
    result = evaluate_router(build_router(job), prompts, labels, job=job)
    assert result.tiers == ("complex", "standard", "structured", "bulk")
    assert result.confusion == (
        (1, 1, 0, 0),
        (1, 1, 0, 0),
        (0, 0, 1, 0),
        (0, 1, 1, 1),
    )
    assert result.accuracy == pytest.approx(4 / 8)
    scores = {s.tier: (s.precision, s.recall) for s in result.per_tier}
    assert scores == {
        "complex": (0.5, 0.5),
        "standard": (pytest.approx(1 / 3), 0.5),
        "structured": (0.5, 1.0),
        "bulk": (1.0, pytest.approx(1 / 3)),
    }
    # Row 2: 12 input tokens, 100 output; complex (5/25) instead of standard (3/15):
    #   (12*5 + 100*25 - 12*3 - 100*15) / 1e6 = 0.001024
    # Row 3: 13 input tokens; standard (3/15) instead of bulk (0.25/1):
    #   (13*3 + 100*15 - 13*0.25 - 100*1) / 1e6 = 0.00143575
    assert result.over_routed_rows == 2
    assert result.over_routing_cost_usd == Decimal("0.00245975")
    # Row 6 (complex work on standard) and row 8 (bulk work on structured, which only does
    # structured work) are under-routed, whatever the prices.
    assert result.under_routed_rows == 2
    assert (result.under_routed_share, result.over_routed_share) == (0.25, 0.25)
    assert result.sources == {"default": 3, "rule": 5}


def test_eval_cli_prints_tables_and_gates_on_accuracy(job_file: Path, labelled: Path) -> None:
    runner = CliRunner()
    args = ["eval-classifier", str(labelled), "--job", str(job_file)]
    ok = runner.invoke(main, [*args, "--min-accuracy", "0.5"])
    assert ok.exit_code == 0, ok.output
    assert "Accuracy 50.0% (4/8 rows); under-routed 25.0% (2); over-routed 25.0% (2)" in ok.output
    assert "Confusion matrix" in ok.output
    assert "$0.0025 lost" in ok.output
    assert "under-routed (to a tier that cannot): 2 rows" in ok.output
    gated = runner.invoke(main, [*args, "--min-accuracy", "0.9"])
    assert gated.exit_code == ExitCode.GATE
    assert "FAIL: accuracy 50.0% < 90.0%" in gated.output


def test_eval_cli_evaluates_a_trained_model_file(
    job_file: Path, labelled: Path, tmp_path: Path
) -> None:
    """`--model` scores the given file (after the job's rules), not the job's rules alone."""
    train = tmp_path / "train.csv"
    rows = [(p, t) for p, t in EXAMPLES] * 2
    pl.DataFrame(rows, schema=["prompt", "tier"], orient="row").write_csv(train)
    model = tmp_path / "m.json"
    trained = CliRunner().invoke(main, ["train", str(train), "--out", str(model)])
    assert trained.exit_code == 0, trained.output
    args = ["eval-classifier", str(labelled), "--job", str(job_file), "--model", str(model)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"with {model}" in result.output
    assert "classifier: 3" in result.output  # the rows no rule decides
    both = CliRunner().invoke(main, [*args, "--rules-only"])
    assert both.exit_code == 2
    assert "at most one of --model and --rules-only" in both.output


def test_eval_cli_runs_as_a_subprocess_the_way_ci_calls_it(job_file: Path, labelled: Path) -> None:
    cmd = [sys.executable, "-m", "batchroute", "eval-classifier", str(labelled)]
    done = subprocess.run(
        [*cmd, "--job", str(job_file), "--min-accuracy", "0.99"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == ExitCode.GATE, done.stderr
    assert "Per tier" in done.stdout


def test_labels_of_unmapped_tiers_count_as_standard(tmp_path: Path) -> None:
    job_data = {
        "name": "two",
        "input": {"path": "in.jsonl"},
        "tiers": {"complex": "big", "standard": "mid"},
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15},
        },
        "routing": {"classifier": {"kind": "rules"}},
    }
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(job_data))
    job = load_job(path)
    result = evaluate_router(
        build_router(job), ["Add docstrings", "Refactor it"], ["bulk", "complex"], job=job
    )
    assert result.tiers == ("complex", "standard")
    assert result.confusion == ((1, 0), (0, 1))


def test_labelled_file_errors_say_what_to_fix(tmp_path: Path) -> None:
    wrong_columns = tmp_path / "a.csv"
    wrong_columns.write_text("text,label\nhello,standard\n")
    with pytest.raises(DatasetError, match="needs columns prompt,tier"):
        read_labelled(wrong_columns)
    bad_tier = tmp_path / "b.csv"
    bad_tier.write_text("prompt,tier\nhello,standard\nhi,premium\n")
    with pytest.raises(DatasetError, match=r"line 3: 1 rows have .* not one of"):
        read_labelled(bad_tier)
    with pytest.raises(DatasetError, match="no such labelled file"):
        read_labelled(tmp_path / "missing.csv")


def test_under_and_over_routing_follow_capabilities_not_price(job_file: Path) -> None:
    """Bulk work sent to structured is under-routed; standard work sent to complex is over."""
    job = load_job(job_file)
    prompts = ["Extract the names from this list", "Refactor the parser", "Say hi", "Refactor it"]
    labels = ["bulk", "standard", "complex", "complex"]
    result = evaluate_router(build_router(job), prompts, labels, job=job)
    assert (result.under_routed_rows, result.over_routed_rows) == (2, 1)
    assert (result.under_routed_share, result.over_routed_share) == (0.5, 0.25)
