"""`batchroute train LABELLED.csv... --out MODEL.json`: learn text → tier from labelled examples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from batchroute.classify.evaluate import read_labelled
from batchroute.classify.learned import train_classifier
from batchroute.classify.model import save_model
from batchroute.classify.run_labels import labels_from_runs, write_run_labels

__all__ = ["train_command"]


@click.command("train")
@click.argument("labelled", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The model file (JSON) to write; a job names it in routing.classifier.path.",
)
@click.option(
    "--cv-folds",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Report stratified k-fold accuracy on the training set first (0 skips it).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for CV and the fit.")
@click.option(
    "--from-runs",
    "run_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Run directories whose escalated rows become labels (repeatable); they are added to "
    "from-runs-{train,test,holdout}.csv beside the first LABELLED path, and the train split is "
    "trained on.",
)
def train_command(
    labelled: tuple[Path, ...], out_path: Path, cv_folds: int, seed: int, run_dirs: tuple[Path, ...]
) -> None:
    """Train the router model (needs `pip install 'batchroute[ml]'`) on prompt,tier CSV files.

    LABELLED may be files or directories of `*.csv` files; all their rows are used.
    """
    files = [
        f for path in labelled for f in (sorted(path.glob("*.csv")) if path.is_dir() else [path])
    ]
    prompts: list[str] = []
    tiers: list[str] = []
    for path in files:
        more_prompts, more_tiers = read_labelled(path)
        prompts += more_prompts
        tiers += more_tiers
    if run_dirs:
        folder = labelled[0] if labelled[0].is_dir() else labelled[0].parent
        existing = [p for p in folder.glob("*.csv") if not p.name.startswith("from-runs")]
        split_paths = write_run_labels(labels_from_runs(run_dirs), folder, existing=existing)
        extra_prompts, extra_tiers = read_labelled(split_paths["train"])
        prompts, tiers = prompts + extra_prompts, tiers + extra_tiers
        click.echo(
            f"Labels from runs: {len(extra_prompts):,} to train on in {split_paths['train']}"
        )
    counts = Counter(tiers)
    folds = cv_folds if cv_folds >= 2 and min(counts.values()) >= cv_folds else 0
    model = train_classifier(prompts, tiers, seed=seed, cv_folds=folds)
    path = save_model(model, out_path)
    console = Console(soft_wrap=True)
    table = Table(title=f"Trained on {len(files)} file(s), {len(prompts):,} prompts")
    table.add_column("tier")
    table.add_column("examples", justify="right")
    for tier in model.tiers:
        table.add_row(tier, f"{counts[tier]:,}")
    console.print(table)
    if model.cv_accuracy is not None:
        console.print(f"{folds}-fold cross-validated accuracy: {model.cv_accuracy:.1%}")
    elif cv_folds >= 2:
        console.print(f"Skipped {cv_folds}-fold CV: a tier has fewer than {cv_folds} examples.")
    console.print(f"Wrote {path} ({model.n_features:,} features)")
    console.print(
        f"Use it in a job: routing: {{classifier: {{kind: model, path: {path}}}}}; "
        f"evaluate it: batchroute eval-classifier LABELLED.csv --job JOB.yaml --model {path}"
    )
