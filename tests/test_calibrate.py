"""calibrate: a seeded sample, a bias search that meets its target, and the calibrated file."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from batchroute.classify import build_router
from batchroute.classify.calibrate import calibrate_router, read_sample
from batchroute.classify.evaluate import read_labelled
from batchroute.classify.learned import train_classifier
from batchroute.classify.model import load_model, save_model
from batchroute.cli import main
from batchroute.config import load_job
from batchroute.errors import JobError
from batchroute.exitcodes import ExitCode

LABELLED = Path(__file__).parent.parent / "sample_data" / "labelled" / "train.csv"
DEV = LABELLED.with_name("holdout.csv")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained model and an input file of 298 realistic prompts, shared by this module."""
    root = tmp_path_factory.mktemp("calibrate")
    prompts, tiers = read_labelled(LABELLED)
    save_model(train_classifier(prompts, tiers, seed=0), root / "router.json")
    with (root / "input.jsonl").open("w") as file:
        for i, prompt in enumerate(prompts):
            file.write(json.dumps({"id": f"r{i}", "prompt": prompt}) + "\n")
    return root


def write_job(workdir: Path, name: str, **routing: Any) -> Path:
    job = {
        "name": name,
        "input": {"path": str(workdir / "input.jsonl"), "id_column": "id"},
        "request": {"max_tokens": 400},
        "tiers": {"complex": "big", "standard": "mid", "structured": "mid", "bulk": "small"},
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15},
            "small": {"input_per_mtok": 0.25, "output_per_mtok": 1},
        },
        "routing": routing
        or {"classifier": {"kind": "model", "path": str(workdir / "router.json")}},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def complex_share(frame: pl.DataFrame) -> float:
    return float((frame["tier"] == "complex").mean() or 0.0)


def test_sample_is_seeded_and_counts_the_whole_input(workdir: Path) -> None:
    job = load_job(write_job(workdir, "seeded"))
    first, total = read_sample(job, rows=100, seed=3)
    again, _ = read_sample(job, rows=100, seed=3)
    other, _ = read_sample(job, rows=100, seed=4)
    assert total == 298 and first.height == 100
    assert first["id"].to_list() == again["id"].to_list()
    assert first["id"].to_list() != other["id"].to_list()


def test_max_complex_share_is_met_on_the_sample(workdir: Path) -> None:
    job = load_job(write_job(workdir, "share"))
    router = build_router(job)
    sample, total = read_sample(job, rows=150, seed=0)
    before = complex_share(router.classify(sample))
    assert before > 0.12  # the target below is a real change
    result = calibrate_router(router, sample, job=job, input_rows=total, max_complex_share=0.12)
    assert result.met
    assert result.bias["complex"] < 0
    # The model decides every row the rules leave (gate 0), so the bias alone meets the target.
    assert not result.gate_changed and result.min_confidence == 0.0
    assert result.router.classifier is not None
    assert result.router.classifier.tier_bias == result.bias
    assert complex_share(result.router.classify(sample)) <= 0.12
    after = result.after.filter(pl.col("tier") == "complex")["share"].item()
    assert after <= 0.12
    assert result.after["rows"].sum() == pytest.approx(total, abs=4)


def test_target_cost_is_met_and_penalises_pricier_tiers_more(workdir: Path) -> None:
    job = load_job(write_job(workdir, "cost"))
    router = build_router(job)
    sample, total = read_sample(job, rows=150, seed=1)
    baseline = calibrate_router(
        router, sample, job=job, input_rows=total, target_cost_usd=Decimal(1000)
    )
    assert baseline.met and all(v == 0 for v in baseline.bias.values())
    target = (baseline.cost_before_usd * Decimal("0.8")).quantize(Decimal("0.0001"))
    result = calibrate_router(router, sample, job=job, input_rows=total, target_cost_usd=target)
    assert result.met
    assert result.cost_after_usd <= target < result.cost_before_usd
    assert result.bias["complex"] < result.bias["standard"] < result.bias["bulk"] <= 0


