import re
from datetime import timedelta
from pathlib import Path

from test_report_tables import START, make_run

from batchroute.pricing.prices import resolve_prices
from batchroute.report import write_reports
from batchroute.report.html import render_run_html, render_trend_html, write_html
from batchroute.report.trend import daily_totals, read_runs


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
