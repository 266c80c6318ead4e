"""Labels from runs: a row that passed its checks only after climbing to tier T is labelled T.

Verify-and-escalate is the one source of ground truth a nightly job produces about its own
routing: when a row's cheap answer failed and a stronger tier's passed, the row needed that tier.
`labels_from_runs` reads those rows from run directories (results.parquet for the verdicts, the
run's job and input for the prompts); `write_run_labels` adds them to the labelled data.

The held-out discipline is the labelled data's: a prompt already in any labelled file is never
added again (so no test or holdout prompt leaks into training), and each new prompt is assigned
to train, test or holdout by a hash of its text (70/15/15). A prompt therefore lands in the same
split on every extraction, whichever runs it came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import polars as pl

from batchroute.config import load_job
from batchroute.dataset.reader import open_dataset
from batchroute.errors import DatasetError
from batchroute.store.manifest import read_manifest

__all__ = ["SPLITS", "labels_from_runs", "split_of", "write_run_labels"]

SPLITS: Final = ("train", "test", "holdout")
_SHARES: Final = (70, 85)  # hash % 100 below 70: train; below 85: test; else holdout
LABEL_SCHEMA: Final = pl.Schema({"prompt": pl.String, "tier": pl.String})


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, from a hash of its text: stable across runs and machines."""
    digest = hashlib.blake2b(prompt.strip().encode("utf-8"), digest_size=8).digest()
    bucket = int.from_bytes(digest, "little") % 100
    return SPLITS[0] if bucket < _SHARES[0] else SPLITS[1] if bucket < _SHARES[1] else SPLITS[2]


def _escalated_rows(run_dir: Path) -> pl.DataFrame:
    """The ids of rows that passed their checks only after escalating, and where they passed."""
    path = run_dir / "results.parquet"
    if not path.is_file():
        raise DatasetError("has no results.parquet; is it a finished batchroute run?", path=run_dir)
    results = pl.scan_parquet(path)
    names = results.collect_schema().names()
    if "escalation_depth" not in names:
        return pl.DataFrame(schema={"id": pl.String, "tier": pl.String})
    return (
        results.filter(
            (pl.col("status") == "ok")
            & pl.col("verified").fill_null(False)
            & (pl.col("escalation_depth") > 0)
        )
        .select("id", tier=pl.col("answered_tier"))
        .collect()
    )


def _prompt_text() -> pl.Expr:
    """A row's text for the classifier: its prompt, else its last user message."""
    last_user = (
        pl.col("messages")
        .list.eval(
            pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
        )
        .list.last()
    )
    return pl.coalesce(pl.col("prompt"), last_user)


def labels_from_runs(run_dirs: Sequence[Path]) -> pl.DataFrame:
    """`prompt,tier` labels from the escalated, verified rows of these run directories."""
    frames = []
    for run_dir in run_dirs:
        wanted = _escalated_rows(run_dir)
        if not wanted.height:
            continue
        manifest = read_manifest(run_dir)
        if manifest is None:
            raise DatasetError("has no run.json naming its job", path=run_dir)
        job = load_job(manifest.job_path)
        ids = wanted["id"].implode()
        for batch in open_dataset(job).batches():
            rows = batch.rows.filter(pl.col("id").is_in(ids))
            if rows.height:
                frames.append(
                    rows.select("id", prompt=_prompt_text()).join(wanted, on="id", how="inner")
                )
    if not frames:
        return pl.DataFrame(schema=LABEL_SCHEMA)
    labels = pl.concat(frames).select("prompt", "tier").drop_nulls()
    return labels.unique("prompt", keep="last", maintain_order=True)


def write_run_labels(
    labels: pl.DataFrame, directory: Path, *, existing: Iterable[Path] = ()
) -> dict[str, Path]:
    """Add run labels to `directory`'s `from-runs-<split>.csv` files; their paths by split.

    Prompts in any `existing` labelled file are left out; a prompt already in a from-runs file
    takes its newest label.
    """
    known: set[str] = set()
    for path in existing:
        if path.is_file():
            known.update(pl.read_csv(path, infer_schema=False)["prompt"].drop_nulls().to_list())
    fresh = labels.filter(~pl.col("prompt").is_in(list(known)))
    # polars' own hash is seeded per build: a split must not move between machines or versions
    splits = [split_of(prompt) for prompt in fresh["prompt"]]
    fresh = fresh.with_columns(split=pl.Series(splits, dtype=pl.String))
    paths: dict[str, Path] = {}
    directory.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        path = directory / f"from-runs-{split}.csv"
        earlier = (
            pl.read_csv(path, infer_schema=False).select(LABEL_SCHEMA.names())
            if path.is_file()
            else pl.DataFrame(schema=LABEL_SCHEMA)
        )
        added = fresh.filter(pl.col("split") == split).select(LABEL_SCHEMA.names())
        merged = pl.concat([earlier, added]).unique("prompt", keep="last", maintain_order=True)
        merged.write_csv(path)
        paths[split] = path
    return paths
