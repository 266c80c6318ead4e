"""Rows that cannot be read: an error under `on_invalid_row: fail`, a reject under `skip`."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import polars as pl

from batchroute.errors import DatasetError

__all__ = ["RAW_CHARS", "REJECT_SCHEMA", "Problems"]

REJECT_SCHEMA: Final = pl.Schema({"line": pl.Int64, "reason": pl.String, "raw": pl.String})
"""rejects.parquet: the row's `line` (as in results.parquet), why it was set aside, and its text."""

RAW_CHARS = 1000
"""How much of a rejected row's text is kept."""

_SKIP_HINT = (
    "fix the row, or set input.on_invalid_row: skip to set such rows aside in rejects.parquet "
    "and run the rest"
)


class Problems:
    """The row-level problems of one chunk, raised at once or collected as rejects."""

    def __init__(self, *, path: Path, skip: bool) -> None:
        self.path = path
        self.skip = skip
        self._lines: list[int] = []
        self._reasons: list[str] = []
        self._raws: list[str] = []

    def add(
        self,
        reason: str,
        *,
        line: int,
        raw: bytes | str,
        field: str | None = None,
        where_line: int | None = None,
        where_row: int | None = None,
    ) -> None:
        """Record a row that cannot be read; under `fail`, raise `DatasetError` for it.

        `line` is the row's `line` as results.parquet gives it; `where_line` and `where_row`
        locate it in the error message when they differ (a CSV row spanning several lines).
        """
        if not self.skip:
            raise DatasetError(
                reason,
                path=self.path,
                line=line if where_line is None else where_line,
                row=where_row,
                field=field,
                hint=_SKIP_HINT,
            )
        text = raw if isinstance(raw, str) else raw[: RAW_CHARS * 4].decode("utf-8", "replace")
        self._lines.append(line)
        self._reasons.append(reason if field is None else f"{field}: {reason}")
        self._raws.append(text[:RAW_CHARS])

    def __len__(self) -> int:
        return len(self._lines)

    def frame(self) -> pl.DataFrame:
        """The collected rejects, in file order."""
        frame = pl.DataFrame(
            {"line": self._lines, "reason": self._reasons, "raw": self._raws}, schema=REJECT_SCHEMA
        )
        return frame.sort("line")

    def __repr__(self) -> str:
        policy = "skip" if self.skip else "fail"
        return f"<Problems {str(self.path)!r} [policy: {policy}, rejects: {len(self)}]>"
