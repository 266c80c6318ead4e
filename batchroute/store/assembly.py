"""Final assembly: `results.parquet` and `attempts.parquet` from a run's parts, in bounded memory.

results.parquet holds every row of the latest session's index exactly once, in row_index order.
Each row takes the best record of its `row_key` over every session's parts: an `ok` record beats
a `failed` one, which beats a skipped one, and among equals the latest wins. So a row answered
by session 1 and not sent again by session 2 shows session 1's answer at session 2's row_index.
The row's position, line, id and passthrough metadata come from the index, that is, from the
current input. A row of the index with no record at all (the run stopped before sending it) is
written as `skipped_interrupted`.

Memory grows with the row count by only about 16 bytes a row (see `_Assembly._mapping`):

1. the best record of each key is chosen from the `row_key` and `status` columns only, keyed by
   a 64-bit hash of the key, giving (position of the winning record among all result parts,
   row_index) for every row of the index;
2. each result part is read once, its winning records sent to spill files by the output chunk
   (a range of `chunk_rows` row indexes) they belong to;
3. each chunk is joined to its slice of the index (parquet statistics skip the other index
   parts), checked for hash collisions against the full key, sorted, and appended as one row
   group to the output.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl

from batchroute.errors import OutputError
from batchroute.pricing.costs import failed_costs, price_attempts, price_results
from batchroute.pricing.prices import PriceTable
from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA, ErrorType, Status
from batchroute.store.parts import (
    INDEX_COLUMNS,
    collect_parts,
    list_parts,
    part_rows,
    scan_parts,
)
from batchroute.store.rundir import PARTS_DIR, atomic_file

__all__ = [
    "ATTEMPTS_NAME",
    "DEFAULT_CHUNK_ROWS",
    "RESULTS_NAME",
    "assemble_attempts",
    "assemble_results",
]

RESULTS_NAME = "results.parquet"
ATTEMPTS_NAME = "attempts.parquet"
DEFAULT_CHUNK_ROWS = 25_000
_SPILL_ROWS = 10_000  # winners buffered before a spill; memory scales with it, not the run
_READ_ROWS = 10_000  # result records read in one query while spilling
_SPILL_DIR = ".assembly"
_ATTEMPT_ROW_GROUP = 65_536
_POSITION_BITS = 40  # record positions below 2**40 (a trillion records) fit beside the rank
_POSITION_MASK = (1 << _POSITION_BITS) - 1
_NEVER_SENT = (
    "no result was recorded for this row: the run stopped before sending it; rerun to send it"
)


def assemble_results(
    run_dir: Path,
    *,
    out: Path | None = None,
    attempts_out: Path | None = None,
    session: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    prices: PriceTable | None = None,
) -> dict[str, int]:
    """Write results.parquet and attempts.parquet from the parts; return row counts by status.

    `session` is the ordinal of the session whose index defines the rows; the latest by default.
    With `prices`, the cost columns are filled as the files are written: parts hold the usage the
    API reported, and money is derived from it once, here, with the run's price table. A row's
    `failed_cost_usd` then counts its failed attempts in every session of the run directory.
    """
    run_dir = Path(run_dir)
    index_parts = list_parts(run_dir, "index")
    if session is None and index_parts:
        session = index_parts[-1].ordinal
    index_paths = [part.path for part in index_parts if part.ordinal == session]
    if not index_paths:
        raise OutputError(
            "no checkpoint index was found, so no row of the input was ever read here; "
            "run the job to create one",
            path=run_dir / PARTS_DIR,
        )
    result_paths = [part.path for part in list_parts(run_dir, "results")]
    attempts_out = attempts_out if attempts_out is not None else run_dir / ATTEMPTS_NAME
    assemble_attempts(run_dir, out=attempts_out, prices=prices)
    price: _Pricer | None = None
    if prices is not None:
        failed = failed_costs(pl.scan_parquet(attempts_out)).collect()
        price = functools.partial(price_results, failed=failed, prices=prices)
    spill = run_dir / PARTS_DIR / _SPILL_DIR
    shutil.rmtree(spill, ignore_errors=True)
    try:
        spill.mkdir(parents=True)
        counts = _Assembly(
            index_paths,
            result_paths,
            spill=spill,
            chunk_rows=chunk_rows,
            where=run_dir,
            price=price,
        ).write(out if out is not None else run_dir / RESULTS_NAME)
    except OSError as exc:
        raise OutputError(f"cannot assemble the results ({exc})", path=run_dir) from None
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return counts


def assemble_attempts(
    run_dir: Path, *, out: Path | None = None, prices: PriceTable | None = None
) -> int:
    """Write attempts.parquet: every session's attempts, in the order they were made.

    With `prices`, each attempt's `cost_usd` and `priced` are filled from its usage.
    """
    run_dir = Path(run_dir)
    out = out if out is not None else run_dir / ATTEMPTS_NAME
    rows = 0
    parts = _sized([part.path for part in list_parts(run_dir, "attempts")])
    try:
        groups = list(_consecutive_groups(parts, rows=_ATTEMPT_ROW_GROUP))
        with _parquet_out(out, ATTEMPT_SCHEMA, frames=len(groups)) as writer:
            for group, _ in groups:
                frame = _conform(_read_parts(group), ATTEMPT_SCHEMA)
                rows += writer.write(_priced_attempts(frame, prices))
    except OSError as exc:
        raise OutputError(f"cannot write the attempts ({exc})", path=out) from None
    return rows


def _priced_attempts(frame: pl.DataFrame, prices: PriceTable | None) -> pl.DataFrame:
    return frame if prices is None else price_attempts(frame.lazy(), prices).collect()


_Pricer = Callable[[pl.DataFrame], pl.DataFrame]


class _Assembly:
    """The state of one results assembly: which parts, which columns, where to spill."""

    def __init__(
        self,
        index_paths: list[Path],
        result_paths: list[Path],
        *,
        spill: Path,
        chunk_rows: int,
        where: Path,
        price: _Pricer | None = None,
    ) -> None:
        self.price = price
        self.index_paths = index_paths
        self.result_paths = result_paths
        # Every footer is read before any query spans several parts, so a damaged part is named.
        self.result_parts = _sized(result_paths)
        self.spill = spill
        self.chunk_rows = chunk_rows
        self.where = where
        # Passthrough metadata comes from the index alone, that is, from the current input: a
        # reused record keeps only its answer, never the metadata it was written with.
        known = pl.Schema({**INDEX_COLUMNS, **RESULT_SCHEMA})
        self.index_extras = _extra_schema(index_paths, known)
        metadata: dict[str, pl.DataType] = {
            name: pl.String() if dtype == pl.Null else dtype
            for name, dtype in self.index_extras.items()
        }
        self.out_schema = pl.Schema({**RESULT_SCHEMA, **metadata})
        self.record_schema = pl.Schema({**RESULT_SCHEMA, "_out": pl.Int64()})

    def write(self, out: Path) -> dict[str, int]:
        counts = dict.fromkeys(Status.ALL, 0)
        bounds = collect_parts(
            scan_parts(self.index_paths).select(
                pl.col("row_index").min().alias("lo"), pl.col("row_index").max().alias("hi")
            ),
            where=self.where,
        )
        first, last = bounds.row(0)
        chunks = 0 if first is None else len(range(first, last + 1, self.chunk_rows))
        with _parquet_out(out, self.out_schema, frames=chunks) as writer:
            if first is None:
                return counts
            # One chunk's records are what `_chunk` holds anyway: keep them in memory rather
            # than spill them to disk and read them back (issue 15: end-of-run CPU).
            held = self._spill_winners(first=first, hold=chunks == 1)
            for lo in range(first, last + 1, self.chunk_rows):
                chunk = self._chunk(lo=lo, bucket=(lo - first) // self.chunk_rows, held=held)
                if self.price is not None:
                    chunk = self.price(chunk)
                for status, n in chunk.group_by("status").len().iter_rows():
                    counts[status] = counts.get(status, 0) + n
                writer.write(chunk)
        return counts

    def _spill_winners(self, *, first: int, hold: bool = False) -> list[pl.DataFrame] | None:
        """Read each result part once; spill its winning records to their output chunk's dir.

        With `hold` (a single output chunk), nothing is spilled: the records are returned.
        """
        mapping = self._mapping()
        positions = mapping.get_column("_g")
        start = 0
        pending: list[pl.DataFrame] = []
        flushes = 0
        for group, rows in _consecutive_groups(self.result_parts, rows=_READ_ROWS):
            lo = positions.search_sorted(start, side="left")
            hi = positions.search_sorted(start + rows, side="left")
            if hi > lo:
                wanted = mapping.slice(lo, hi - lo)
                local = (wanted.get_column("_g") - start).cast(pl.UInt32)
                records = _read_parts(group)[local].with_columns(
                    wanted.get_column("row_index").alias("_out")
                )
                pending.append(_conform(records, self.record_schema))
                if not hold and sum(frame.height for frame in pending) >= _SPILL_ROWS:
                    flushes += 1
                    self._write_buckets(pl.concat(pending), first=first, flush=flushes)
                    pending.clear()
            start += rows
        if hold:
            return pending
        if pending:
            self._write_buckets(pl.concat(pending), first=first, flush=flushes + 1)
        return None

    def _mapping(self) -> pl.DataFrame:
        """(position of the winning record, row_index), for each index row with a record."""
        if not self.result_paths:
            return pl.DataFrame(schema={"_g": pl.Int64, "row_index": pl.Int64})
        winners = (
            _scan_records(self.result_paths)
            .select(
                _key_hash("row_key").alias("_h"),
                (_rank() * (1 << _POSITION_BITS) + pl.col("_g").cast(pl.Int64)).alias("_score"),
            )
            .group_by("_h")
            .agg(pl.col("_score").max())
        )
        query = (
            scan_parts(self.index_paths)
            .select("row_index", _key_hash("row_key").alias("_h"))
            .join(winners, on="_h", how="inner")
            .select((pl.col("_score") & _POSITION_MASK).alias("_g"), "row_index")
            .sort("_g")
        )
        return collect_parts(query, where=self.where, engine="streaming")

    def _write_buckets(self, frame: pl.DataFrame, *, first: int, flush: int) -> None:
        bucket = ((pl.col("_out") - first) // self.chunk_rows).alias("_bucket")
        pieces = frame.with_columns(bucket).partition_by("_bucket", as_dict=True)
        for key, piece in pieces.items():
            directory = self.spill / _bucket_name(int(str(key[0])))
            directory.mkdir(exist_ok=True)
            piece.drop("_bucket").write_ipc(directory / f"{flush:06d}.arrow", compression="lz4")

    def _chunk(
        self, *, lo: int, bucket: int, held: list[pl.DataFrame] | None = None
    ) -> pl.DataFrame:
        """The output rows with lo <= row_index < lo + chunk_rows, sorted; their records are
        `held`, or else read from the bucket's spill files."""
        index = collect_parts(
            scan_parts(self.index_paths)
            .filter(pl.col("row_index").is_between(lo, lo + self.chunk_rows, closed="left"))
            .select(*INDEX_COLUMNS, *self.index_extras),
            where=self.where,
        ).unique("row_index", keep="last", maintain_order=True)
        if held is None:
            directory = self.spill / _bucket_name(bucket)
            spilled = sorted(directory.glob("*.arrow")) if directory.is_dir() else []
            held = [pl.read_ipc(path) for path in spilled]
        records = pl.concat(held) if held else pl.DataFrame(schema=self.record_schema)
        joined = _attach(index, records)
        collided = joined.filter(pl.col("row_key_rec") != pl.col("row_key"))
        if collided.height:
            joined = _attach(index, self._repair(records, collided))
        return joined.select(self._output_columns()).sort("row_index")

    def _repair(self, records: pl.DataFrame, collided: pl.DataFrame) -> pl.DataFrame:
        """Records with those fetched through a 64-bit hash collision replaced by exact ones."""
        bad = collided.select("row_index", "row_key")
        exact = collect_parts(
            _scan_records(self.result_paths)
            .filter(pl.col("row_key").is_in(bad.get_column("row_key").unique().implode()))
            .sort([_rank(), pl.col("_g")])
            .unique("row_key", keep="last", maintain_order=True)
            .drop("_g"),
            where=self.where,
        )
        fixed = bad.rename({"row_index": "_out"}).join(exact, on="row_key", how="inner")
        kept = records.filter(~pl.col("_out").is_in(bad.get_column("row_index").implode()))
        return pl.concat([kept, _conform(fixed, self.record_schema)])

    def _output_columns(self) -> list[pl.Expr]:
        never_sent = pl.col("status").is_null()

        def unless_never_sent(value: object, name: str) -> pl.Expr:
            return pl.when(never_sent).then(pl.lit(value)).otherwise(pl.col(name))

        fields = {
            "row_index": pl.col("row_index"),
            "row_key": pl.col("row_key"),
            "id": pl.coalesce("id", "id_rec"),
            "line": pl.coalesce("line", "line_rec"),
            "status": pl.col("status").fill_null(Status.SKIPPED_INTERRUPTED),
            "error_type": unless_never_sent(ErrorType.INTERRUPTED, "error_type"),
            "error_message": unless_never_sent(_NEVER_SENT, "error_message"),
        }
        for name in ("attempts", "fallback_depth", "cost_usd", "failed_cost_usd"):
            fields[name] = unless_never_sent(0, name)
        fields["cache_hit"] = pl.col("cache_hit").fill_null(False)
        fields["cache_saved_usd"] = unless_never_sent(0, "cache_saved_usd")
        return [
            fields.get(name, pl.col(name)).cast(dtype).alias(name)
            for name, dtype in self.out_schema.items()
        ]


