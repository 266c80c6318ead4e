"""Climbs in progress: where a row that a crash caught mid-escalation resumes.

A row whose answer fails its checks climbs its escalation path (`dispatch.walk`). Before the
next tier is asked, the runner makes the attempts made so far durable in the session's journal:
ordinary attempt records, committed before the row has a result (an attempts-only `ROWS`
record). The rejected answer's record says `action: escalate`, with its `tier`,
`escalation_depth`, `verify` and `verify_failures`, so these records are the escalation state
and need no format of their own:

- a row's latest climb begins at its latest attempt numbered 1 (a walk from the row's own tier;
  a resumed walk carries on the numbering);
- the climb is pending when it holds an `escalate` and no session from the one it began in on
  has written a final (`ok` or `failed`) result for the key: a final answer ends it, and a
  failed row retried by a later session starts over from its own tier;
- the row resumes at depth = the last escalating attempt's depth + 1, with the climb's attempts
  counted, and its failed checks (`tier/model: why`) and failed tokens carried over.

The rejected attempts are recorded once, when the row climbs (the walk hands them over and
keeps only the later ones), so attempts.parquet and every cost built from it count them once.

Compatibility: a run directory written before climbs were made durable has no attempt records
without their result, hence no pending climb, and its unfinished rows start from their own tier
as they always did; attempts parts older than verification lack its columns and read as null.
A batchroute without this module resuming a newer run directory sends such rows again from their
own tier; the early attempts stay in attempts.parquet, counted against the row's key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import polars as pl

from batchroute.dispatch.policy import Action
from batchroute.dispatch.rows import EscalationProgress, rejection_message
from batchroute.errors import OutputError
from batchroute.schema import ATTEMPT_SCHEMA, Status
from batchroute.store.parts import PartFile, collect_parts, list_parts, scan_parts
from batchroute.store.rundir import PARTS_DIR

__all__ = ["pending_escalations"]

_COLUMNS: Final = (
    "row_key",
    "model",
    "attempt",
    "error_type",
    "action",
    "input_tokens",
    "output_tokens",
    "tier",
    "escalation_depth",
    "verify",
    "verify_failures",
)
_FINAL: Final = [Status.OK, Status.FAILED]


def pending_escalations(run_dir: Path, *, done: pl.Series) -> dict[str, EscalationProgress]:
    """By row key, the climbs earlier sessions made durable and did not finish.

    Keys in `done` (settled: they will not be sent) are left out. Reads the `action` column of
    every attempts part, and more only for the keys that ever escalated.
    """
    run_dir = Path(run_dir)
    where = run_dir / PARTS_DIR
    parts = list_parts(run_dir, "attempts")
    if not parts:
        return {}
    climbed = collect_parts(
        scan_parts(part.path for part in parts)
        .filter(pl.col("action") == Action.ESCALATE)
        .select(pl.col("row_key").unique()),
        where=where,
    ).get_column("row_key")
    climbed = climbed.filter(~climbed.is_in(done.implode()))
    if climbed.is_empty():
        return {}
    keys = climbed.implode()
    attempts = _attempts_of(parts, keys, where=where)
    finals = _final_sessions(run_dir, keys, where=where)
    climbs = _latest_climbs(attempts, finals)
    return {
        key: EscalationProgress(
            depth=depth,
            attempts=count,
            verify_failures=tuple(failures),
            failed_input_tokens=failed_in,
            failed_output_tokens=failed_out,
            last_message=None if why is None else rejection_message(why, model),
        )
        for key, depth, count, failures, failed_in, failed_out, why, model in climbs.iter_rows()
    }


def _attempts_of(parts: list[PartFile], keys: pl.Series, *, where: Path) -> pl.DataFrame:
    """Every attempt of these keys, in the order they were made, with its session's ordinal."""
    scans = []
    for number, part in enumerate(parts):
        scan = pl.scan_parquet(part.path)
        try:
            present = scan.collect_schema().names()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise OutputError(
                f"a checkpoint part cannot be read ({exc}); move the damaged part out of the "
                "way and rerun: its rows are sent again",
                path=part.path,
            ) from None
        scans.append(
            scan.filter(pl.col("row_key").is_in(keys))
            .select(
                *(
                    pl.col(name).cast(ATTEMPT_SCHEMA[name])
                    if name in present
                    else pl.lit(None, ATTEMPT_SCHEMA[name]).alias(name)
                    for name in _COLUMNS
                ),
                pl.lit(part.ordinal, pl.Int64).alias("_ordinal"),
                pl.lit(number, pl.Int64).alias("_part"),
            )
            .with_row_index("_pos")
        )
    return collect_parts(pl.concat(scans), where=where).sort("_part", "_pos", maintain_order=True)


def _final_sessions(run_dir: Path, keys: pl.Series, *, where: Path) -> pl.DataFrame:
    """Per key, the latest session ordinal that wrote a final result for it."""
    scans = [
        pl.scan_parquet(part.path)
        .select("row_key", "status")
        .filter(pl.col("row_key").is_in(keys) & pl.col("status").is_in(_FINAL))
        .select("row_key", pl.lit(part.ordinal, pl.Int64).alias("_final"))
        for part in list_parts(run_dir, "results")
    ]
    if not scans:
        return pl.DataFrame(schema={"row_key": pl.String, "_final": pl.Int64})
    return collect_parts(
        pl.concat(scans).group_by("row_key").agg(pl.col("_final").max()), where=where
    )


def _latest_climbs(attempts: pl.DataFrame, finals: pl.DataFrame) -> pl.DataFrame:
    """Per key with a pending climb: its depth, attempts, failed checks and tokens, and the last
    rejected answer's reason and model."""
    numbered = attempts.with_columns(_seq=pl.int_range(pl.len()).over("row_key"))
    # The latest walk from the row's own tier; a key with none starts at its first attempt.
    start = numbered.group_by("row_key").agg(
        pl.col("_seq").filter(pl.col("attempt") == 1).max().fill_null(0).alias("_start")
    )
    climb = numbered.join(start, on="row_key").filter(pl.col("_seq") >= pl.col("_start"))
    began = climb.group_by("row_key").agg(pl.col("_ordinal").min().alias("_began"))
    rejected = pl.col("verify") == "failed"
    failed = pl.col("error_type").is_not_null()
    escalating = pl.col("action") == Action.ESCALATE
    return (
        climb.join(began, on="row_key")
        .join(finals, on="row_key", how="left")
        .filter(pl.col("_final").is_null() | (pl.col("_final") < pl.col("_began")))
        .group_by("row_key", maintain_order=True)
        .agg(
            depth=(pl.col("escalation_depth").filter(escalating).max() + 1).cast(pl.Int64),
            attempts=pl.len().cast(pl.Int64),
            verify_failures=pl.concat_str(
                pl.col("tier"), pl.lit("/"), pl.col("model"), pl.lit(": "), "verify_failures"
            ).filter(rejected),
            failed_input_tokens=pl.col("input_tokens").filter(failed).sum().cast(pl.Int64),
            failed_output_tokens=pl.col("output_tokens").filter(failed).sum().cast(pl.Int64),
            _why=pl.col("verify_failures").filter(rejected).last(),
            _model=pl.col("model").filter(rejected).last(),
        )
        .filter(pl.col("depth").is_not_null())
        .select(
            "row_key",
            "depth",
            "attempts",
            "verify_failures",
            "failed_input_tokens",
            "failed_output_tokens",
            "_why",
            "_model",
        )
    )
