"""Figures finance can quote: repricing, savings on total spend, totals, trends by job and day."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from batchroute.config import Job, parse_job
from batchroute.pricing.prices import resolve_prices
from batchroute.report import write_reports
from batchroute.report.html import render_run_html, render_trend_html
from batchroute.report.terminal import format_usd, print_report
from batchroute.report.trend import daily_totals, read_runs
from batchroute.store.manifest import RunManifest, write_manifest
from tests.test_report_tables import MODELS, START, make_job, make_run


def record_run(run_dir: Path, job: Job) -> None:
    """A run.json saying the run's costs were recorded with the job's prices."""
    prices = resolve_prices(job)
    manifest = RunManifest.for_session(
        None,
        job_path=job.path,
        job_sha256=job.text_sha256,
        run_id="20261120T020000Z-abc123",
        started_at=START,
        price_source=prices.source,
        price_sha256=prices.sha256,
    )
    write_manifest(run_dir, manifest)


def dearer_opus() -> Job:
    """The same job with opus ten times dearer."""
    base = make_job()
    data = base.config.model_dump(mode="json", exclude_none=True)
    data["models"]["claude-opus-4-7"] = {**MODELS["claude-opus-4-7"], "input_per_mtok": 50}
    data["models"]["claude-opus-4-7"]["output_per_mtok"] = 250
    return Job(parse_job(data, path=base.path), path=base.path, text_sha256="1" * 64)


def test_report_with_other_prices_reprices_every_figure(tmp_path: Path) -> None:
    """Finding 4: actual costs are repriced with the counterfactuals, and the report says so."""
    job = make_run(tmp_path)
    record_run(tmp_path, job)
    recorded = write_reports(tmp_path, job=job, prices=resolve_prices(job))
    assert not recorded.repriced

    dear = dearer_opus()
    repriced = write_reports(tmp_path, job=dear, prices=resolve_prices(dear))
    opus = pl.col("model") == "claude-opus-4-7"
    before = recorded.cost_report.filter(opus).row(0, named=True)
    after = repriced.cost_report.filter(opus).row(0, named=True)
    assert after["cost_usd"] == before["cost_usd"] * 10  # a: 17,500 µ$ → 175,000 µ$
    assert (
        repriced.savings["strongest_cost_usd"][0] == recorded.savings["strongest_cost_usd"][0] * 10
    )
    assert repriced.repriced and set(repriced.cost_report["repriced"]) == {True}
    assert repriced.savings["price_sha256"][0] == resolve_prices(dear).sha256
    assert repriced.total_cost_usd == recorded.total_cost_usd + before["cost_usd"] * 9
    console = Console(record=True, width=160)
    print_report(repriced, console=console)
    assert "Repriced" in console.export_text()

    again = write_reports(tmp_path, job=job, prices=resolve_prices(job))  # the run's own prices
    assert not again.repriced
    assert again.cost_report.drop("repriced").equals(recorded.cost_report.drop("repriced"))


def test_headline_saving_is_on_total_spend_with_dollars(tmp_path: Path) -> None:
    """Finding 5: the saving counts failed (and superseded) spend, and shows its dollar figure."""
    job = make_run(tmp_path)
    summary = write_reports(tmp_path, job=job, prices=resolve_prices(job))
    s = summary.savings.row(0, named=True)
    assert s["total_cost_usd"] > s["actual_cost_usd"]  # row d and e paid for failed attempts
    assert s["savings_vs_baseline_usd"] == s["baseline_cost_usd"] - s["total_cost_usd"]
    assert s["savings_vs_baseline_pct"] == pytest.approx(
        float(s["savings_vs_baseline_usd"] / s["baseline_cost_usd"] * 100)
    )
    saved = s["strongest_cost_usd"] - s["total_cost_usd"]
    assert s["savings_vs_strongest_usd"] == saved
    assert s["savings_vs_strongest_pct"] == pytest.approx(
        float(saved / s["strongest_cost_usd"] * 100)
    )
    page = render_run_html(summary)
    baseline_saved = s["savings_vs_baseline_usd"]
    card = f"{format_usd(baseline_saved)} ({s['savings_vs_baseline_pct']:.1f}%)"
    assert "Saved on total spend" in page and card in page
    assert "Total spend (kept + superseded + failed)" in page
    assert "<td>total</td>" in page  # the cost table's total row
    total_row = re.search(r"<tr><td>total</td>.*?</tr>", page)
    assert total_row is not None and format_usd(s["total_cost_usd"]) in total_row.group(0)


def test_trend_groups_by_job_and_draws_days_as_days(tmp_path: Path) -> None:
    """Finding 7: two jobs on one day are two rows, and one day is not drawn with hourly ticks."""
    for name in ("nightly", "weekly"):
        job = make_run(tmp_path / name)
        data = job.config.model_dump(mode="json", exclude_none=True)
        renamed = Job(
            parse_job({**data, "name": name}, path=job.path), path=job.path, text_sha256=""
        )
        write_reports(tmp_path / name, job=renamed, prices=resolve_prices(renamed))
    daily = daily_totals(read_runs(tmp_path))
    assert daily.select("date", "job").rows() == [
        (START.date(), "nightly"),
        (START.date(), "weekly"),
    ]
    assert daily["total_cost_usd"].to_list() == [Decimal("0.0243455")] * 2
    page = render_trend_html(daily, folder=tmp_path)
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", page)
    assert "2026-11-20" in labels
    # a one-day trend has day ticks: no hours ("03:00"), months ("Jul") or bare years
    assert not [t for t in labels if re.fullmatch(r"\d{2}:\d{2}|[A-Z][a-z]{2}|\d{4}", t)]
    later = daily.with_columns(pl.col("date") + timedelta(days=2))
    assert "2026-11-22" in render_trend_html(pl.concat([daily, later]), folder=tmp_path)
