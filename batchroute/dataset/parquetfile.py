"""Parquet input, read in record batches of only the columns the job uses.

Columns keep their Parquet types (metadata passes through as stored); id, prompt, system prompt
and tier hint are cast to text. A row's `line` is its 1-based row number in the file.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

from batchroute.dataset.messages import messages_from_native
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
from batchroute.dataset.rejects import Problems
from batchroute.dataset.source import Source
from batchroute.errors import DatasetError

__all__ = ["read_parquet"]


def _as_text(frame: pl.DataFrame, name: str, *, source: Source) -> pl.Expr:
    dtype = frame.schema[name]
    if dtype.is_nested() or dtype == pl.Binary:
        raise DatasetError(
            f"column '{name}' holds {dtype} values, not text",
            path=source.path,
            field=name,
            hint="map the setting to a column of strings (or numbers, for ids)",
        )
    return pl.col(name).cast(pl.String)


def read_parquet(
    source: Source, columns: ColumnMap, *, skip: bool, chunk_rows: int
) -> Iterator[Parsed]:
    """The file's rows in record batches of `chunk_rows`, read into the intermediate frame."""
    # Imported here: a run over JSONL or CSV input never loads pyarrow (issue 15, start-up CPU).
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        file = pq.ParquetFile(source.path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(
            f"is not a readable Parquet file ({exc})",
            path=source.path,
            hint="check input.path, or set input.format if the file is JSONL or CSV",
        ) from None
    with file:
        names = file.schema_arrow.names
        check_columns(columns.required(), found=names, path=source.path)
        wanted = [columns.text_column, columns.id, columns.system, columns.tier]
        wanted += [columns.json_output, *columns.metadata]
        used = [n for n in dict.fromkeys(wanted) if n is not None and n in names]
        row = 0
        try:
            for batch in file.iter_batches(batch_size=chunk_rows, columns=used):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                yield _chunk_frame(
                    frame, row, columns=columns, source=source, skip=skip, found=tuple(names)
                )
                row += frame.height
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(
                f"cannot be read past row {row} ({exc})",
                path=source.path,
                row=row + 1,
                hint="the file may be truncated or corrupt",
            ) from None


def _chunk_frame(
    frame: pl.DataFrame,
    row: int,
    *,
    columns: ColumnMap,
    source: Source,
    skip: bool,
    found: tuple[str, ...],
) -> Parsed:
    names = frame.columns
    count = frame.height
    frame = frame.with_columns(
        pl.int_range(row + 1, row + 1 + count, dtype=pl.Int64).alias(LINE)
    ).with_columns(pl.col(LINE).alias(ORDINAL))
    problems = Problems(path=source.path, skip=skip)
    if columns.id is not None:
        ids = frame.select(_as_text(frame, columns.id, source=source)).to_series()
        missing = (ids.is_null() | (ids == "")).to_numpy()
        for i in np.flatnonzero(missing).tolist():
            problems.add(
                "the row has an empty id",
                line=row + 1 + i,
                raw=str(frame.row(i, named=True))[:1000],
                field=columns.id,
            )
        frame = frame.with_columns(ids.alias(ID)).filter(~pl.Series(missing))
    else:
        frame = frame.with_columns(pl.lit(None, pl.String).alias(ID))

    def text(name: str | None) -> pl.Expr:
        if name is None or name not in names:
            return pl.lit(None, pl.String)
        return _as_text(frame, name, source=source)

    raw = frame.select(
        pl.col(LINE),
        pl.col(ORDINAL),
        pl.col(ID),
        text(columns.system).alias(SYSTEM),
        text(columns.tier).alias(TIER),
        pl.lit(None, pl.String).alias(INVALID),
        (pl.col(columns.json_output) if columns.json_output in names else pl.lit(None)).alias(JSON),
        *(pl.col(name) for name in columns.metadata),
        *([] if columns.messages is not None else [text(columns.prompt).alias(PROMPT)]),
    )
    if columns.messages is not None:
        messages, reasons = messages_from_native(frame[columns.messages])
        raw = raw.with_columns(messages.alias(MESSAGES), reasons.alias(INVALID))
    return Parsed(raw=raw, rejects=problems.frame(), found=found, records=count)
