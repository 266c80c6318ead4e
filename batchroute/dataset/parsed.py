"""What a format reader hands back for each chunk, and the check that the job's columns exist."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from batchroute.errors import DatasetError

__all__ = ["Parsed", "check_columns", "value_kind"]


@dataclass(frozen=True)
class Parsed:
    """One chunk of a file: its readable rows (intermediate frame), its rejects, its columns."""

    raw: pl.DataFrame
    rejects: pl.DataFrame | None
    found: tuple[str, ...]
    """The columns (JSONL: keys) seen in this chunk, in first-seen order."""
    records: int
    """Input rows in the chunk: readable rows plus rejects."""


def _listing(found: Iterable[str]) -> str:
    names = [repr(name) for name in found]
    if not names:
        return "none"
    if len(names) > 30:
        names = [*names[:30], f"and {len(names) - 30} more"]
    return ", ".join(names)


def check_columns(
    required: Sequence[tuple[str, str]],
    *,
    found: Sequence[str],
    path: Path,
    where: str = "",
    noun: str = "column",
) -> None:
    """Raise `DatasetError` for the first required (column, setting) pair not in `found`."""
    present = set(found)
    for name, setting in required:
        if name not in present:
            raise DatasetError(
                f"has no {noun} '{name}'{where}; the {noun}s found are: {_listing(found)}",
                path=path,
                field=name,
                hint=f"set {setting} in the job to the {noun} that holds it",
            )


def value_kind(value: Any, *, list_name: str = "a list") -> str:
    """What kind of parsed value this is, for a message: "an object", "a string", "null"…"""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return list_name
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"
