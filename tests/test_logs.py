"""Logs for machines: one JSON event per stderr line, typed, with figures as fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.logs import configure_logging
from tests.conftest import sample_rows

SLOW = {"default": {"latency_ms": 60}}
SLOW_MODELS = {
    "big": {"input_per_mtok": 5, "output_per_mtok": 25, "max_concurrency": 4},
    "mid": {"input_per_mtok": 3, "output_per_mtok": 15, "max_concurrency": 4},
    "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1, "max_concurrency": 4},
}


def run(job: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )


def events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as JSON (fails the test on the first line that is not)."""
    return [json.loads(line) for line in stderr.splitlines()]


def test_json_log_of_a_real_run_parses_line_by_line_as_typed_events(
    make_job: Callable[..., Path],
) -> None:
    """The crontab line's `>> nightly.jsonl 2>&1` file: JSON on every line, nothing else."""
    rows = sample_rows(60)
    job = make_job(rows, simulator=SLOW, models=SLOW_MODELS, run={"progress_interval_s": 0.2})
    proc = run(job, "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", "stdout gets nothing unless asked"
    entries = events(proc.stderr)
    run_id = json.loads(Path("runs/t/run.json").read_text())["run_id"]
    assert all(entry["run_id"] == run_id for entry in entries)
    assert all({"timestamp", "level", "severity_text", "event"} <= set(e) for e in entries)
    kinds = [e["event"] for e in entries]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    progress = [e for e in entries if e["event"] == "progress"]
    assert progress, "a progress event every progress_interval_s when not on a terminal"
    for event in progress:
        for field in ("done", "total", "failed", "in_flight", "queued", "rows_per_s", "eta_s"):
            assert field in event, field
        assert isinstance(event["done"], int) and event["total"] == 60
        # in flight = sent to the provider: never above the models' max_concurrency (3 x 4)
        assert event["in_flight"] <= 12, event
    assert any(event["queued"] > 0 for event in progress), "rows wait behind the limits"
    finished = entries[-1]
    assert finished["exit_code"] == 0 and finished["counts"]["ok"] == 60
    assert finished["run_dir"].endswith("runs/t")
    assert Decimal(finished["cost_usd"]) > 0 and Decimal(finished["forecast_cost_usd"]) > 0
    for row in rows:
        assert row["prompt"] not in proc.stderr


def test_json_log_in_process_names_rejected_lines_and_errors(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    """A skipped broken line is a `rows_rejected` event; a job error is an `error` event."""
    job = make_job(sample_rows(10), input={**_input(tmp_path), "on_invalid_row": "skip"})
    with (tmp_path / "prompts.jsonl").open("a") as handle:
        handle.write("{not json\n")
    result = CliRunner().invoke(main, ["run", str(job), "--log-format", "json"])
    assert result.exit_code == 0, result.output
    entries = events(result.stderr)
    rejected = [e for e in entries if e["event"] == "rows_rejected"]
    assert rejected and rejected[0]["rows"] == 1
    assert rejected[0]["path"].endswith("rejects.parquet")
    assert entries[-1]["event"] == "run_finished" and entries[-1]["rejected_rows"] == 1
    assert json.loads(Path("runs/t/run.json").read_text())["rejected_rows"] == 1

    broken = CliRunner().invoke(main, ["run", "missing.yaml", "--log-format", "json"])
    assert broken.exit_code == 6
    (error,) = events(broken.stderr)
    assert error["event"] == "error" and error["exit_code"] == 6


def _input(tmp_path: Path) -> dict[str, Any]:
    return {
        "path": str(tmp_path / "prompts.jsonl"),
        "id_column": "id",
        "prompt_column": "prompt",
        "metadata_columns": ["team"],
    }


def test_text_summary_names_rejected_lines(make_job: Callable[..., Path], tmp_path: Path) -> None:
    job = make_job(sample_rows(10), input={**_input(tmp_path), "on_invalid_row": "skip"})
    with (tmp_path / "prompts.jsonl").open("a") as handle:
        handle.write("{not json\n")
    result = CliRunner().invoke(main, ["run", str(job)])
    assert result.exit_code == 0, result.output
    assert "1 input lines were rejected" in result.stdout
    assert "rejects.parquet" in result.stdout


def test_quiet_prints_no_tables_only_warnings_and_the_closing_lines(
    make_job: Callable[..., Path],
) -> None:
    job = make_job(
        sample_rows(30), simulator=SLOW, models=SLOW_MODELS, run={"progress_interval_s": 0.2}
    )
    proc = run(job, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "exit 0" in proc.stdout
    assert "Cost by tier" not in proc.stdout and "rows by status" not in proc.stdout


def test_a_library_warning_is_a_json_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format="json")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library complains", UserWarning, stacklevel=1)
    finally:
        configure_logging(log_format="text")
    (line,) = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert event["event"] == "warning" and "a library complains" in event["message"]


def test_spend_past_the_forecast_is_named_in_log_summary_run_json_and_html(
    make_job: Callable[..., Path],
) -> None:
    """The bulk model is gone tonight: its rows fall back to a dearer model, past the forecast."""
    job = make_job(
        sample_rows(30),
        simulator={"models": {"small": {"not_found": True}}},
        run={"warn_overrun_pct": 0},
    )
    json_run = CliRunner().invoke(main, ["run", str(job), "--log-format", "json", "--fresh"])
    assert json_run.exit_code == 0, json_run.output
    warned = [e for e in events(json_run.stderr) if e.get("reason") == "over_forecast"]
    assert warned and Decimal(warned[0]["cost_usd"]) > Decimal(warned[0]["forecast_cost_usd"])
    assert "fallback model" in warned[0]["message"]
    (finished,) = [e for e in events(json_run.stderr) if e["event"] == "run_finished"]
    assert any("small is gone for this run" in w for w in finished["warnings"])
    assert warned[0]["message"] in finished["warnings"]
    text_run = CliRunner().invoke(main, ["run", str(job), "--fresh", "--no-cache"])
    assert "Over the forecast:" in text_run.stdout
    assert "Warning: model small is gone for this run" in text_run.stdout
    assert "Warning: over the forecast: spend" in text_run.stdout
    run_json = max(Path("runs").glob("**/run.json"), key=lambda p: p.stat().st_mtime)
    recorded = json.loads(run_json.read_text())["warnings"]
    assert len(recorded) == 3 and "small is gone for this run" in recorded[0]
    assert recorded[1].startswith("spend is running past the forecast")  # mid-run, once
    assert recorded[2].startswith("over the forecast: spend")  # the whole run, at its end
    report = CliRunner().invoke(main, ["report", str(run_json.parent)])
    assert "Warned during the run: model small is gone" in report.stdout
    html = CliRunner().invoke(main, ["report", "--job", str(job), "--html", "r.html"])
    assert html.exit_code == 0, html.output
    page = Path("r.html").read_text()
    assert "Over the forecast: spend" in page
    assert "Warned during the run: model small is gone for this run" in page


def test_spend_within_the_threshold_is_no_warning(make_job: Callable[..., Path]) -> None:
    """Past the forecast, but by less than run.warn_overrun_pct: reported, not warned."""
    job = make_job(
        sample_rows(30),
        simulator={"models": {"small": {"not_found": True}}},
        run={"warn_overrun_pct": 1000},
    )
    json_run = CliRunner().invoke(main, ["run", str(job), "--log-format", "json"])
    assert json_run.exit_code == 0, json_run.output
    assert not [e for e in events(json_run.stderr) if e.get("reason") == "over_forecast"]
    (finished,) = [e for e in events(json_run.stderr) if e["event"] == "run_finished"]
    assert Decimal(finished["cost_usd"]) > Decimal(finished["forecast_cost_usd"])
    assert len(finished["warnings"]) == 1 and "small is gone" in finished["warnings"][0]


def test_quiet_json_log_still_records_the_start_and_end(make_job: Callable[..., Path]) -> None:
    job = make_job(sample_rows(10), run={"progress_interval_s": 0.05})
    result = CliRunner().invoke(main, ["run", str(job), "--log-format", "json", "--quiet"])
    assert result.exit_code == 0, result.output
    kinds = [e["event"] for e in events(result.stderr)]
    assert kinds == ["run_started", "run_finished"]
