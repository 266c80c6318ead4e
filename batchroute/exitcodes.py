"""The exit codes a scheduler sees; the README documents the same table."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    """How a batchroute command ended."""

    OK = 0
    """Every row answered."""
    SOME_FAILED = 1
    """The run finished, but some rows failed; their reasons are in results.parquet."""
    USAGE = 2
    """The command line was wrong (click's own code for usage errors)."""
    BUDGET = 3
    """The budget cap stopped the run; unsent rows are `skipped_budget`."""
    ABORTED = 4
    """The run aborted: the key was refused, or every model became unavailable."""
    INTERRUPTED = 5
    """SIGTERM or SIGINT stopped the run; rerun the same command to resume."""
    BAD_INPUT = 6
    """The job file or the input file is wrong, or the run directory is locked."""
    OUTPUT = 7
    """A run directory or report could not be written or read."""
    GATE = 8
    """A quality gate failed (eval-classifier below --min-accuracy, calibrate missed target)."""
    SUBMITTED = 9
    """`run --no-wait` submitted batches (or found them still open): run again later to collect."""
