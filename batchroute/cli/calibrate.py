"""`batchroute calibrate JOB.yaml --labelled CSV --target-cost USD | --max-complex-share S`."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import click
import polars as pl
from rich.console import Console
from rich.table import Table

from batchroute.classify import build_router
from batchroute.classify.calibrate import calibrate_router, read_sample
from batchroute.classify.evaluate import Evaluation, evaluate_router, read_labelled
from batchroute.classify.model import save_model
from batchroute.config import load_job
from batchroute.exitcodes import ExitCode
from batchroute.report.terminal import format_usd

__all__ = ["calibrate_command"]


@click.command("calibrate")
@click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--target-cost", type=Decimal, help="Forecast cost of the whole input, in USD.")
@click.option(
    "--max-complex-share", type=click.FloatRange(0, 1), help="Most rows to route to complex."
)
@click.option(
    "--sample",
    "sample_rows",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Rows of the job's input to calibrate on.",
)
@click.option(
    "--labelled",
    "labelled_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Labelled prompts (prompt,tier) on which accuracy and under-routing are measured.",
)
@click.option(
    "--max-under-routing",
    type=click.FloatRange(0, 1),
    default=0.03,
    show_default=True,
    help="Refuse (exit 8, write nothing) a calibration under-routing more of --labelled.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample.")
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Calibrated model file [default: MODEL.calibrated.json beside the job's model, or "
    "router.calibrated.json beside the job for the shipped model].",
)
@click.pass_context
def calibrate_command(
    ctx: click.Context,
    job_file: Path,
    target_cost: Decimal | None,
    max_complex_share: float | None,
    sample_rows: int,
    labelled_path: Path,
    max_under_routing: float,
    seed: int,
    out_path: Path | None,
) -> None:
    """Tune the job's router model to meet a cost or complex-share target; spend nothing."""
    if (target_cost is None) == (max_complex_share is None):
        raise click.UsageError("give exactly one of --target-cost and --max-complex-share")
    job = load_job(job_file)
    router = build_router(job)
    prompts, labels = read_labelled(labelled_path)
    sample, total = read_sample(job, rows=sample_rows, seed=seed)
    result = calibrate_router(
        router,
        sample,
        job=job,
        input_rows=total,
        target_cost_usd=target_cost,
        max_complex_share=max_complex_share,
    )
    console = Console(soft_wrap=True)
    console.print(
        f"Calibrating on {result.sample_rows:,} of {result.input_rows:,} rows "
        f"(seed {seed}); target: {result.target}"
    )
    _forecast_table(result.before, console=console, title="Forecast before calibration")
    _forecast_table(result.after, console=console, title="Forecast after calibration")
    bias = ", ".join(f"{tier}: {value:+.3f}" for tier, value in sorted(result.bias.items()))
    console.print(f"Per-tier bias: {bias}; confidence gate: {result.min_confidence}")
    if result.gate_changed:
        console.print(
            f"The bias alone could not meet the target at the job's gate "
            f"({router.min_confidence}); the calibrated file carries gate "
            f"{result.min_confidence}, which replaces the job's min_confidence."
        )
    before = evaluate_router(router, prompts, labels, job=job)
    after = evaluate_router(result.router, prompts, labels, job=job)
    _quality(before, after, console=console, labelled=labelled_path)
    if not result.met:
        console.print(
            "[red]Target not met[/red]: the rules and hints alone already exceed it; "
            "nothing written."
        )
        ctx.exit(int(ExitCode.GATE))
    if after.under_routed_share > max_under_routing:
        console.print(
            f"[red]Refused[/red]: at this bias {after.under_routed_share:.1%} of {labelled_path} "
            f"is under-routed, above --max-under-routing {max_under_routing:.1%}; nothing written. "
            "Raise the target, or accept more under-routing explicitly."
        )
        ctx.exit(int(ExitCode.GATE))
    assert router.classifier is not None
    model_file = job.config.routing.classifier.path
    if out_path is not None:
        out = out_path
    elif model_file is None:
        out = job_file.with_name("router.calibrated.json")
    else:
        model_path = job.resolve(model_file)
        out = model_path.with_name(f"{model_path.stem}.calibrated{model_path.suffix}")
    gate = result.min_confidence if result.gate_changed else router.classifier.min_confidence
    save_model(router.classifier.with_bias(result.bias, min_confidence=gate), out)
    console.print(
        f"Wrote {out}; set routing.classifier: {{kind: model, path: {out}}} to use the calibration."
    )


def _quality(before: Evaluation, after: Evaluation, *, console: Console, labelled: Path) -> None:
    table = Table(title=f"Routing quality on {labelled} ({after.rows:,} labelled prompts)")
    for column in ("", "accuracy", "under-routed", "over-routed"):
        table.add_column(column, justify="left" if not column else "right")
    for name, ev in (("before calibration", before), ("at the calibrated bias", after)):
        table.add_row(
            name,
            f"{ev.accuracy:.1%}",
            f"{ev.under_routed_share:.1%} ({ev.under_routed_rows:,})",
            f"{ev.over_routed_share:.1%} ({ev.over_routed_rows:,})",
        )
    console.print(table)


def _forecast_table(forecast: pl.DataFrame, *, console: Console, title: str) -> None:
    table = Table(title=title)
    for column in ("tier", "model", "rows", "share", "cost"):
        table.add_column(column, justify="left" if column in {"tier", "model"} else "right")
    total = Decimal(0)
    for row in forecast.iter_rows(named=True):
        total += row["forecast_cost_usd"]
        table.add_row(
            row["tier"],
            row["model"],
            f"{row['rows']:,}",
            f"{row['share']:.1%}",
            format_usd(row["forecast_cost_usd"]),
        )
    table.add_row("total", "", f"{forecast['rows'].sum():,}", "", format_usd(total))
    console.print(table)
