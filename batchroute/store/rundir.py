"""The run directory: where a run's files live, and how each file lands there atomically.

The job's `output.dir` is a template with the fields `{name}` (the job's name), `{date}`
(YYYY-MM-DD) and `{time}` (HHMMSS), resolved against the job's base directory. Running the same
job again resolves to the same directory and resumes it; `--fresh` picks a new sibling
(`<dir>.2`, `<dir>.3`, ...) instead. Without `--fresh` the latest sibling that holds a run is
resumed, so a run started with `--fresh` is the one a plain rerun continues.

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
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from batchroute.errors import JobError, OutputError

if TYPE_CHECKING:
    from batchroute.config import Job

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "PARTS_DIR",
    "TMP_SUFFIX",
    "atomic_file",
    "fsync_dir",
    "holds_run",
    "remove_tmp_files",
    "render_dir_template",
    "resolve_run_dir",
]

MANIFEST_NAME = "run.json"
LOCK_NAME = ".lock"
PARTS_DIR = "parts"
TMP_SUFFIX = ".tmp"

_FIELD = re.compile(r"\{([^{}]*)\}")
_KNOWN_FIELDS = ("name", "date", "time")
_SIBLING = re.compile(r"^(?P<base>.+)\.(?P<n>[0-9]+)$")


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


def resolve_run_dir(job: Job, *, fresh: bool = False, now: datetime | None = None) -> Path:
    """The run directory for this job; it is not created here.

    `now` defaults to the local time, which is what a person reading `runs/<name>/<date>`
    expects. With `fresh`, a directory that already holds a run is left alone and the next free
    sibling `<dir>.N` is returned; without it, the latest sibling holding a run is resumed.
    """
    moment = now if now is not None else datetime.now().astimezone()
    rendered = render_dir_template(
        job.config.output.dir, name=job.name, now=moment, job_path=job.path
    )
    base = job.resolve(Path(rendered))
    siblings = _numbered_siblings(base)
    latest = max((n for n, path in siblings.items() if holds_run(path)), default=None)
    if latest is None:
        return base
    if not fresh:
        return siblings[latest]
    return base.with_name(f"{base.name}.{latest + 1}")


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
