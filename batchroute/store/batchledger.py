"""The batch ledger: which rows were submitted to the Batch API, in which batch, and its state.

One JSON file per submission under `<run_dir>/batches/`, each written whole with `atomic_file`.
A submission is recorded *before* each step that the provider may bill or remember: before its
file is uploaded (state `preparing`), once uploaded (`uploaded`, with `input_file_id`), once
the batch exists (`open`, with `batch_id`), and once its answers are durable in the journal
(`collected`). A crash at any point leaves a record a rerun can finish from: an `uploaded`
record's batch is looked up by its input file before a batch is created again, so the same rows
are never submitted twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from batchroute.errors import OutputError
from batchroute.store.rundir import atomic_file

__all__ = ["LEDGER_DIR", "BatchLedger", "Submission"]

LEDGER_DIR: Final = "batches"


class SubmissionState:
    """Where a submission stands."""

    PREPARING: Final = "preparing"
    UPLOADED: Final = "uploaded"
    OPEN: Final = "open"
    COLLECTED: Final = "collected"


@dataclass(slots=True)
class Submission:
    """One batch of rows for one model, as the ledger records it."""

    name: str
    """The record's file stem: its order among the run's submissions."""
    tier: str
    model: str
    row_keys: list[str]
    """The rows in the input file's line order: line N is `row_keys[N - 1]`."""
    first_submitted_at: str
    """ISO time the earliest of these rows was first submitted (the deadline counts from it)."""
    round: int = 0
    """0 for a first submission; n for the n-th resubmission of rows left unanswered."""
    state: str = SubmissionState.PREPARING
    input_file_id: str | None = None
    batch_id: str | None = None
    submitted_at: str | None = None
    status: str | None = None
    """The provider's last reported batch status."""
    tokens: int = 0
    """Prompt tokens enqueued (an estimate), for `batch_max_enqueued_tokens`."""
    notes: list[str] = field(default_factory=list)

    @property
    def is_collected(self) -> bool:
        return self.state == SubmissionState.COLLECTED


class BatchLedger:
    """The submissions of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = Path(run_dir) / LEDGER_DIR

    def __repr__(self) -> str:
        return f"<BatchLedger {str(self.directory)!r}>"

    def all(self) -> list[Submission]:
        """Every submission recorded, in submission order."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                found.append(Submission(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                raise OutputError(
                    f"the batch ledger record cannot be read ({exc}); it lists rows submitted to "
                    "the Batch API: restore it, or start over with --fresh",
                    path=path,
                ) from None
        return found

    def uncollected(self) -> list[Submission]:
        """The submissions whose answers are not yet in the journal."""
        return [sub for sub in self.all() if not sub.is_collected]

    def next_name(self) -> str:
        """A name sorting after every recorded submission's."""
        names = (
            [path.stem for path in self.directory.glob("*.json")] if self.directory.is_dir() else []
        )
        return f"{max((int(n) for n in names if n.isdigit()), default=0) + 1:06d}"

    def record(self, submission: Submission) -> None:
        """Write a submission's record whole (fsynced) before the caller goes on."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.directory / f"{submission.name}.json") as handle:
            handle.write(json.dumps(asdict(submission), separators=(",", ":")).encode())