def _attach(index: pl.DataFrame, records: pl.DataFrame) -> pl.DataFrame:
    """Index rows beside their records; clashing record columns get the suffix `_rec`."""
    return index.join(records, left_on="row_index", right_on="_out", how="left", suffix="_rec")


def _key_hash(column: str) -> pl.Expr:
    """A 64-bit hash of a key, only ever compared within one process (polars seeds it)."""
    return pl.col(column).hash()


def _rank() -> pl.Expr:
    """How final a record is: ok (2) beats failed (1) beats skipped (0)."""
    return (
        pl.when(pl.col("status") == Status.OK)
        .then(2)
        .when(pl.col("status") == Status.FAILED)
        .then(1)
        .otherwise(0)
        .cast(pl.Int64)
    )


def _scan_records(result_paths: list[Path]) -> pl.LazyFrame:
    """All result records, numbered `_g` in the order they were written."""
    return pl.scan_parquet(
        result_paths,
        glob=False,
        row_index_name="_g",
        missing_columns="insert",
        extra_columns="ignore",
    )


def _bucket_name(number: int) -> str:
    return f"b{number:08d}"


def _conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    present = set(frame.columns)
    return frame.select(
        pl.col(name).cast(dtype) if name in present else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in schema.items()
    )


def _read_parts(paths: list[Path]) -> pl.DataFrame:
    """Consecutive parts as one frame, in order; a column a part lacks reads as null there.

    Unlike `scan_parts`, which takes its columns from the first part, a column that only a
    later part has is kept (parts from sessions with other metadata columns).
    """
    scans = [pl.scan_parquet(path) for path in paths]
    where = paths[0] if len(paths) == 1 else paths[0].parent
    return collect_parts(pl.concat(scans, how="diagonal_relaxed"), where=where)


