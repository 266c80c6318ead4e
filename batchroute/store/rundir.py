"""The run directory: which one a session uses, where a run's files live, and atomic files.

The job's `output.dir` is a template with the fields `{name}` (the job's name), `{date}`
(YYYY-MM-DD) and `{time}` (HHMMSS), resolved against the job's base directory. Which directory
a session uses is `select_run_dir`'s rule: `--run-dir`, else a pinned `output.dir` (no date or
time in it), else the newest unfinished run of the job whatever its date, else the template for
now; `--fresh` picks a new directory (`<dir>.2`, `<dir>.3`, ... when `<dir>` holds a run).
`find_runs` lists a job's runs from their manifests.

Every file in a run directory is written through `atomic_file`: to `<name>.tmp` in the same
directory, fsynced, renamed over the final name, and the directory fsynced. A `kill -9` at any
instant therefore leaves only complete files, plus perhaps a `*.tmp` that `remove_tmp_files`
deletes and every reader ignores.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from batchroute.errors import JobError, OutputError

if TYPE_CHECKING:
    from batchroute.config import Job
    from batchroute.store.manifest import RunManifest

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "PARTS_DIR",
    "TMP_SUFFIX",
    "atomic_file",
    "fsync_dir",
    "holds_run",
    "RunDirChoice",
    "RunInfo",
    "find_runs",
    "is_pinned",
    "remove_tmp_files",
    "render_dir_template",
    "resolve_run_dir",
    "runs_below",
    "select_run_dir",
]

MANIFEST_NAME = "run.json"
LOCK_NAME = ".lock"
PARTS_DIR = "parts"
TMP_SUFFIX = ".tmp"

_FIELD = re.compile(r"\{([^{}]*)\}")
_KNOWN_FIELDS = ("name", "date", "time")
_SIBLING = re.compile(r"^(?P<base>.+)\.(?P<n>[0-9]+)$")
_FINISHED_CODES = (0, 1)
"""Exit codes of a session that settled every row: ok, and some rows failed."""


def render_dir_template(
    template: str, *, name: str, now: datetime, job_path: Path | None = None
) -> str:
    """Fill `{name}`, `{date}` and `{time}` into an `output.dir` template."""
    values = {"name": name, "date": now.strftime("%Y-%m-%d"), "time": now.strftime("%H%M%S")}

    def replace(match: re.Match[str]) -> str:
        field = match.group(1)
        if field not in values:
            raise JobError(
                f"'{{{field}}}' is not a field batchroute knows; "
                f"use {', '.join('{' + f + '}' for f in _KNOWN_FIELDS)}",
                path=job_path,
                key="output.dir",
            )
        return values[field]

    rendered = _FIELD.sub(replace, template)
    if "{" in rendered or "}" in rendered:
        raise JobError(f"'{template}' has an unmatched brace", path=job_path, key="output.dir")
    if not rendered.strip():
        raise JobError("the run directory template is empty", path=job_path, key="output.dir")
    return rendered


def holds_run(path: Path) -> bool:
    """Whether a directory already holds (part of) a run: a manifest, a lock or parts."""
    return any((path / entry).exists() for entry in (MANIFEST_NAME, LOCK_NAME, PARTS_DIR))


@dataclass(frozen=True, slots=True)
class RunDirChoice:
    """Which directory a run uses, and why (the runner says it on stderr)."""

    path: Path
    reason: str
    resumes: bool
    """Whether the directory already holds a run that this session continues."""


def is_pinned(template: str) -> bool:
    """Whether an `output.dir` template names one directory whatever the time (no date/time)."""
    return not any(field in template for field in ("{date}", "{time}"))


def select_run_dir(
    job: Job,
    *,
    run_dir: Path | None = None,
    fresh: bool = False,
    now: datetime | None = None,
) -> RunDirChoice:
    """The run directory for this session of the job; it is not created here.

    1. `run_dir` (`--run-dir`) is used as given.
    2. An `output.dir` without `{date}` or `{time}` names one directory, which every run uses.
    3. Otherwise the newest unfinished run of the job (any directory the template matches at
       any date or time, and their `.N` siblings) is resumed, so a run interrupted at 23:50 is
       resumed at 00:10, and a run started with `--fresh` meanwhile cannot capture it.
    4. With no unfinished run, the template for `now` is used: if it (or a `.N` sibling) holds
       finished runs, the newest is resumed, so nothing is bought twice.

    With `fresh`, rules 2 to 4 give way to a new directory: the template for `now`, or its next
    free sibling `<dir>.N` when that holds a run. `now` defaults to the local time, which is
    what a person reading `runs/<name>/<date>` expects.
    """
    if run_dir is not None:
        path = Path(run_dir).absolute()
        return RunDirChoice(path, "named by --run-dir", resumes=holds_run(path))
    moment = now if now is not None else datetime.now().astimezone()
    template = job.config.output.dir
    rendered = render_dir_template(template, name=job.name, now=moment, job_path=job.path)
    base = job.resolve(Path(rendered))
    if fresh:
        path = _free_sibling(base)
        return RunDirChoice(path, "a new run (--fresh)", resumes=False)
    if is_pinned(template):
        return RunDirChoice(base, "output.dir names this directory", resumes=holds_run(base))
    unfinished = [run for run in find_runs(job) if not run.finished]
    if unfinished:
        newest = max(unfinished, key=lambda run: run.last_started)
        return RunDirChoice(
            newest.path, f"the newest unfinished run of {job.name} ({newest.status})", True
        )
    held = [_run_info(path) for path in _numbered_siblings(base).values() if holds_run(path)]
    if not held:
        return RunDirChoice(base, "a new run", resumes=False)
    newest = max(held, key=lambda run: run.last_started)
    return RunDirChoice(newest.path, "the newest run for this date, reusing its answers", True)


def resolve_run_dir(job: Job, *, fresh: bool = False, now: datetime | None = None) -> Path:
    """The run directory for this job (see `select_run_dir`)."""
    return select_run_dir(job, fresh=fresh, now=now).path


def _free_sibling(base: Path) -> Path:
    siblings = _numbered_siblings(base)
    latest = max((n for n, path in siblings.items() if holds_run(path)), default=None)
    return base if latest is None else base.with_name(f"{base.name}.{latest + 1}")


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run directory of a job, as `run.json` describes it."""

    path: Path
    manifest: RunManifest | None
    problem: str | None = None
    """Why the manifest could not be read, if it could not."""

    @property
    def finished(self) -> bool:
        """Whether the run settled every row: its last session ended ok or with failed rows."""
        manifest = self.manifest
        return manifest is not None and manifest.exit_code in _FINISHED_CODES

    @property
    def status(self) -> str:
        """`running/crashed`, or how the last session ended (`ok`, `interrupted`, ...)."""
        manifest = self.manifest
        if manifest is None:
            return "unreadable" if self.problem else "never started"
        if manifest.finished_at is None:
            return "running/crashed"
        return manifest.exit_status or "unknown"

    @property
    def last_started(self) -> datetime:
        """When the run's latest session started (the directory's time when unknown)."""
        manifest = self.manifest
        if manifest is not None and manifest.sessions:
            return _aware(manifest.sessions[-1].started_at)
        if manifest is not None:
            return _aware(manifest.started_at)
        return datetime.fromtimestamp(self.path.stat().st_mtime).astimezone()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.astimezone()


