import json
import re
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from test_report_tables import START, make_run

from batchroute.cli import main
from batchroute.pricing.prices import resolve_prices
from batchroute.report import write_reports
from batchroute.report.html import _rates_chart, render_run_html, render_trend_html, write_html
from batchroute.report.tables import load_summary
from batchroute.report.trend import daily_totals, read_runs
from tests.conftest import job_dict, sample_rows


def test_run_html_has_its_four_charts_and_no_external_reference(tmp_path: Path) -> None:
    job = make_run(tmp_path, with_plan=True)
    summary = write_reports(tmp_path, job=job, prices=resolve_prices(job), budget_hit=True)
    page = render_run_html(summary)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 4
    for title in (
        "Tier distribution",
        "Cost by tier and model",
        "Fallback and failure rates",
        "Spend against one model for every row",
    ):
        assert title in page
    assert "Cost (USD)" in page and "Rows" in page  # labelled axes, as real text
    assert "http" not in page.lower()
    assert not re.search(r"<script|<link|@import|src=|url\((?!#)", page)
    assert "budget cap was hit" in page
    assert resolve_prices(job).sha256 in page


def test_trend_html_charts_cost_and_savings_per_day(tmp_path: Path) -> None:
    for i in range(3):
        run_dir = tmp_path / f"run{i}"
        job = make_run(run_dir, start=START + timedelta(days=i))
        write_reports(run_dir, job=job, prices=resolve_prices(job))
    page = render_trend_html(daily_totals(read_runs(tmp_path)), folder=tmp_path)
    assert page.count("<svg") == 1
    assert "Spend per day and job" in page
    assert "http" not in page.lower()
    path = write_html(page, tmp_path / "out" / "trend.html")
    assert path.read_text(encoding="utf-8") == page


def test_html_of_a_capped_run_says_so_and_shows_failed_cost_under_the_failing_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18 finding 5, on a real run: the banner, and failed cost under the failing model."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sample_rows(40)))
    spec = job_dict(data, simulator={"models": {"small": {"faults": {"server_error": 1.0}}}})
    spec["retry"] = {"backoff_initial_s": 0.01, "backoff_max_s": 0.02, "max_retries_per_model": 1}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(main, ["run", "job.yaml", "--max-cost", "0.004"])
    assert result.exit_code == 3, result.output
    page = render_run_html(load_summary(tmp_path / "runs" / "t"))
    assert "The budget cap stopped this run" in page
    assert "rows were not sent" in page and "Not sent" in page
    section = page[page.index("Attempts by model") :]
    assert "<td>small</td>" in section  # the model whose attempts failed
    assert "under the model that failed" in section


def test_an_all_zero_rate_chart_gets_a_full_percent_axis(tmp_path: Path) -> None:
    job = make_run(tmp_path, with_plan=True)
    summary = write_reports(tmp_path, job=job, prices=resolve_prices(job))
    zero = summary.tier_distribution.with_columns(
        failed=pl.lit(0, pl.Int64), fallback_rows=pl.lit(0, pl.Int64)
    )
    svg = _rates_chart(zero)
    ticks = re.findall(r"<text[^>]*>([0-9.]+)</text>", svg)
    assert ticks[-1] == "100", ticks  # not 0-1.2%, which suggests failures that are not there
