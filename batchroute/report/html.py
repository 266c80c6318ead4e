"""One self-contained HTML page per run (or per folder of runs), with inline SVG charts.

Charts are drawn by matplotlib on `Figure` objects (no pyplot state, no GUI backend) and inlined
as SVG text, stripped of the XML prologue and namespace URLs that HTML5 does not need, so the page
opens offline and references no external script, font, stylesheet or URL. Colours are the
Okabe-Ito palette on white, axes are labelled, and text is real text, so the page prints well.
"""

from __future__ import annotations

import html
import io
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import polars as pl

from batchroute.errors import OutputError
from batchroute.report.cache import cache_saving_text
from batchroute.report.notes import (
    caveats,
    forecast_overrun,
    format_usd,
    recorded_warnings,
    spend_breakdown,
)
from batchroute.report.tables import ReportSummary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["render_run_html", "render_trend_html", "write_html"]

_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_TIER_COLOURS = {
    "complex": "#D55E00",
    "standard": "#0072B2",
    "structured": "#009E73",
    "bulk": "#E69F00",
}
_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "axes.axisbelow": True,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
}
_SVG_PROLOGUE = re.compile(r"\A.*?(?=<svg)", re.DOTALL)
_SVG_NAMESPACES = re.compile(r'\s+xmlns(:xlink)?="[^"]*"')
_SVG_SIZE = re.compile(r'<svg([^>]*?)\swidth="[^"]*"\s+height="[^"]*"')

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #111;
       background: #fff; max-width: 980px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
