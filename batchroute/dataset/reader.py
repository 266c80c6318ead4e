"""The input as the runner sees it: `open_dataset`, a full `check`, then `batches` of rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from batchroute.config import Job
from batchroute.dataset.csvfile import read_csv
from batchroute.dataset.jsonl import is_openai_batch, read_jsonl
from batchroute.dataset.normalize import BASE_SCHEMA, ColumnMap, normalize
from batchroute.dataset.parquetfile import read_parquet
from batchroute.dataset.parsed import Parsed, check_columns
from batchroute.dataset.rejects import REJECT_SCHEMA
from batchroute.dataset.source import Source, resolve_source
from batchroute.errors import DatasetError
from batchroute.schema import INPUT_SCHEMA

__all__ = ["Batch", "Dataset", "DatasetSummary", "open_dataset"]

_DUPLICATES_SHOWN = 5
_HASH_SEED = 0x5EED_BA7C


@dataclass(frozen=True)
class Batch:
    """A slice of the input in file order: rows to run, and rows set aside as rejects."""

    rows: pl.DataFrame
    """`INPUT_SCHEMA`, then the job's metadata columns; `row_index` runs on across batches."""
    rejects: pl.DataFrame
    """`REJECT_SCHEMA`; empty unless `on_invalid_row: skip` set rows aside."""


@dataclass(frozen=True)
class DatasetSummary:
    """What a full pass over the input found."""

    path: Path
    format: str
    rows: int
    """Rows that will run (including `invalid` ones, which fail without being sent)."""
    rejected: int
    """Rows set aside under `on_invalid_row: skip`."""
    invalid: int
    """Rows that run but carry an `invalid_reason` (an empty prompt, a non-text message...)."""
    columns: tuple[str, ...]
    """The columns (JSONL: keys) found in the file."""

    @property
    def input_rows(self) -> int:
        """Every row of the file: `rows` + `rejected`."""
        return self.rows + self.rejected


def open_dataset(job: Job) -> Dataset:
    """The job's input, with its format, compression and encoding settled; nothing read yet."""
    config = job.config.input
    source = resolve_source(config, path=job.resolve(config.path))
    batch = source.format == "openai_batch" or (
        source.format == "jsonl" and is_openai_batch(source)
    )
    columns = ColumnMap.from_config(config, openai_batch=batch)
    reserved = set(INPUT_SCHEMA) | set(BASE_SCHEMA) | {"_prompt", "_messages", "_json"}
    for name in columns.metadata:
        if name in reserved:
            raise DatasetError(
                f"input.metadata_columns names '{name}', which batchroute uses for its own column",
                path=source.path,
                field=name,
                hint="rename the column in the file, or leave it out of metadata_columns",
            )
    return Dataset(
        source,
        columns,
        skip=config.on_invalid_row == "skip",
        allow_duplicate_ids=config.allow_duplicate_ids,
        batch_rows=job.config.run.batch_rows,
    )