def test_the_cost_calibrated_against_is_plans_forecast_checks_included(workdir: Path) -> None:
    """With checks on the answers, the cost a target is met against includes their forecast, as
    `plan`'s total does; the answers alone would understate what the run will spend."""
    path = write_job(workdir, "checked")
    data = yaml.safe_load(path.read_text())
    data["verify"] = {"default": ["not_truncated"], "expected_failure_rate": 0.25}
    path.write_text(yaml.safe_dump(data))
    job = load_job(path)
    sample, total = read_sample(job, rows=150, seed=1)
    result = calibrate_router(
        build_router(job), sample, job=job, input_rows=total, target_cost_usd=Decimal(1000)
    )
    answers = sum(result.before["cost_usd"].to_list(), Decimal(0))
    assert result.cost_before_usd == sum(result.before["forecast_cost_usd"].to_list(), Decimal(0))
    assert result.cost_before_usd > answers


def test_unreachable_target_is_reported_not_met(workdir: Path) -> None:
    job = load_job(write_job(workdir, "unreachable"))
    router = build_router(job)
    sample, total = read_sample(job, rows=80, seed=0)
    result = calibrate_router(
        router, sample, job=job, input_rows=total, target_cost_usd=Decimal("0.000001")
    )
    assert not result.met


def test_rules_only_job_cannot_be_calibrated(workdir: Path) -> None:
    job = load_job(write_job(workdir, "rules", classifier={"kind": "rules"}))
    sample, _ = read_sample(job, rows=10, seed=0)
    with pytest.raises(JobError, match="routing.classifier.*kind: model"):
        calibrate_router(build_router(job), sample, job=job, max_complex_share=0.1)


def test_calibrate_cli_prints_forecast_and_writes_a_model_the_job_can_use(workdir: Path) -> None:
    job_path = write_job(workdir, "cli")
    out = workdir / "calibrated.json"
    runner = CliRunner()
    args = ["calibrate", str(job_path), "--max-complex-share", "0.1", "--sample", "200"]
    args += ["--labelled", str(DEV), "--max-under-routing", "1"]
    result = runner.invoke(main, [*args, "--seed", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Forecast before calibration" in result.output
    assert "Forecast after calibration" in result.output
    assert "at the calibrated bias" in result.output and "under-routed" in result.output
    assert f"Wrote {out}" in result.output
    model = load_model(out)
    assert model.tier_bias["complex"] < 0
    calibrated_job = load_job(
        write_job(workdir, "uses", classifier={"kind": "model", "path": str(out)})
    )
    sample, _ = read_sample(calibrated_job, rows=200, seed=2)
    assert complex_share(build_router(calibrated_job).classify(sample)) <= 0.1


def test_calibrate_cli_exits_gate_and_writes_nothing_when_target_is_missed(
    workdir: Path,
) -> None:
    job_path = write_job(workdir, "missed")
    out = workdir / "never.json"
    result = CliRunner().invoke(
        main,
        ["calibrate", str(job_path), "--target-cost", "0.0000001", "--sample", "50"]
        + ["--labelled", str(DEV), "--out", str(out)],
    )
    assert result.exit_code == ExitCode.GATE
    assert "Target not met" in result.output
    assert not out.exists()


def test_calibrate_cli_refuses_a_bias_that_under_routes_past_the_gate(workdir: Path) -> None:
    """Squeezing complex to 8% meets the share, but under-routes the labelled complex prompts."""
    job_path = write_job(workdir, "squeezed")
    out = workdir / "squeezed.json"
    args = ["calibrate", str(job_path), "--max-complex-share", "0.08", "--sample", "150"]
    args += ["--labelled", str(DEV), "--out", str(out)]
    refused = CliRunner().invoke(main, [*args, "--max-under-routing", "0.05"])
    assert refused.exit_code == ExitCode.GATE, refused.output
    assert "Refused" in refused.output and "above --max-under-routing 5.0%" in refused.output
    assert not out.exists()
    allowed = CliRunner().invoke(main, [*args, "--max-under-routing", "1"])
    assert allowed.exit_code == 0, allowed.output
    assert out.exists()


def test_calibrate_cli_needs_exactly_one_target(workdir: Path) -> None:
    job_path = write_job(workdir, "none")
    result = CliRunner().invoke(main, ["calibrate", str(job_path), "--labelled", str(DEV)])
    assert result.exit_code == ExitCode.USAGE
    assert "exactly one of --target-cost and --max-complex-share" in result.output
