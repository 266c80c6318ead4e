"""`batchroute eval-classifier LABELLED.csv --job JOB.yaml [--model M.json]`: how well it routes;
`batchroute eval-classifier JOB.yaml --runs DIR...`: how routing past runs would change."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from batchroute.classify import Router, build_router
from batchroute.classify.evaluate import Evaluation, evaluate_router, read_labelled
from batchroute.classify.model import load_model
from batchroute.classify.replay import Replay, replay_runs
from batchroute.config import load_job
from batchroute.exitcodes import ExitCode
from batchroute.report.terminal import format_usd

__all__ = ["eval_classifier_command", "render_evaluation", "render_replay"]


@click.command("eval-classifier")
@click.argument("target", metavar="LABELLED|JOB", type=click.Path(path_type=Path, dir_okay=False))
@click.argument(
    "run_dirs",
    nargs=-1,
    metavar="[DIR]...",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
)
@click.option(
    "--runs",
    "from_runs",
    is_flag=True,
    help="TARGET is a job and the paths after it are run directories: route their rows with "
    "the job's current router and report the rows that would move tier, the estimated cost "
    "change, and the scores against the labels their escalations give.",
)
@click.option(
    "--job",
    "job_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The job whose routing and prices are evaluated (with a LABELLED file).",
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
    target: Path,
    run_dirs: tuple[Path, ...],
    from_runs: bool,
    job_file: Path | None,
    min_accuracy: float | None,
    model_path: Path | None,
    rules_only: bool,
) -> None:
    """Score routing: LABELLED prompts (columns prompt,tier) with --job JOB, or with --runs,
    past runs replayed through JOB's current router (`eval-classifier JOB --runs DIR...`)."""
    if rules_only and model_path is not None:
        raise click.UsageError("give at most one of --model and --rules-only")
    if from_runs:
        if job_file is not None:
            raise click.UsageError("with --runs, the job is the first argument; drop --job")
        if not run_dirs:
            raise click.UsageError(
                "--runs needs run directories: eval-classifier JOB --runs DIR..."
            )
        job_file = target
    elif run_dirs:
        raise click.UsageError(
            "extra arguments; to replay run directories: eval-classifier JOB --runs DIR..."
        )
    elif job_file is None:
        raise click.UsageError("--job is required with a labelled file")
    job = load_job(job_file)
    model = None if model_path is None else load_model(model_path)
    router = build_router(job, model=model)
    by = str(job_file) if model_path is None else f"{job_file} with {model_path}"
    if rules_only:
        router = Router(router.rules)
        by += " (rules only)"
    console = Console(soft_wrap=True)
    if from_runs:
        replay = replay_runs(run_dirs, job=job, router=router)
        render_replay(replay, console=console, by=by)
        result = replay.labelled
    else:
        prompts, tiers = read_labelled(target)
        result = evaluate_router(router, prompts, tiers, job=job)
        render_evaluation(result, console=console, title=f"{target} routed by {by}")
    if result is None:
        if min_accuracy is not None:
            console.print("[red]FAIL[/red]: no labels to score (no row of these runs escalated)")
            ctx.exit(int(ExitCode.GATE))
        return
    if not result.passes(min_accuracy):
        console.print(f"[red]FAIL[/red]: accuracy {result.accuracy:.1%} < {min_accuracy:.1%}")
        ctx.exit(int(ExitCode.GATE))
    if min_accuracy is not None:
        console.print(f"PASS: accuracy {result.accuracy:.1%} >= {min_accuracy:.1%}")


def render_replay(replay: Replay, *, console: Console, by: str) -> None:
    """Print a replay: rows moved per tier pair, the estimated cost change, label scores."""
    runs = ", ".join(str(run) for run in replay.runs)
    console.print(f"[bold]{replay.rows:,} rows of {runs} routed again by {by}[/bold]")
    console.print(
        f"{replay.moved:,} rows ({replay.moved_share:.1%}) would move tier"
        + (
            f"; {replay.missing_rows:,} rows no longer in their input"
            if replay.missing_rows
            else ""
        )
    )
    moves = Table(title="Rows by the tier they were routed to then, and would be now")
    for column in ("then", "now", "rows", "cost then", "cost now"):
        moves.add_column(column, justify="left" if column in ("then", "now") else "right")
    for then, now, rows, _, cost_then, cost_now in replay.moves.iter_rows():
        moves.add_row(then, now, f"{rows:,}", format_usd(cost_then), format_usd(cost_now))
    console.print(moves)
    change = replay.cost_change_usd
    share = f" ({change / replay.cost_then_usd:+.1%})" if replay.cost_then_usd else ""
    console.print(
        f"Estimated cost at the job's prices: {format_usd(replay.cost_then_usd)} as routed then, "
        f"{format_usd(replay.cost_now_usd)} now: a change of {format_usd(change)}{share} "
        "(estimated prompts and each tier's expected output, before checks and escalations)"
    )
    if replay.unpriced_tiers:
        console.print(f"Unpriced tiers counted at $0: {', '.join(replay.unpriced_tiers)}")
    if replay.labelled is None:
        console.print("No row of these runs escalated, so they give no labels to score against.")
    else:
        render_evaluation(
            replay.labelled,
            console=console,
            title="Against the labels the runs' escalations give (a row that passed only at "
            "tier T is labelled T)",
        )


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
