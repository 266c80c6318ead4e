import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from test_report_tables import make_run

from batchroute.cli import main
from batchroute.exitcodes import ExitCode
from batchroute.pricing.prices import resolve_prices
from batchroute.report import write_reports


def test_report_prints_the_summary_and_writes_html(tmp_path: Path) -> None:
    job = make_run(tmp_path / "run")
    write_reports(tmp_path / "run", job=job, prices=resolve_prices(job))
    html = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert "Cost by tier and model" in result.output
    assert "$0.0235" in result.output  # the answered rows' total
    assert "claude-opus-4-7" in result.output
    assert html.read_text(encoding="utf-8").count("<svg") == 4


def test_report_on_a_folder_prints_per_day_totals(tmp_path: Path) -> None:
    for name in ("a", "b"):
        job = make_run(tmp_path / "nightly" / name)
        write_reports(tmp_path / "nightly" / name, job=job, prices=resolve_prices(job))
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nightly")])
    assert result.exit_code == 0, result.output
    assert "Per-day totals" in result.output and "2026-11-20" in result.output
    assert "$0.0487" in result.output  # two runs of $0.0243455


def test_report_rebuilds_from_results_with_a_job(tmp_path: Path) -> None:
    make_run(tmp_path)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "name: nightly\ninput: {path: in.jsonl}\n"
        "tiers: {complex: claude-opus-4-7, standard: claude-sonnet-4-6,"
        " structured: gpt-5.5, bulk: deepseek-chat}\n"
        "models: {claude-opus-4-7: {}, claude-sonnet-4-6: {}, gpt-5.5: {}, deepseek-chat: {}}\n"
    )
    missing = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert missing.exit_code == ExitCode.OUTPUT
    assert "--job JOB.yaml" in missing.output
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--job", str(job_file)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "savings.parquet").is_file()
    assert "batchroute default table" in result.output


def test_report_on_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert result.exit_code == ExitCode.OUTPUT
    assert "no such run directory" in result.output
    assert "Traceback" not in result.output


def test_report_runs_as_a_subprocess_like_cron(tmp_path: Path) -> None:
    job = make_run(tmp_path)
    write_reports(tmp_path, job=job, prices=resolve_prices(job))
    done = subprocess.run(
        [sys.executable, "-m", "batchroute", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "160"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Routing against one model for every row" in done.stdout