def _sized(paths: list[Path]) -> list[tuple[Path, int]]:
    """Each part with its row count; a part whose footer cannot be read is named in the error.

    Every footer is read in one query (a query costs more than a footer: issue 15, end-of-run
    CPU); only if it fails are the parts read one by one, to name the damaged one.
    """
    if not paths:
        return []
    counts = pl.concat([pl.scan_parquet(path).select(pl.len()) for path in paths])
    try:
        sizes = counts.collect().to_series().to_list()
    except (pl.exceptions.PolarsError, OSError):
        sizes = [part_rows(path) for path in paths]  # raises, naming the damaged part
    return list(zip(paths, (int(n) for n in sizes), strict=True))


def _consecutive_groups(
    parts: list[tuple[Path, int]], *, rows: int
) -> Iterator[tuple[list[Path], int]]:
    """The parts in order, gathered into runs of at least `rows` rows (the last may be short).

    Reading a run of small parts in one query costs a fraction of reading them one by one: a
    fast run's parts hold a few hundred rows each.
    """
    group: list[Path] = []
    total = 0
    for path, count in parts:
        group.append(path)
        total += count
        if total >= rows:
            yield group, total
            group, total = [], 0
    if group:
        yield group, total


def _extra_schema(paths: list[Path], known: pl.Schema) -> pl.Schema:
    """The columns beyond `known` across some parts, in first-seen order, with common types."""
    empties = [
        pl.DataFrame(schema={k: v for k, v in _read_schema(path).items() if k not in known})
        for path in paths
    ]
    if not empties:
        return pl.Schema()
    return pl.concat(empties, how="diagonal_relaxed").schema


