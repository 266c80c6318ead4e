"""Verify and escalate through `batchroute run`: the columns, the money, the cap, resume.

Each run goes through the CLI in-process to the embedded simulator over loopback, with quality
faults on the cheap model, so some bulk answers fail their checks and climb a tier.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA
from tests.conftest import sample_rows
from tests.engines.test_resume import _crashed_journal_from

JobFactory = Callable[..., Path]

QUALITY_FAULTS: dict[str, Any] = {
    "seed": 5,
    "models": {"small": {"truncate_rate": 0.4, "refusal_rate": 0.1}},
}
REQUEST = {"max_tokens": 400}
VERIFY: dict[str, Any] = {"default": ["not_truncated", "not_refusal"], "max_escalations": 2}


JUDGED_MODELS = {
    "big": {"input_per_mtok": 5, "output_per_mtok": 25, "fallback": "mid"},
    "mid": {"input_per_mtok": 3, "output_per_mtok": 15, "fallback": "big"},
    "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1, "fallback": "mid"},
    "grader": {"input_per_mtok": 1, "output_per_mtok": 4},
}
"""Three tiers' models and a judge, each falling back to another."""


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def bulk_rows(count: int) -> list[dict[str, Any]]:
    return [{**row, "tier": "bulk"} for row in sample_rows(count)]


def test_escalations_are_recorded_in_results_and_attempts(make_job: JobFactory) -> None:
    job = make_job(bulk_rows(60), simulator=QUALITY_FAULTS, verify=VERIFY, request=REQUEST)
    code, _, err = run_cli("run", str(job))
    assert code == 0, err
    results = pl.read_parquet("runs/t/results.parquet")
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    assert results.columns[: len(RESULT_SCHEMA)] == RESULT_SCHEMA.names()
    assert attempts.columns == ATTEMPT_SCHEMA.names()
    assert (results["status"] == "ok").all() and results["verified"].all()
    escalated = results.filter(pl.col("escalation_depth") > 0)
    assert 10 <= escalated.height < 60, "about 46% of small's answers fail"
    assert (escalated["escalated_from"] == "bulk").all()
    assert set(escalated["answered_tier"]) <= {"standard", "complex"}
    assert escalated["verify_failures"].str.starts_with("bulk/small: ").all()
    kept = results.filter(pl.col("escalation_depth") == 0)
    assert kept["verify_failures"].null_count() == kept.height == 60 - escalated.height
    # every rejected answer is an attempt judged failed, against the row that paid for it
    rejected = attempts.filter(pl.col("verify") == "failed")
    assert rejected.height == escalated.height
    assert (rejected["action"] == "escalate").all()
    assert rejected["error_type"].to_list() == ["verification_failed"] * rejected.height
    assert results["attempts"].sum() == attempts.height


def test_escalation_cost_reconciles_exactly_with_the_attempts(make_job: JobFactory) -> None:
    job = make_job(bulk_rows(60), simulator=QUALITY_FAULTS, verify=VERIFY, request=REQUEST)
    code, out, _ = run_cli("run", str(job))
    assert code == 0
    results = pl.read_parquet("runs/t/results.parquet")
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    spend = results["cost_usd"].sum() + results["failed_cost_usd"].sum()
    assert spend == attempts["cost_usd"].sum()  # exact Decimal, not approximately
    rejected_usd = attempts.filter(pl.col("verify") == "failed")["cost_usd"].sum()
    assert rejected_usd > 0
    assert results["failed_cost_usd"].sum() == rejected_usd  # no other failures here
    climbed_usd = attempts.filter(pl.col("escalation_depth") > 0)["cost_usd"].sum()
    escalated = results.filter(pl.col("escalation_depth") > 0)
    assert escalated["cost_usd"].sum() == climbed_usd  # the escalated answers' own cost
    savings = pl.read_parquet("runs/t/savings.parquet").row(0, named=True)
    assert savings["escalated_rows"] == escalated.height
    assert savings["verify_rejected_cost_usd"] == rejected_usd
    assert savings["escalation_cost_usd"] == climbed_usd
    assert savings["checks_and_escalations_cost_usd"] == rejected_usd + climbed_usd
    assert savings["total_cost_usd"] == spend
    report = run_cli("report", "runs/t")[1]
    assert "after paying" in report and "for checks and escalations" in report


