"""`batchroute eval-classifier LABELLED.csv --job JOB.yaml [--model M.json]`: how well it routes."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from batchroute.classify import Router, build_router
from batchroute.classify.evaluate import Evaluation, evaluate_router, read_labelled
from batchroute.classify.model import load_model
from batchroute.config import load_job
from batchroute.exitcodes import ExitCode
from batchroute.report.terminal import format_usd

__all__ = ["eval_classifier_command", "render_evaluation"]


@click.command("eval-classifier")
@click.argument("labelled", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--job",
    "job_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The job whose routing and prices are evaluated.",
)
@click.option(
    "--min-accuracy",
    type=click.FloatRange(0, 1),
    help="Exit 8 when accuracy is below this (e.g. 0.8), for CI.",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Evaluate this model file (from `batchroute train`) in place of the job's.",
)
@click.option("--rules-only", is_flag=True, help="Ignore the job's model; score the rules alone.")
@click.pass_context
def eval_classifier_command(
    ctx: click.Context,
    labelled: Path,
    job_file: Path,
    min_accuracy: float | None,
    model_path: Path | None,
    rules_only: bool,
) -> None:
    """Route labelled prompts (columns prompt,tier) as the job would and score the result."""
    if rules_only and model_path is not None:
        raise click.UsageError("give at most one of --model and --rules-only")
    job = load_job(job_file)
    model = None if model_path is None else load_model(model_path)
    router = build_router(job, model=model)
    by = str(job_file) if model_path is None else f"{job_file} with {model_path}"
    if rules_only:
        router = Router(router.rules)
        by += " (rules only)"
    prompts, tiers = read_labelled(labelled)
    result = evaluate_router(router, prompts, tiers, job=job)
    console = Console(soft_wrap=True)
    render_evaluation(result, console=console, title=f"{labelled} routed by {by}")
    if not result.passes(min_accuracy):
        console.print(f"[red]FAIL[/red]: accuracy {result.accuracy:.1%} < {min_accuracy:.1%}")
        ctx.exit(int(ExitCode.GATE))
    if min_accuracy is not None:
        console.print(f"PASS: accuracy {result.accuracy:.1%} >= {min_accuracy:.1%}")


def render_evaluation(result: Evaluation, *, console: Console, title: str) -> None:
    """Print an evaluation as rich tables: per-tier scores, confusion matrix, misroute cost."""
    console.print(f"[bold]{title}[/bold]")
    console.print(
        f"Accuracy {result.accuracy:.1%} ({result.correct:,}/{result.rows:,} rows); "
        f"under-routed {result.under_routed_share:.1%} ({result.under_routed_rows:,}); "
        f"over-routed {result.over_routed_share:.1%} ({result.over_routed_rows:,})"
    )
    console.print(
        "Decided by " + ", ".join(f"{source}: {n:,}" for source, n in result.sources.items())
    )
    scores = Table(title="Per tier")
    for column in ("tier", "labelled", "routed", "precision", "recall"):
        scores.add_column(column, justify="left" if column == "tier" else "right")
    for s in result.per_tier:
        scores.add_row(
            s.tier, f"{s.support:,}", f"{s.predicted:,}", f"{s.precision:.1%}", f"{s.recall:.1%}"
        )
    console.print(scores)
    matrix = Table(title="Confusion matrix (rows: label, columns: routed)")
    matrix.add_column("label \\ routed")
    for tier in result.tiers:
        matrix.add_column(tier, justify="right")
    for tier, row in zip(result.tiers, result.confusion, strict=True):
        matrix.add_row(tier, *(f"{n:,}" for n in row))
    console.print(matrix)
    console.print(
        f"Over-routed (to a dearer tier that can do the work): {result.over_routed_rows:,} rows, "
        f"{format_usd(result.over_routing_cost_usd)} lost at the job's prices; "
        f"under-routed (to a tier that cannot): {result.under_routed_rows:,} rows"
    )
    if result.unpriced_tiers:
        console.print(f"Unpriced tiers counted at $0: {', '.join(result.unpriced_tiers)}")