.meta { color: #555; font-size: 0.9em; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 0.9em; min-width: 9em; }
.card b { display: block; font-size: 1.3em; }
.warn { border-left: 4px solid #D55E00; padding: 0.3em 0.8em; background: #fff5ee; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
figure { margin: 1em 0; page-break-inside: avoid; } svg { width: 100%; height: auto; }
@media print { body { margin: 0; max-width: none; } }
"""


@contextmanager
def _figure(width: float, height: float, salt: str) -> Iterator[tuple[Figure, Axes]]:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(cast(Any, {**_RC, "svg.hashsalt": salt})):
        figure = Figure(figsize=(width, height), layout="constrained")
        yield figure, figure.add_subplot()


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(
        buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None}
    )
    text = _SVG_PROLOGUE.sub("", buffer.getvalue())
    text = _SVG_NAMESPACES.sub("", text)
    return _SVG_SIZE.sub(r"<svg\1", text, count=1).strip()


def _money(values: Sequence[Any]) -> list[float]:
    """Decimal dollars as floats, for drawing only."""
    return [float(v) if v is not None else 0.0 for v in values]


def _label_bars(ax: Axes, bars: Any, labels: Sequence[str]) -> None:
    ax.bar_label(bars, labels=labels, padding=3, fontsize=9)


def _tier_chart(tiers: pl.DataFrame) -> str:
    names = [t or "(none)" for t in tiers["tier"].to_list()]
    with _figure(7, 0.5 + 0.45 * max(len(names), 2), "tiers") as (figure, ax):
        bars = ax.barh(
            names, tiers["rows"].to_list(), color=[_TIER_COLOURS.get(n, "#999999") for n in names]
        )
        _label_bars(
            ax,
            bars,
            [f"{r:,} ({s:.1%})" for r, s in zip(tiers["rows"], tiers["share"], strict=True)],
        )
        ax.invert_yaxis()
        ax.set(title="Tier distribution", xlabel="Rows", ylabel="Tier")
        ax.margins(x=0.2)
        return _svg(figure)


def _cost_chart(costs: pl.DataFrame) -> str:
    labels = [
        f"{t or '(rerun)'} · {m or '—'}" for t, m in zip(costs["tier"], costs["model"], strict=True)
    ]
    answered = _money(costs["cost_usd"].to_list())
    failed = _money(costs["failed_cost_usd"].to_list())
    superseded = _money(costs["superseded_cost_usd"].to_list())
    below = [a + f for a, f in zip(answered, failed, strict=True)]
    with _figure(7, 0.8 + 0.45 * max(len(labels), 2), "costs") as (figure, ax):
        ax.barh(labels, answered, color=_PALETTE[0], label="answers kept")
        ax.barh(labels, failed, left=answered, color=_PALETTE[3], label="failed attempts")
        bars = ax.barh(
            labels, superseded, left=below, color=_PALETTE[1], label="answers superseded"
        )
        texts = [
            "unpriced" if c is None else format_usd(c) for c in costs["total_cost_usd"].to_list()
        ]
        _label_bars(ax, bars, texts)
        ax.invert_yaxis()
        ax.set(title="Cost by tier and model", xlabel="Cost (USD)", ylabel="Tier · model")
        ax.set_xlim(0, max([b + x for b, x in zip(below, superseded, strict=True)] + [1e-9]) * 1.3)
        figure.legend(loc="outside lower center", ncols=3, frameon=False)
        return _svg(figure)


def _saved_text(saved_usd: Any, saved_pct: float | None) -> str:
    if saved_pct is None or saved_usd is None:
        return ""
    if saved_pct >= 0:
        return f"\nsaves {format_usd(saved_usd)} ({saved_pct:.1f}%)"
    return f"\ncosts {format_usd(-saved_usd)} ({-saved_pct:.1f}%) more"


def _savings_chart(savings: dict[str, Any]) -> str:
    names = [
        "answers kept\nas routed",
        "total spend",
        f"baseline\n{savings['baseline_model']}",
        f"all strongest\n{savings['strongest_model'] or '—'}",
    ]
    values = [
        savings["actual_cost_usd"],
        savings["total_cost_usd"],
        savings["baseline_cost_usd"],
        savings["strongest_cost_usd"],
    ]
    labels = [
        format_usd(values[0]),
        format_usd(values[1]),
        format_usd(values[2])
        + _saved_text(savings["savings_vs_baseline_usd"], savings["savings_vs_baseline_pct"]),
        format_usd(values[3])
        + _saved_text(savings["savings_vs_strongest_usd"], savings["savings_vs_strongest_pct"]),
    ]
    colours = [_PALETTE[2], _PALETTE[2], _PALETTE[0], _PALETTE[3]]
    if savings["forecast_cost_usd"] is not None:
        names.insert(0, "forecast")
        values.insert(0, savings["forecast_cost_usd"])
        labels.insert(0, format_usd(savings["forecast_cost_usd"]))
        colours.insert(0, "#999999")
    with _figure(7, 3.6, "savings") as (figure, ax):
        bars = ax.bar(names, _money(values), color=colours)
        _label_bars(ax, bars, labels)
        ax.set(title="Spend against one model for every row", ylabel="Cost (USD)")
        ax.set_ylim(0, max(_money(values) + [1e-9]) * 1.3)
        return _svg(figure)


def _rates_chart(tiers: pl.DataFrame) -> str:
    names = [t or "(none)" for t in tiers["tier"].to_list()]
    rows = [max(r, 1) for r in tiers["rows"].to_list()]
    fallback = [100 * f / r for f, r in zip(tiers["fallback_rows"], rows, strict=True)]
    failed = [100 * f / r for f, r in zip(tiers["failed"], rows, strict=True)]
    positions = list(range(len(names)))
    with _figure(7, 0.8 + 0.55 * max(len(names), 2), "rates") as (figure, ax):
        up = ax.barh(
            [p - 0.2 for p in positions], fallback, height=0.4, color=_PALETTE[1], label="fell back"
        )
        down = ax.barh(
            [p + 0.2 for p in positions], failed, height=0.4, color=_PALETTE[3], label="failed"
        )
        _label_bars(ax, up, [f"{v:.1f}%" for v in fallback])
        _label_bars(ax, down, [f"{v:.1f}%" for v in failed])
        ax.set_yticks(positions, names)
        ax.invert_yaxis()
        ax.set(
            title="Fallback and failure rates", xlabel="Share of the tier's rows (%)", ylabel="Tier"
        )
        # All zero: a 0-100% axis says "none" plainly; a 0-1.2% axis suggests some.
        top = max([*fallback, *failed, 0.0])
        ax.set_xlim(0, min(100.0, top * 1.25) if top > 0 else 100.0)
        figure.legend(loc="outside lower center", ncols=2, frameon=False)
        return _svg(figure)


def _table(frame: pl.DataFrame, columns: dict[str, str]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for label in columns.values())
    body = []
    for row in frame.iter_rows(named=True):
        cells = []
        for name in columns:
            value = row[name]
            if name.endswith("_usd"):
                text = format_usd(value)
            elif isinstance(value, float):
                text = f"{value:.1%}" if name == "share" else f"{value:,.1f}"
            elif isinstance(value, int) and not isinstance(value, bool):
                text = f"{value:,}"
            else:
                text = "—" if value is None else str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _card(label: str, value: str) -> str:
    return f'<div class="card">{html.escape(label)}<b>{html.escape(value)}</b></div>'


def _figure_block(svg: str, caption: str) -> str:
    return f'<figure>{svg}<figcaption class="meta">{html.escape(caption)}</figcaption></figure>'


_STOPPED = {
    "budget": "The budget cap stopped this run",
    "aborted": "This run aborted",
    "interrupted": "This run was interrupted",
}


def _stop_banner(summary: ReportSummary, savings: dict[str, Any]) -> list[str]:
    """Why the figures cover only part of the input: an early stop, rejected lines."""
    from batchroute.store.manifest import read_manifest

    try:
        manifest = read_manifest(summary.run_dir)
    except OutputError:
        manifest = None
    notes = []
    skipped = savings["skipped"] or 0
    status = manifest.exit_status if manifest is not None else None
    if status in _STOPPED or skipped:
        what = _STOPPED.get(status or "", "This run stopped early")
        reason = manifest.stop_reason if manifest is not None else None
        notes.append(
            f"{what}{f' ({reason})' if reason else ''}: {skipped:,} of {savings['rows']:,} rows "
            "were not sent. Spend, savings and rates cover the rows sent; the forecast covers "
            "every row. Rerun the same command to resume."
        )
    if manifest is not None and manifest.rejected_rows:
        notes.append(
            f"{manifest.rejected_rows:,} input lines could not be read and are not counted here; "
            "they are in rejects.parquet."
        )
    return notes


def _failed_by_model(run_dir: Path) -> pl.DataFrame | None:
    """Attempts per model, with failed attempts' cost under the model that failed."""
    path = run_dir / "attempts.parquet"
    if not path.is_file():
        return None
    failed = pl.col("error_type").is_not_null()
    return (
        pl.scan_parquet(path)
        .group_by("model")
        .agg(
            attempts=pl.len().cast(pl.Int64),
            failed_attempts=failed.sum().cast(pl.Int64),
            rate_limited=(pl.col("status_code") == 429).sum().cast(pl.Int64),
            # an unpriced failed attempt leaves the sum unknown (blank), never $0
            failed_cost_usd=pl.when(pl.col("priced").filter(failed).all())
            .then(pl.col("cost_usd").filter(failed).sum())
            .otherwise(None),
        )
        .sort("model")
        .collect()
    )


def render_run_html(summary: ReportSummary) -> str:
    """A run's report as one self-contained HTML page."""
    s = summary.savings.row(0, named=True)
    pct, saved = s["savings_vs_baseline_pct"], s["savings_vs_baseline_usd"]
    cards = [
        _card("Rows", f"{s['rows']:,}"),
        _card("Answered", f"{s['ok']:,}"),
        _card("Failed", f"{s['failed']:,}"),
        *([_card("Not sent", f"{s['skipped']:,}")] if s["skipped"] else []),
        _card("Total spend (kept + superseded + failed)", format_usd(s["total_cost_usd"])),
        _card(
            f"Saved on total spend vs {s['baseline_model']}",
            "—" if pct is None else f"{format_usd(saved)} ({pct:.1f}%)",
        ),
    ]
    if s["forecast_cost_usd"] is not None:
        cards.append(_card("Forecast", format_usd(s["forecast_cost_usd"])))
    if s.get("cache_hits"):
        cards.append(_card("Saved by the response cache", format_usd(s["cache_saved_usd"])))
    warnings = _stop_banner(summary, s)
    overrun = forecast_overrun(summary)
    if overrun:
        warnings.append(f"Over the forecast: {overrun}.")
    warnings.extend(f"Warned during the run: {w}." for w in recorded_warnings(summary.run_dir))
    warnings.extend(caveats(s))
    if s["repriced"]:
        warnings.append(
            "Repriced: every figure, actual and counterfactual, was priced again from the "
            "recorded usage with the prices below, not the run's own."
        )
    started = s["started_at"].isoformat(timespec="seconds") if s["started_at"] else "—"
    spend = spend_breakdown(s)
    cached = cache_saving_text(s, format_usd)
    if cached:
        spend += " " + cached
    body = [
        f"<h1>batchroute report: {html.escape(s['job'])}</h1>",
        f'<p class="meta">Run {html.escape(s["run_id"] or s["run_dir"])} '
        f"({html.escape(s['run_dir'])}), started {started}. "
        f"Prices: {html.escape(s['price_source'])} (sha256 <code>{s['price_sha256']}</code>).</p>",
        f'<div class="cards">{"".join(cards)}</div>',
        f"<p>{html.escape(spend)}</p>",
        *(f'<p class="warn">{html.escape(w)}</p>' for w in warnings),
        "<h2>Cost against counterfactuals</h2>",
        _figure_block(
            _savings_chart(s),
            "The answers kept priced as routed; total spend (those answers, answers superseded "
            "by a rerun and failed attempts); and the answers' tokens as if every row had gone "
            "to the baseline model, or to the job's most expensive model. Savings are counted "
            "on total spend.",
        ),
        "<h2>Tiers</h2>",
        _figure_block(_tier_chart(summary.tier_distribution), "Rows per tier and their share."),
        _figure_block(
            _rates_chart(summary.tier_distribution),
            "Rows that fell back to another model, and rows that failed.",
        ),
        "<h2>Cost by tier and model</h2>",
        _figure_block(
            _cost_chart(summary.cost_report),
            "Answers kept, failed attempts and answers superseded by a rerun, in USD; spend on "
            "rows a rerun sent again is in the rows without a tier.",
        ),
        _table(
            pl.concat(
                [
                    summary.cost_report.with_columns(pl.col("tier").fill_null("(rerun)")),
                    summary.cost_totals.with_columns(tier=pl.lit("total"), model=pl.lit("")).select(
                        summary.cost_report.columns
                    ),
                ]
            ),
            {
                "tier": "tier",
                "model": "model",
                "rows": "rows",
                "ok": "ok",
                "failed": "failed",
                "fallback_rows": "fell back",
                "input_tokens": "input tok",
                "output_tokens": "output tok",
                "cached_tokens": "cached tok",
                "reasoning_tokens": "reasoning tok",
                "cost_usd": "answers kept",
                "failed_cost_usd": "failed attempts",
                "superseded_cost_usd": "answers superseded",
                "total_cost_usd": "total spend",
                "baseline_cost_usd": "kept answers on baseline",
                "latency_p50_ms": "p50 ms",
                "latency_p95_ms": "p95 ms",
            },
        ),
        *_attempts_section(summary.run_dir),
        "<h2>Tier distribution</h2>",
        _table(
            summary.tier_distribution,
            {
                "tier": "tier",
                "model": "model",
                "rows": "rows",
                "share": "share",
                "metadata_rows": "by metadata",
                "rule_rows": "by rule",
                "classifier_rows": "by classifier",
                "default_rows": "by default",
                "forecast_cost_usd": "forecast",
                "total_cost_usd": "total spend",
            },
        ),
        f'<p class="meta">Generated {datetime.now(UTC).isoformat(timespec="seconds")}.</p>',
    ]
    return _page(f"batchroute report: {s['job']}", "\n".join(body))


def _attempts_section(run_dir: Path) -> list[str]:
    by_model = _failed_by_model(run_dir)
    if by_model is None or by_model.height == 0:
        return []
    return [
        "<h2>Attempts by model</h2>",
        '<p class="meta">Failed attempts are counted, and their cost shown, under the model '
        "that failed; the table above shows them under the model that answered the row.</p>",
        _table(
            by_model,
            {
                "model": "model",
                "attempts": "attempts",
                "failed_attempts": "failed",
                "rate_limited": "429s",
                "failed_cost_usd": "failed attempts' cost",
            },
        ),
    ]


def _trend_chart(daily: pl.DataFrame) -> str:
    from datetime import timedelta

    from matplotlib.dates import DateFormatter, DayLocator

    with _figure(7.5, 3.6, "trend") as (figure, ax):
        for i, (job, rows) in enumerate(daily.partition_by("job", as_dict=True).items()):
            colour = _PALETTE[i % len(_PALETTE)]
            dates = rows["date"].to_list()
            ax.plot(
                dates,
                _money(rows["total_cost_usd"].to_list()),
                marker="o",
                color=colour,
                label=f"{job[0]}: spend",
            )
            ax.plot(
                dates,
                _money(rows["baseline_cost_usd"].to_list()),
                marker="s",
                linestyle="--",
                color=colour,
                alpha=0.6,
                label=f"{job[0]}: on baseline",
            )
        days = daily["date"].to_list()
        first, last = min(days), max(days)
        ax.set_xlim(first - timedelta(days=1), last + timedelta(days=1))
        step = max(1, (last - first).days // 10)
        ax.xaxis.set_major_locator(DayLocator(interval=step))  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))  # type: ignore[no-untyped-call]
        figure.autofmt_xdate()
        ax.axhline(0, color="#555555", linewidth=0.8)
        ax.set(title="Spend per day and job", xlabel="Date (UTC)", ylabel="USD")
        figure.legend(loc="outside lower center", ncols=2, frameon=False)
        return _svg(figure)


def render_trend_html(daily: pl.DataFrame, *, folder: Path) -> str:
    """Per-day totals of a folder of runs as one self-contained HTML page."""
    body = [
        f"<h1>batchroute trend: {html.escape(str(folder))}</h1>",
        f'<p class="meta">{int(daily["runs"].sum()):,} runs over {daily.height} days.</p>',
        _figure_block(
            _trend_chart(daily),
            "Each job's total spend per day, and the same answers' tokens on its baseline model.",
        ),
        _table(
            daily,
            {
                "date": "date",
                "job": "job",
                "runs": "runs",
                "rows": "rows",
                "total_cost_usd": "total spend",
                "actual_cost_usd": "answers kept",
                "superseded_cost_usd": "answers superseded",
                "failed_cost_usd": "failed attempts",
                "baseline_cost_usd": "kept answers on baseline",
                "savings_vs_baseline_usd": "saved on total spend",
            },
        ),
    ]
    return _page(f"batchroute trend: {folder}", "\n".join(body))


def write_html(text: str, path: Path) -> Path:
    """Write an HTML page atomically; `OutputError` if it cannot."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        raise OutputError(
            f"cannot write the HTML report ({exc.strerror or exc})", path=path
        ) from None
    return path
