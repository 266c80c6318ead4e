"""`eval-classifier JOB --runs DIR...`: a run made on the simulator, replayed through a router.

The run's cheap model truncates half its answers, so some rows climb a tier and give labels.
The replay is checked against figures computed apart: the run's own tiers, the router applied to
the input directly, the forecast's per-tier prices, and `eval-classifier` on the same labels.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from batchroute.classify import build_router
from batchroute.classify.replay import replay_runs
from batchroute.classify.run_labels import labels_from_runs
from batchroute.cli import main
from batchroute.config import load_job
from batchroute.dataset import open_dataset
from batchroute.exitcodes import ExitCode
from batchroute.pricing.forecast import forecast_by_tier
from tests.conftest import sample_rows

JobFactory = Callable[..., Path]
ROWS = 60
FAULTS: dict[str, Any] = {"seed": 5, "models": {"small": {"truncate_rate": 0.5}}}
VERIFY: dict[str, Any] = {"default": ["not_truncated"], "max_escalations": 2}


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def past_run(make_job: JobFactory) -> Path:
    """A finished run of 60 rows (no tier hints) in runs/t; returns its job."""
    rows = [{k: v for k, v in row.items() if k != "tier"} for row in sample_rows(ROWS)]
    job = make_job(rows, simulator=FAULTS, verify=VERIFY, request={"max_tokens": 200})
    code, _, err = run_cli("run", str(job), "--no-cache")
    assert code == 0, err
    results = pl.read_parquet("runs/t/results.parquet")
    assert (results["escalation_depth"] > 0).sum() > 0, "some rows climbed, giving labels"
    return job


def _variant(job: Path, name: str, **routing: Any) -> Path:
    """The same job with other routing settings, in another file."""
    spec = yaml.safe_load(job.read_text())
    spec["routing"] = {**spec.get("routing", {}), **routing}
    path = job.with_name(name)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_replaying_a_run_through_its_own_router_moves_nothing(past_run: Path) -> None:
    job = load_job(past_run)
    replay = replay_runs([Path("runs/t")], job=job, router=build_router(job))
    assert (replay.rows, replay.moved, replay.missing_rows) == (ROWS, 0, 0)
    assert replay.cost_change_usd == 0 < replay.cost_then_usd
    assert replay.labelled is not None and replay.labelled.rows > 0


def test_a_changed_router_is_scored_against_figures_computed_apart(past_run: Path) -> None:
    cheap = _variant(past_run, "cheap.yaml", under_routing_penalty=0)
    job = load_job(cheap)
    router = build_router(job)
    replay = replay_runs([Path("runs/t")], job=job, router=router)

    then = pl.read_parquet("runs/t/results.parquet").select("id", then="tier")
    inputs = pl.concat(batch.rows for batch in open_dataset(job).batches())
    now = router.classify(inputs).select("id", "prompt", now="tier")
    both = then.join(now, on="id")
    moved = both.filter(pl.col("then") != pl.col("now")).height
    assert replay.moved == moved > 0
    assert replay.rows == ROWS
    pairs = dict(
        both.group_by("then", "now").len().select(pl.concat_str("then", "now"), "len").iter_rows()
    )
    assert {a + b: n for a, b, n, *_ in replay.moves.iter_rows()} == pairs
    # both routings priced by the forecast's own per-tier table
    cost_then = forecast_by_tier(both.rename({"then": "tier"}), job=job)["cost_usd"].sum()
    cost_now = forecast_by_tier(both.rename({"now": "tier"}), job=job)["cost_usd"].sum()
    assert (replay.cost_then_usd, replay.cost_now_usd) == (cost_then, cost_now)
    assert replay.cost_change_usd < 0, "no under-routing penalty: cheaper tiers"

    # the label scores are eval-classifier's on the same labels
    labels = labels_from_runs([Path("runs/t")])
    labels.write_csv("labels.csv")
    code, labelled_out, _ = run_cli("eval-classifier", "labels.csv", "--job", str(cheap))
    assert code == 0
    code, out, err = run_cli("eval-classifier", str(cheap), "--runs", "runs/t")
    assert code == 0, err
    assert f"{moved} rows" in out and "would move tier" in out
    accuracy = re.search(r"Accuracy [0-9.]+% \([0-9,/]+ rows\)", labelled_out)
    assert accuracy is not None and accuracy.group(0) in out
    change = cost_now - cost_then
    assert f"change of -${-change.quantize(Decimal('0.0001')):,}" in out


def test_the_accuracy_gate_and_usage_errors(past_run: Path) -> None:
    code, out, _ = run_cli(
        "eval-classifier", str(past_run), "--runs", "runs/t", "--min-accuracy", "1"
    )
    assert code in (0, int(ExitCode.GATE))
    assert ("PASS" in out) == (code == 0)
    for args, message in [
        ((str(past_run), "--runs"), "--runs needs run directories"),
        ((str(past_run), "runs/t"), "to replay run directories"),
        ((str(past_run), "--runs", "runs/t", "--job", str(past_run)), "drop --job"),
        (("labels.csv",), "--job is required"),
    ]:
        code, _, err = run_cli("eval-classifier", *args)
        assert code == 2 and message in err, (args, err)


def test_a_run_directory_that_is_not_a_run_is_a_clear_error(past_run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli("eval-classifier", str(past_run), "--runs", str(tmp_path / "empty"))
    assert code != 0 and "Traceback" not in out + err
    assert "has no results.parquet" in err


def test_replay_as_cron_calls_it(past_run: Path) -> None:
    """Once as a real subprocess: the command a weekly job would run."""
    done = subprocess.run(
        [sys.executable, "-m", "batchroute", "eval-classifier", str(past_run), "--runs", "runs/t"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "0 rows (0.0%) would move tier" in done.stdout