def find_runs(job: Job) -> list[RunInfo]:
    """Every directory holding a run of this job: what the template matches at any date and
    time, and their `.N` siblings; oldest first."""
    pattern = render_dir_template(
        job.config.output.dir.replace("{date}", "*").replace("{time}", "*"),
        name=job.name,
        now=datetime.now(),
        job_path=job.path,
    )
    full = job.resolve(Path(pattern))
    anchor = Path(full.anchor)
    parts = full.relative_to(anchor).parts
    fixed = 0
    while fixed < len(parts) and "*" not in parts[fixed]:
        fixed += 1
    root = anchor.joinpath(*parts[:fixed])
    rest = "/".join(parts[fixed:])
    if not rest:  # pinned: the directory and its siblings
        candidates = set(_numbered_siblings(root).values())
    else:
        candidates = set(root.glob(rest)) | {
            path for path in root.glob(rest + ".*") if _SIBLING.match(path.name)
        }
    runs = [_run_info(path) for path in candidates if path.is_dir() and holds_run(path)]
    return sorted(runs, key=lambda run: (run.last_started, str(run.path)))


def runs_below(folder: Path) -> list[RunInfo]:
    """Every directory below `folder` holding a run manifest; oldest first."""
    found = [_run_info(path.parent) for path in Path(folder).rglob(MANIFEST_NAME)]
    return sorted(found, key=lambda run: (run.last_started, str(run.path)))


def _run_info(path: Path) -> RunInfo:
    from batchroute.store.manifest import read_manifest  # manifest imports this module

    try:
        return RunInfo(path, read_manifest(path))
    except OutputError as exc:
        return RunInfo(path, None, problem=str(exc))


def _numbered_siblings(base: Path) -> dict[int, Path]:
    """`base` as number 1 and each existing `base.N` as N."""
    found = {1: base}
    try:
        entries = list(base.parent.iterdir()) if base.parent.is_dir() else []
    except OSError as exc:
        raise OutputError(f"cannot list the directory ({exc.strerror})", path=base.parent) from None
    for entry in entries:
        match = _SIBLING.match(entry.name)
        if match and match.group("base") == base.name and int(match.group("n")) >= 2:
            found[int(match.group("n"))] = entry
    return found


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Write `path` all or nothing: yield a file at `path.tmp`, then fsync and rename it."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def remove_tmp_files(directory: Path) -> int:
    """Delete the `*.tmp` files a killed writer left behind; return how many there were."""
    removed = 0
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        if entry.name.endswith(TMP_SUFFIX) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
    return removed