def _read_schema(path: Path) -> dict[str, pl.DataType]:
    try:
        return pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise OutputError(f"a checkpoint part cannot be read ({exc})", path=path) from None


class _ParquetOut:
    """One Parquet file written from frames in order, all or nothing (`atomic_file`).

    A file of one frame (every run of up to `chunk_rows` rows) is written by polars. A file of
    several goes through pyarrow's ParquetWriter, a row group a frame, so memory holds one
    frame, not the file. pyarrow is imported only then: its import is a twelfth of a second of
    a small run's CPU (issue 15, `benchmarks/bench_overhead.py`).
    """

    def __init__(self, handle: IO[bytes], schema: pl.Schema, *, frames: int) -> None:
        self.handle = handle
        self.schema = schema
        self.single = frames <= 1
        self._written = False
        self._writer: Any = None

    def write(self, frame: pl.DataFrame) -> int:
        """Append a frame, cast to the file's schema if it is not in it; its row count."""
        if frame.schema != self.schema:
            frame = frame.select(pl.col(name).cast(dtype) for name, dtype in self.schema.items())
        if self.single:
            if self._written:
                raise RuntimeError("a one-frame Parquet file was given a second frame")
            frame.write_parquet(self.handle, compression="zstd")
        else:
            self._arrow_writer().write_table(frame.to_arrow())
        self._written = True
        return frame.height

    def _arrow_writer(self) -> Any:
        if self._writer is None:
            import pyarrow.parquet as pq  # type: ignore[import-untyped]

            arrow_schema = pl.DataFrame(schema=self.schema).to_arrow().schema
            self._writer = pq.ParquetWriter(self.handle, arrow_schema, compression="zstd")
        return self._writer

    def close(self) -> None:
        """Finish the file; one that was given no frame holds the schema and no rows."""
        if self._writer is not None:
            self._writer.close()
        elif not self._written:
            pl.DataFrame(schema=self.schema).write_parquet(self.handle, compression="zstd")


@contextlib.contextmanager
def _parquet_out(path: Path, schema: pl.Schema, *, frames: int) -> Iterator[_ParquetOut]:
    """A `_ParquetOut` for `frames` frames on an atomic file: it appears whole, or not at all."""
    with atomic_file(path) as handle:
        out = _ParquetOut(handle, schema, frames=frames)
        try:
            yield out
        finally:
            out.close()