def test_the_budget_cap_holds_with_escalations(make_job: JobFactory) -> None:
    cap = Decimal("0.05")
    job = make_job(bulk_rows(200), simulator=QUALITY_FAULTS, verify=VERIFY, request=REQUEST)
    code, _, err = run_cli("run", str(job), "--max-cost", str(cap))
    assert code != 0 or "budget" in err
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    results = pl.read_parquet("runs/t/results.parquet")
    assert attempts["cost_usd"].sum() <= cap
    assert (results["status"] == "skipped_budget").any()
    assert attempts.filter(pl.col("escalation_depth") > 0).height > 0, "escalations were paid"
    assert results.height == 200


def test_resume_after_a_crash_keeps_escalations_and_rebuys_no_verified_answer(
    make_job: JobFactory,
) -> None:
    job = make_job(bulk_rows(40), simulator=QUALITY_FAULTS, verify=VERIFY, request=REQUEST)
    assert run_cli("run", str(job))[0] == 0
    first = pl.read_parquet("runs/t/results.parquet")
    assert (first["escalation_depth"] > 0).sum() > 0
    whole = _crashed_journal_from(Path("runs/t"), keep_whole=20)
    code, _, err = run_cli("run", str(job))
    assert code == 0, err
    session = json.loads(Path("runs/t/run.json").read_text())["sessions"][-1]
    assert (session["reused_rows"], session["sent_rows"]) == (whole, 40 - whole)
    again = pl.read_parquet("runs/t/results.parquet")
    columns = ["id", "content", "verified", "escalated_from", "escalation_depth", "answered_tier"]
    assert again.select(columns).equals(first.select(columns))


def test_changing_the_checks_rebuys_the_rows_they_judge(make_job: JobFactory) -> None:
    job = make_job(bulk_rows(20), simulator=QUALITY_FAULTS, verify=VERIFY, request=REQUEST)
    assert run_cli("run", str(job))[0] == 0
    make_job(
        bulk_rows(20),
        simulator=QUALITY_FAULTS,
        verify={"default": ["not_truncated"]},
        request=REQUEST,
    )
    assert run_cli("run", str(job))[0] == 0
    session = json.loads(Path("runs/t/run.json").read_text())["sessions"][-1]
    assert session["sent_rows"] == 20


def test_judge_cost_is_reported_apart_and_reconciles_with_the_attempts(
    make_job: JobFactory,
) -> None:
    simulator = {
        "seed": 5,
        "models": {
            "small": {"truncate_rate": 0.2},
            "grader": {"judge": {"fail_rates": {"small": 0.3}, "garbage_rate": 0.05}},
        },
    }
    models = JUDGED_MODELS
    verify = {
        "default": ["not_truncated", {"check": "judge", "rubric": "Answers the question."}],
        "judge": {"model": "grader"},
    }
    job = make_job(
        bulk_rows(60), simulator=simulator, verify=verify, request=REQUEST, models=models
    )
    code, _, err = run_cli("run", str(job))
    assert code in (0, 1), err
    results = pl.read_parquet("runs/t/results.parquet")
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    judged = attempts.filter(pl.col("judge"))
    assert judged.height > 60 and (judged["model"] == "grader").all()
    assert results["attempts"].sum() == attempts.height
    spend = results["cost_usd"].sum() + results["failed_cost_usd"].sum()
    assert spend == attempts["cost_usd"].sum()
    savings = pl.read_parquet("runs/t/savings.parquet").row(0, named=True)
    assert savings["judge_cost_usd"] == judged["cost_usd"].sum() > 0
    assert savings["total_cost_usd"] == spend
    overhead = attempts.filter(
        pl.col("judge") | (pl.col("verify") == "failed") | (pl.col("escalation_depth") > 0)
    )
    assert savings["checks_and_escalations_cost_usd"] == overhead["cost_usd"].sum()
    assert (results["escalation_depth"] > 0).sum() > 0