class Dataset:
    """An input file, read in bounded batches; `check` reads it all once before anything runs."""

    def __init__(
        self,
        source: Source,
        columns: ColumnMap,
        *,
        skip: bool = False,
        allow_duplicate_ids: bool = False,
        batch_rows: int = 10_000,
    ) -> None:
        self.source = source
        self.columns = columns
        self.skip = skip
        self.allow_duplicate_ids = allow_duplicate_ids
        self.batch_rows = batch_rows
        self._summary: DatasetSummary | None = None
        self._metadata_schema: dict[str, pl.DataType] = {}

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def format(self) -> str:
        return "openai_batch" if self.columns.openai_batch else self.source.format

    def _parsed(self, chunk_rows: int) -> Iterator[Parsed]:
        reader = {"csv": read_csv, "parquet": read_parquet}.get(self.source.format, read_jsonl)
        return reader(self.source, self.columns, skip=self.skip, chunk_rows=chunk_rows)

    def check(self) -> DatasetSummary:
        """Read the whole input once, without calling any API; raise `DatasetError` if unfit."""
        rows = rejected = invalid = 0
        found: dict[str, None] = {}
        metadata: dict[str, pl.DataType] = {}
        hashes: list[npt.NDArray[np.uint64]] = []
        lines: list[npt.NDArray[np.int64]] = []
        first_reject: str | None = None
        for parsed in self._parsed(self.batch_rows):
            frame = normalize(parsed.raw, self.columns, row_offset=rows)
            rows += frame.height
            if parsed.rejects is not None and parsed.rejects.height:
                rejected += parsed.rejects.height
                if first_reject is None:
                    first = parsed.rejects.row(0, named=True)
                    first_reject = f"line {first['line']}: {first['reason']}"
            invalid += frame.height - frame["invalid_reason"].null_count()
            found.update(dict.fromkeys(parsed.found))
            self._unify(metadata, frame)
            if self.columns.id is not None and not self.allow_duplicate_ids:
                hashes.append(frame["id"].hash(_HASH_SEED).to_numpy())
                lines.append(frame["line"].to_numpy())
        if rows + rejected == 0:
            if self.path.stat().st_size == 0:
                what = "is empty: it has no rows"
            elif self.source.format == "csv":
                what = "has no rows: only a header"
            else:
                what = "has no rows: only blank lines"
            raise DatasetError(what, path=self.path, hint="point input.path at the data")
        if rows == 0:
            raise DatasetError(
                f"none of its {rejected} rows could be read (first, {first_reject})",
                path=self.path,
                hint="check input.format and the column settings against the file",
            )
        check_columns(self.columns.required(), found=list(found), path=self.path)
        if hashes:
            self._check_duplicates(np.concatenate(hashes), np.concatenate(lines))
        self._metadata_schema = metadata
        self._summary = DatasetSummary(
            path=self.path,
            format=self.format,
            rows=rows,
            rejected=rejected,
            invalid=invalid,
            columns=tuple(found),
        )
        return self._summary

    def _unify(self, metadata: dict[str, pl.DataType], frame: pl.DataFrame) -> None:
        """Widen each metadata column's type to cover this chunk (an int column meeting text)."""
        for name in self.columns.metadata:
            dtype = frame.schema[name]
            seen = metadata.get(name)
            if seen is None or seen == dtype:
                metadata[name] = dtype
                continue
            try:
                both = pl.concat(
                    [pl.DataFrame(schema={name: seen}), pl.DataFrame(schema={name: dtype})],
                    how="vertical_relaxed",
                )
            except pl.exceptions.PolarsError:
                raise DatasetError(
                    f"metadata column holds values of different types ({seen} and {dtype})",
                    path=self.path,
                    line=int(frame["line"][0]),
                    field=name,
                    hint="give the column one type throughout the file",
                ) from None
            metadata[name] = both.schema[name]

    def _check_duplicates(
        self, hashes: npt.NDArray[np.uint64], lines: npt.NDArray[np.int64]
    ) -> None:
        """Find ids that repeat by 64-bit hash, then confirm them from the file itself."""
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        repeats = np.flatnonzero(ordered[1:] == ordered[:-1])
        if not len(repeats):
            return
        suspects = np.unique(lines[order][np.concatenate((repeats, repeats + 1))])
        seen: dict[str, list[int]] = {}
        offset = 0
        for parsed in self._parsed(self.batch_rows):
            frame = normalize(parsed.raw, self.columns, row_offset=offset)
            offset += frame.height
            hits = frame.filter(pl.col("line").is_in(suspects.tolist()))
            for row_id, line in hits.select("id", "line").iter_rows():
                seen.setdefault(row_id, []).append(line)
        duplicates = sorted((ls for ls in seen.values() if len(ls) > 1), key=lambda ls: ls[0])
        if not duplicates:
            return  # distinct ids whose hashes collided
        by_line = {ls[0]: row_id for row_id, ls in seen.items()}
        shown = [
            f"'{by_line[ls[0]]}' on lines {', '.join(map(str, ls[:5]))}"
            + (f" and {len(ls) - 5} more" if len(ls) > 5 else "")
            for ls in duplicates[:_DUPLICATES_SHOWN]
        ]
        more = len(duplicates) - _DUPLICATES_SHOWN
        raise DatasetError(
            f"has duplicate ids: {'; '.join(shown)}"
            + (f"; and {more} more duplicated ids" if more > 0 else ""),
            path=self.path,
            field=self.columns.id,
            hint="give every row a unique id, or set input.allow_duplicate_ids: true",
        )

    def batches(self, batch_rows: int | None = None) -> Iterator[Batch]:
        """The input in file order, `batch_rows` input rows at a time (runs `check` first)."""
        if self._summary is None:
            self.check()
        offset = 0
        for parsed in self._parsed(batch_rows or self.batch_rows):
            rows = normalize(parsed.raw, self.columns, row_offset=offset)
            if self._metadata_schema:
                rows = rows.cast(self._metadata_schema)  # type: ignore[arg-type]
            offset += rows.height
            rejects = parsed.rejects
            if rejects is None:
                rejects = pl.DataFrame(schema=REJECT_SCHEMA)
            yield Batch(rows=rows, rejects=rejects)

    def __repr__(self) -> str:
        state = "unchecked"
        if self._summary is not None:
            state = f"rows: {self._summary.rows}, rejected: {self._summary.rejected}"
        return f"<Dataset {str(self.path)!r} [format: {self.format}, {state}]>"
