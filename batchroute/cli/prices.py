"""`batchroute prices [--job JOB] [--diff FILE]`: the resolved prices and where each came from."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table

from batchroute.config import load_job
from batchroute.pricing.prices import (
    PriceTable,
    default_price_table,
    diff_prices,
    load_price_file,
    resolve_prices,
)

__all__ = ["prices_command"]


def _money(value: Decimal | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return f"{value:,}"


def _print_table(table: PriceTable, *, console: Console) -> None:
    sources = {table.sources.get(model, table.source) for model in table.prices}
    one_source = len(sources) == 1 and not table.unpriced
    title = f"Prices in USD per 1M tokens (sha256 {table.sha256[:12]})"
    if one_source:
        title += f", all from {sources.pop()}"
    listing = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    listing.add_column("model", overflow="fold")
    for name in ("input", "cached", "output", "reasoning", "context"):
        listing.add_column(name, justify="right", no_wrap=True)
    if not one_source:
        listing.add_column("source", overflow="fold")
    for model in sorted(table.prices):
        price = table.prices[model]
        figures = [
            _money(price.input_per_mtok),
            _money(price.cached_rate),
            _money(price.output_per_mtok),
            _money(price.reasoning_rate),
            _money(price.context_window),
        ]
        source = [] if one_source else [table.sources.get(model, table.source)]
        listing.add_row(model, *figures, *source)
    for model in sorted(table.unpriced):
        listing.add_row(model, "—", "—", "—", "—", "—", "unpriced (prices.allow_unpriced)")
    console.print(listing)


@click.command("prices")
@click.option(
    "--job",
    "job_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Show the prices this job resolves to; without it, the shipped table.",
)
@click.option(
    "--diff",
    "diff_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Compare the table with a price map in LiteLLM's format (or batchroute's own).",
)
def prices_command(job_file: Path | None, diff_file: Path | None) -> None:
    """Print the resolved price table with each price's source and date."""
    console = Console()
    if job_file is not None:
        job = load_job(job_file)
        table = resolve_prices(job)
        names = {m: (m, job.config.api_model(m)) for m in table.prices}
    else:
        table, names = default_price_table(), {}
    _print_table(table, console=console)
    if diff_file is None:
        return
    other, described = load_price_file(diff_file)
    described = described.removeprefix("prices.file ")
    differences = diff_prices(table, other, names=names)
    if not differences:
        console.print(f"{described} agrees with every price above.")
        return
    diff = Table(title=f"Against {described}", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("model", "field", "here", "in the file"):
        diff.add_column(name, justify="left" if name in {"model", "field"} else "right")
    for model, field, ours, theirs in differences:
        if field == "missing":
            diff.add_row(model, "not in the file", "", "")
        else:
            diff.add_row(model, field, _money(ours), _money(theirs))
    console.print(diff)
    changed = len({m for m, f, _, _ in differences if f != "missing"})
    console.print(
        f"{changed} of {len(table.prices)} models differ in {diff_file}; "
        "to adopt its prices, set prices.file to it in the job."
    )
