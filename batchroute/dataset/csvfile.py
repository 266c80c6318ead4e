"""CSV input (RFC 4180): quoted fields may hold separators, doubled quotes and newlines.

Every field is read as text, so "007" stays "007" and nothing depends on what a type guesser saw
in the first rows. An unquoted empty field is null; a quoted empty field ("") is an empty string.
A row's `line` is its data row number counting the header as line 1; error messages also give the
physical line where the row starts, since quoted newlines make the two differ.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import numpy as np
import polars as pl

from batchroute.dataset.messages import messages_from_json_text
from batchroute.dataset.normalize import (
    ID,
    INVALID,
    JSON,
    LINE,
    MESSAGES,
    ORDINAL,
    PROMPT,
    SYSTEM,
    TIER,
    ColumnMap,
)
from batchroute.dataset.parsed import Parsed, check_columns
from batchroute.dataset.records import RecordChunk, iter_record_chunks
from batchroute.dataset.rejects import Problems
from batchroute.dataset.source import Source, iter_blocks
from batchroute.errors import DatasetError

__all__ = ["read_csv"]

_QUOTE, _COMMA = 34, 44
_MALFORMED = (
    "is not valid CSV: a quote must open a field and close it just before a comma or the end "
    'of the line; inside a quoted field write a quote as ""'
)


def _header(chunk: RecordChunk, columns: ColumnMap, *, source: Source) -> list[str]:
    text = chunk.record(0).decode("utf-8")
    names = next(csv.reader(io.StringIO(text)), [])
    check_columns(columns.required(), found=names, path=source.path, where=" in its header")
    used = {name for name, _ in columns.required()} | {columns.tier, columns.json_output}
    for name in used:
        if names.count(name) > 1:
            positions = [str(i + 1) for i, n in enumerate(names) if n == name]
            raise DatasetError(
                f"its header names column '{name}' more than once (columns {', '.join(positions)})",
                path=source.path,
                line=int(chunk.lines[0]),
                field=name,
                hint="rename the columns so each name is unique",
            )
    return names


def _field_counts(chunk: RecordChunk) -> np.ndarray:
    """Fields per record: commas outside quotes, plus one."""
    arr = np.frombuffer(chunk.data, dtype=np.uint8)
    quotes = np.flatnonzero(arr == _QUOTE)
    commas = np.flatnonzero(arr == _COMMA)
    if len(quotes):
        commas = commas[(np.searchsorted(quotes, commas) & 1) == 0]
    return np.searchsorted(commas, chunk.ends) - np.searchsorted(commas, chunk.starts) + 1


def _parse(data: bytes, indices: list[int]) -> pl.DataFrame:
    return pl.read_csv(data, has_header=False, infer_schema=False, columns=indices)


def _text(chunk: RecordChunk, rows: list[int]) -> bytes:
    return b"".join(chunk.record(i) + b"\n" for i in rows)


def _parse_rows(
    chunk: RecordChunk, rows: list[int], indices: list[int], bad: list[int]
) -> pl.DataFrame | None:
    """Parse `rows`; on failure, halve until the rows polars rejects are found (into `bad`)."""
    try:
        frame = _parse(_text(chunk, rows), indices)
    except pl.exceptions.PolarsError:
        frame = None
    if frame is not None and frame.height == len(rows):
        return frame
    if len(rows) == 1:
        bad.append(rows[0])
        return None
    middle = len(rows) // 2
    parts = [_parse_rows(chunk, part, indices, bad) for part in (rows[:middle], rows[middle:])]
    frames = [frame for frame in parts if frame is not None]
    return pl.concat(frames) if frames else None


def _chunk_frame(
    chunk: RecordChunk,
    first: int,
    *,
    header: list[str],
    columns: ColumnMap,
    data_row: int,
    problems: Problems,
) -> Parsed:
    count = len(chunk) - first
    data_rows = np.arange(data_row + 1, data_row + 1 + count, dtype=np.int64)
    fields = _field_counts(chunk)[first:]
    keep = [first + i for i in np.flatnonzero(fields == len(header)).tolist()]
    for i in np.flatnonzero(fields != len(header)).tolist():
        problems.add(
            f"has {fields[i]} fields, but the header has {len(header)}",
            line=int(data_rows[i]) + 1,
            raw=chunk.record(first + i),
            where_line=int(chunk.lines[first + i]),
            where_row=int(data_rows[i]),
        )
    wanted = [columns.text_column, columns.id, columns.system, columns.tier, columns.json_output]
    wanted += list(columns.metadata)
    names = [n for n in dict.fromkeys(wanted) if n is not None and n in header]
    indices = sorted(header.index(n) for n in names)
    gaps = chunk.starts[first + 1 :] - chunk.ends[first:-1]  # 1 or 2 without a blank line
    contiguous = len(keep) == count and bool(np.all(gaps <= 2))
    bad: list[int] = []
    frame: pl.DataFrame | None = None
    if not keep:
        pass
    elif contiguous:
        try:
            frame = _parse(chunk.data[chunk.starts[first] :], indices)
        except pl.exceptions.PolarsError:
            frame = None
        if frame is None or frame.height != len(keep):
            frame = _parse_rows(chunk, keep, indices, bad)
    else:
        frame = _parse_rows(chunk, keep, indices, bad)
    for row in bad:
        problems.add(
            _MALFORMED,
            line=int(data_rows[row - first]) + 1,
            raw=chunk.record(row),
            where_line=int(chunk.lines[row]),
            where_row=int(data_rows[row - first]),
        )
    bad_set = set(bad)
    keep = [i for i in keep if i not in bad_set]
    if frame is None:
        frame = pl.DataFrame(schema={f"column_{i}": pl.String for i in indices})
    frame = frame.rename({f"column_{i}": header[i] for i in indices})
    rows = np.asarray(keep, dtype=np.int64) - first
    frame = frame.with_columns(
        pl.Series(ORDINAL, data_rows[rows], dtype=pl.Int64),
        pl.Series(LINE, data_rows[rows] + 1, dtype=pl.Int64),
    )
    if columns.id is not None:
        missing = frame.select(pl.col(columns.id).is_null() | (pl.col(columns.id) == ""))
        missing_rows = np.flatnonzero(missing.to_series().to_numpy())
        for i in missing_rows.tolist():
            problems.add(
                "the row has an empty id",
                line=int(frame[LINE][i]),
                raw=chunk.record(keep[i]),
                field=columns.id,
                where_line=int(chunk.lines[keep[i]]),
                where_row=int(frame[ORDINAL][i]),
            )
        if len(missing_rows):
            frame = frame.filter(~missing.to_series())

    def column(name: str | None) -> pl.Expr:
        return pl.col(name) if name is not None and name in header else pl.lit(None, pl.String)

    raw = frame.select(
        pl.col(LINE),
        pl.col(ORDINAL),
        column(columns.id).alias(ID),
        column(columns.system).alias(SYSTEM),
        column(columns.tier).alias(TIER),
        pl.lit(None, pl.String).alias(INVALID),
        column(columns.json_output).alias(JSON),
        *(pl.col(name) for name in columns.metadata),
    )
    if columns.messages is not None:
        messages, reasons = messages_from_json_text(frame[columns.messages])
        raw = raw.with_columns(messages.alias(MESSAGES), reasons.alias(INVALID))
    else:
        raw = raw.with_columns(frame[columns.prompt].alias(PROMPT))
    return Parsed(raw=raw, rejects=problems.frame(), found=tuple(header), records=count)


def read_csv(
    source: Source, columns: ColumnMap, *, skip: bool, chunk_rows: int
) -> Iterator[Parsed]:
    """The file's data rows in chunks of about `chunk_rows`, read into the intermediate frame."""
    header: list[str] | None = None
    data_row = 0
    chunks = iter_record_chunks(
        iter_blocks(source),
        path=source.path,
        quoted=True,
        max_records=chunk_rows,
        check_utf8=source.is_utf8,
        header=1,
    )
    for chunk in chunks:
        first = 0
        if header is None:
            header = _header(chunk, columns, source=source)
            first = 1
        if len(chunk) == first:
            continue
        problems = Problems(path=source.path, skip=skip)
        parsed = _chunk_frame(
            chunk, first, header=header, columns=columns, data_row=data_row, problems=problems
        )
        data_row += parsed.records
        yield parsed