def test_train_from_runs_labels_escalated_rows_with_the_tier_that_passed(
    make_job: JobFactory, tmp_path: Path
) -> None:
    from batchroute.classify.run_labels import split_of

    rows = bulk_rows(60)
    job = make_job(rows, simulator=QUALITY_FAULTS, verify=VERIFY, request=REQUEST)
    assert run_cli("run", str(job))[0] == 0
    results = pl.read_parquet("runs/t/results.parquet")
    escalated = results.filter((pl.col("escalation_depth") > 0) & pl.col("verified"))
    assert escalated.height > 0
    prompts = {row["id"]: row["prompt"] for row in rows}
    pairs = zip(escalated["id"], escalated["answered_tier"], strict=True)
    expected = {prompts[i]: t for i, t in pairs}
    labelled = tmp_path / "labelled" / "train.csv"
    labelled.parent.mkdir()
    base = pl.read_csv(Path(__file__).parents[2] / "sample_data/labelled/train.csv").head(40)
    held_out = next(iter(expected))  # a prompt already labelled elsewhere is never added again
    pl.DataFrame({"prompt": [held_out], "tier": ["complex"]}).write_csv(labelled.parent / "x.csv")
    base.write_csv(labelled)

    code, out, err = run_cli(
        "train", str(labelled), "--out", "m.joblib", "--from-runs", "runs/t", "--cv-folds", "0"
    )
    assert code == 0, err
    found: dict[str, str] = {}
    for split in ("train", "test", "holdout"):
        frame = pl.read_csv(labelled.parent / f"from-runs-{split}.csv")
        for prompt, tier in frame.iter_rows():
            assert split_of(prompt) == split
            found[prompt] = tier
    del expected[held_out]
    assert found == expected
    assert Path("m.joblib").is_file()
    # a second extraction adds nothing twice
    again_args = ("--from-runs", "runs/t", "--cv-folds", "0")
    assert run_cli("train", str(labelled), "--out", "m.joblib", *again_args)[0] == 0
    again = sum(
        pl.read_csv(labelled.parent / f"from-runs-{s}.csv").height
        for s in ("train", "test", "holdout")
    )
    assert again == len(expected)


def test_a_bad_verify_key_is_a_clear_error_from_the_cli_not_a_traceback(
    make_job: JobFactory,
) -> None:
    tiers = {"standard": {"model": "mid", "escalate_to": "bulk"}, "bulk": "small"}
    job = make_job(bulk_rows(3), tiers=tiers, verify=VERIFY)
    for command in ("validate", "plan", "run"):
        code, out, err = run_cli(command, str(job))
        assert code != 0
        assert "Traceback" not in out + err
        assert "tiers.standard.escalate_to: the escalation path" in err, command


def test_a_report_repriced_with_another_job_keeps_the_forecast_of_the_checks(
    make_job: JobFactory,
) -> None:
    """`report RUN --job DEARER.yaml` prices the plan again, its judge and escalations too: the
    forecast it shows is the one `plan DEARER.yaml` makes for the same rows."""
    import yaml

    models = JUDGED_MODELS
    verify = {
        "default": ["not_truncated", {"check": "judge", "rubric": "Answers the question."}],
        "judge": {"model": "grader"},
        "expected_failure_rate": 0.3,
    }
    simulator = {"seed": 5, "models": {"grader": {"judge": {"fail_rates": {"small": 0.3}}}}}
    job = make_job(
        bulk_rows(20), simulator=simulator, verify=verify, request=REQUEST, models=models
    )
    assert run_cli("run", str(job))[0] == 0
    spec = yaml.safe_load(job.read_text())
    spec["models"]["grader"]["input_per_mtok"] = 10  # a dearer judge
    spec["models"]["mid"]["output_per_mtok"] = 30  # dearer escalations
    dearer = job.with_name("dearer.yaml")
    dearer.write_text(yaml.safe_dump(spec, sort_keys=False))

    code, out, err = run_cli("plan", str(dearer), "--format", "json")
    assert code == 0, err
    forecast = Decimal(json.loads(out)["totals"]["forecast_cost_usd"])
    assert run_cli("report", "runs/t", "--job", str(dearer))[0] == 0
    savings = pl.read_parquet("runs/t/savings.parquet").row(0, named=True)
    assert savings["repriced"]
    assert savings["forecast_cost_usd"] == forecast
