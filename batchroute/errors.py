"""Every error batchroute raises on purpose.

    BatchrouteError                 root; the CLI catches it once and exits with `exit_code`
    ├── JobError                    the job file is wrong (exit 6)
    │   └── PriceError              a model has no usable price, or a price file is bad
    ├── DatasetError                the input file is wrong (exit 6)
    ├── RunLockedError              another live process holds the run directory (exit 6)
    ├── RunAbortedError             the run cannot go on: bad key, every model gone (exit 4)
    ├── ClassifierModelError        a trained classifier file is missing or incompatible (exit 6)
    ├── EngineUnavailableError      the chosen engine (ray) is not installed or unreachable (exit 6)
    └── OutputError                 a run directory or report cannot be read or written (exit 7)
        └── CacheError              the response cache file cannot be created or read

Each error carries the fields that locate the problem and builds its message from them, so the
message always says what failed, where, and what to do.
"""

from __future__ import annotations

from pathlib import Path

from batchroute.exitcodes import ExitCode

__all__ = [
    "BatchrouteError",
    "CacheError",
    "ClassifierModelError",
    "DatasetError",
    "EngineUnavailableError",
    "JobError",
    "OutputError",
    "PriceError",
    "RunAbortedError",
    "RunLockedError",
]


class BatchrouteError(Exception):
    """Root of batchroute's errors; `exit_code` is what the CLI exits with."""

    exit_code: ExitCode = ExitCode.SOME_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class JobError(BatchrouteError):
    """The job file is missing, malformed, or describes an impossible job."""

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, message: str, *, path: Path | str | None = None, key: str | None = None):
        self.path = Path(path) if path is not None else None
        self.key = key
        where = str(path) if path is not None else "job"
        if key:
            where = f"{where}: {key}"
        super().__init__(f"{where}: {message}")


class PriceError(JobError):
    """A model has no usable price, or a price file cannot be read."""


class DatasetError(BatchrouteError):
    """The input file cannot be read as the job describes it."""

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        path: Path | str,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
        byte_offset: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.row = row
        self.field = field
        self.byte_offset = byte_offset
        self.hint = hint
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if row is not None:
            where += f", row {row}"
        if byte_offset is not None:
            where += f", byte {byte_offset}"
        if field is not None:
            where += f", field '{field}'"
        text = f"{where}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class RunLockedError(BatchrouteError):
    """Another live process is running this job in the same run directory."""

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, *, run_dir: Path, pid: int) -> None:
        self.run_dir = run_dir
        self.pid = pid
        super().__init__(
            f"{run_dir}: another batchroute run (pid {pid}) is using this run directory; "
            "wait for it to finish, or stop it, or use --fresh to start a new run directory"
        )


class RunAbortedError(BatchrouteError):
    """The run cannot continue: the endpoint refused the key, or no model is left to call."""

    exit_code: ExitCode = ExitCode.ABORTED

    def __init__(self, message: str, *, model: str | None = None, status_code: int | None = None):
        self.model = model
        self.status_code = status_code
        super().__init__(message)


class ClassifierModelError(BatchrouteError):
    """A trained classifier file is missing, corrupt, or from an incompatible version."""

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, message: str, *, path: Path | str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


class OutputError(BatchrouteError):
    """A run directory or a report cannot be read or written."""

    exit_code: ExitCode = ExitCode.OUTPUT

    def __init__(self, message: str, *, path: Path | str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


class CacheError(OutputError):
    """The response cache file cannot be created, opened or read (corrupt, locked, foreign)."""


class EngineUnavailableError(BatchrouteError):
    """The engine the job or `--engine` chose cannot run here: not installed, or unreachable."""

    exit_code: ExitCode = ExitCode.BAD_INPUT
