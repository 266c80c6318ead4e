"""Parquet parts: the compacted, columnar form of a run's progress, and what earlier sessions did.

A session's journal (`store.journal`) is compacted into three kinds of part in
`<run_dir>/parts/`, each written atomically:

    results-<ordinal>-<session>-<seq>.parquet    result records (RESULT_SCHEMA, then metadata)
    attempts-<ordinal>-<session>-<seq>.parquet   attempt records (ATTEMPT_SCHEMA)
    index-<ordinal>-<session>-<seq>.parquet      row_index, row_key, id, line and the passthrough
                                                 metadata of every row the session read

`ordinal` numbers the sessions of a run (1, 2, ...), so file names sort in the order the
records were made. A results part is committed before its attempts part, so a kill between the
two loses neither (see `PartWriter._flush_locked`). A row is identified across sessions by
its `row_key` (`store.keys`): resume skips the keys an earlier session settled
(`completed_keys`), and `assembly.assemble_results` joins the latest session's index to the
best record of each key.

`add` and `close` do blocking file I/O: call them outside the event loop
(e.g. `anyio.to_thread`). `add_index` does none, short of a very large backlog.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

import polars as pl

from batchroute.errors import OutputError
from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA, Status
from batchroute.store.rundir import PARTS_DIR, TMP_SUFFIX, atomic_file, fsync_dir, remove_tmp_files

__all__ = [
    "INDEX_COLUMNS",
    "PartWriter",
    "PartFile",
    "collect_parts",
    "completed_keys",
    "list_parts",
    "next_ordinal",
    "part_rows",
    "scan_parts",
]

INDEX_COLUMNS: Final = pl.Schema(
    {"row_index": pl.Int64, "row_key": pl.String, "id": pl.String, "line": pl.Int64}
)
"""The fixed columns of an index part; the passthrough metadata columns follow them."""

PartKind = Literal["results", "attempts", "index"]
_PART_NAME = re.compile(
    r"^(?P<kind>results|attempts|index)-(?P<ordinal>[0-9]+)-(?P<session>.+)-(?P<seq>[0-9]+)\.parquet$"
)
_ANY_ORDINAL = re.compile(r"^(?:results|attempts|index|journal)-(?P<ordinal>[0-9]+)-")
_SESSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_INDEX_FLUSH_ROWS = 100_000  # index rows held before they are written without results


@dataclass(frozen=True, slots=True, order=True)
class PartFile:
    """One part file; parts sort in the order they were written."""

    ordinal: int
    seq: int
    kind: str
    session: str
    path: Path


def list_parts(run_dir: Path, kind: PartKind) -> list[PartFile]:
    """The complete parts of one kind in a run directory, oldest first (`*.tmp` never count)."""
    directory = Path(run_dir) / PARTS_DIR
    if not directory.is_dir():
        return []
    parts = []
    for entry in directory.iterdir():
        match = _PART_NAME.match(entry.name)
        if match and match.group("kind") == kind:
            parts.append(
                PartFile(
                    ordinal=int(match.group("ordinal")),
                    seq=int(match.group("seq")),
                    kind=kind,
                    session=match.group("session"),
                    path=entry,
                )
            )
    return sorted(parts)


def next_ordinal(run_dir: Path) -> int:
    """The number of the next session of a run: one more than any part or journal's."""
    directory = Path(run_dir) / PARTS_DIR
    if not directory.is_dir():
        return 1
    numbers = [
        int(match.group("ordinal"))
        for entry in directory.iterdir()
        if (match := _ANY_ORDINAL.match(entry.name)) is not None
    ]
    return max(numbers, default=0) + 1


def completed_keys(run_dir: Path, *, retry_failed: bool = True) -> pl.Series:
    """The row keys earlier sessions settled: status ok, and failed too unless retrying.

    Reads only the `row_key` and `status` columns of the result parts.
    """
    settled = [Status.OK] if retry_failed else [Status.OK, Status.FAILED]
    paths = [part.path for part in list_parts(run_dir, "results")]
    if not paths:
        return pl.Series("row_key", [], dtype=pl.String)
    query = (
        scan_parts(paths)
        .select("row_key", "status")
        .filter(pl.col("status").is_in(settled))
        .select(pl.col("row_key").unique())
    )
    return collect_parts(query, where=Path(run_dir) / PARTS_DIR).to_series()


def _conform(
    frames: pl.DataFrame | Sequence[pl.DataFrame], schema: pl.Schema, *, keep_extra: bool
) -> pl.DataFrame:
    """The frames, concatenated, with the schema's columns first, cast to their types (absent
    ones null)."""
    frame = frames if isinstance(frames, pl.DataFrame) else _concat(frames)
    if frame is None:
        return pl.DataFrame(schema=schema)
    columns = [
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in schema.items()
    ]
    if keep_extra:
        columns += [pl.col(name) for name in frame.columns if name not in schema]
    return frame.select(columns)


class PartWriter:
    """The parts of one session: buffered in memory, written atomically every `flush_rows` rows."""

    def __init__(
        self,
        run_dir: Path,
        *,
        session: str,
        flush_rows: int = 1000,
        metadata_columns: Sequence[str] | None = (),
        ordinal: int | None = None,
    ) -> None:
        if not _SESSION.match(session):
            raise ValueError(f"a session id must be safe in a file name, not {session!r}")
        self.run_dir = Path(run_dir)
        self.parts_dir = self.run_dir / PARTS_DIR
        self.session = session
        self.flush_rows = flush_rows
        self.metadata_columns = tuple(metadata_columns) if metadata_columns is not None else None
        """The passthrough columns an index keeps; None keeps every column it is given."""
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            _recover_parts(self.parts_dir)
        except OSError as exc:
            raise OutputError(
                f"cannot prepare the parts directory ({exc.strerror})", path=self.parts_dir
            ) from None
        self.ordinal = ordinal if ordinal is not None else next_ordinal(self.run_dir)
        """This session's number in the run: parts of later sessions win."""
        self._lock = threading.Lock()
        self._results: list[pl.DataFrame] = []
        self._attempts: list[pl.DataFrame] = []
        self._index: list[pl.DataFrame] = []
        self._buffered_rows = 0
        self._index_rows = 0
        self._seq = 0
        self.rows_written = 0
        """Result rows made durable by this session so far."""
        self.parts_written = 0
        self._closed = False

    def completed_keys(self, *, retry_failed: bool = True) -> pl.Series:
        """The row keys earlier sessions settled (see `completed_keys`)."""
        return completed_keys(self.run_dir, retry_failed=retry_failed)

    def add_index(self, frame: pl.DataFrame) -> None:
        """Record the rows this session read, once per input batch, in input order.

        Keeps `row_index`, `row_key`, and `id`, `line` and the declared metadata columns when
        the frame has them. The index rides along with the next flush of results (it matters
        only once the session ends), so this does no file I/O unless a lot of index is waiting:
        it is safe to call from the event loop.
        """
        metadata = frame.columns if self.metadata_columns is None else self.metadata_columns
        keep = [
            *INDEX_COLUMNS,
            *(c for c in metadata if c in frame.columns and c not in INDEX_COLUMNS),
        ]
        index = _conform(
            frame.select([c for c in keep if c in frame.columns]), INDEX_COLUMNS, keep_extra=True
        )
        with self._lock:
            self._check_open()
            self._index.append(index)
            self._index_rows += index.height
            if self._index_rows >= _INDEX_FLUSH_ROWS:
                self._flush_locked()

    def add(
        self,
        results: pl.DataFrame | Sequence[pl.DataFrame],
        attempts: pl.DataFrame | Sequence[pl.DataFrame] | None = None,
    ) -> None:
        """Buffer settled rows and their attempts; write a part once `flush_rows` are buffered.

        Several frames of each may be given: they are concatenated as they are conformed
        (`_concat`: vertically when their schemas agree, else diagonally).
        """
        conformed = _conform(results, RESULT_SCHEMA, keep_extra=True)
        with self._lock:
            self._check_open()
            self._add_locked(conformed, attempts)
            self._flush_if_due_locked()

    def _add_locked(
        self, results: pl.DataFrame, attempts: pl.DataFrame | Sequence[pl.DataFrame] | None
    ) -> None:
        # Series null counts are kept with the data: no query (issue 15)
        if results.get_column("row_key").null_count() or results.get_column("status").null_count():
            raise ValueError("every result record needs a row_key and a status")
        if results.height:
            self._results.append(results)
            self._buffered_rows += results.height
        if isinstance(attempts, pl.DataFrame):
            attempts = [attempts]
        attempts = [frame for frame in attempts or () if frame.height]
        if attempts:
            self._attempts.append(_conform(attempts, ATTEMPT_SCHEMA, keep_extra=False))

    def remove_later_parts(self) -> int:
        """Delete this session's parts numbered after the last this store wrote; return how many.

        A journal compacted again after a crash, with other part bounds (another version, or
        another `checkpoint_rows`), writes fewer parts than the first attempt: the first
        attempt's later parts would otherwise count their records twice.
        """
        stale = [
            part.path
            for kind in ("results", "attempts", "index")
            for part in list_parts(self.run_dir, kind)
            if part.ordinal == self.ordinal
            and part.session == self.session
            and part.seq > self._seq
        ]
        try:
            for path in stale:
                path.unlink()
            if stale:
                fsync_dir(self.parts_dir)
        except OSError as exc:
            raise OutputError(
                f"cannot remove a stale checkpoint part ({exc.strerror})", path=self.parts_dir
            ) from None
        return len(stale)

    def close(self) -> None:
        """Flush what is buffered; the store takes no more rows."""
        with self._lock:
            if not self._closed:
                self._flush_locked()
                self._closed = True

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<PartWriter {str(self.run_dir)!r} session {self.ordinal} ({self.session}) "
            f"[buffered: {self._buffered_rows}, written: {self.rows_written} rows in "
            f"{self.parts_written} parts{', closed' if self._closed else ''}]>"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this PartWriter is closed")

    def _flush_if_due_locked(self) -> None:
        if self._buffered_rows >= self.flush_rows:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not (self._results or self._attempts or self._index):
            return
        self._seq += 1
        index, attempts, results = (
            _concat(buffer) for buffer in (self._index, self._attempts, self._results)
        )
        if index is not None:
            self._write_part("index", index)
        if results is None:
            if attempts is not None:
                self._write_part("attempts", attempts)
        else:
            # The results part is the commit point: its attempts are staged (complete and
            # fsynced) before it, and renamed after. A crash between the two renames leaves a
            # staged attempts part that the next session completes instead of discarding, so
            # rows marked done never lose their attempts and rows not marked are resent.
            staged = self._stage_part("attempts", attempts) if attempts is not None else None
            self._write_part("results", results)
            if staged is not None:
                self._commit_staged(staged)
        for buffer in (self._index, self._attempts, self._results):
            buffer.clear()
        self.rows_written += self._buffered_rows
        self._buffered_rows = 0
        self._index_rows = 0

    def _part_path(self, kind: str) -> Path:
        return self.parts_dir / f"{kind}-{self.ordinal:04d}-{self.session}-{self._seq:06d}.parquet"

    def _write_part(self, kind: str, frame: pl.DataFrame) -> None:
        path = self._part_path(kind)
        try:
            with atomic_file(path) as handle:
                frame.write_parquet(handle, compression="zstd", statistics=True)
        except OSError as exc:
            raise OutputError(
                f"cannot write a checkpoint part ({exc.strerror})", path=path
            ) from None
        self.parts_written += 1

    def _stage_part(self, kind: str, frame: pl.DataFrame) -> Path:
        """Write a part to its `.tmp` name, complete and fsynced, without renaming it."""
        path = self._part_path(kind)
        staged = path.with_name(path.name + TMP_SUFFIX)
        try:
            with open(staged, "wb") as handle:
                frame.write_parquet(handle, compression="zstd", statistics=True)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise OutputError(
                f"cannot write a checkpoint part ({exc.strerror})", path=path
            ) from None
        return staged

    def _commit_staged(self, staged: Path) -> None:
        final = staged.with_name(staged.name.removesuffix(TMP_SUFFIX))
        try:
            os.replace(staged, final)
            fsync_dir(self.parts_dir)
        except OSError as exc:
            raise OutputError(
                f"cannot write a checkpoint part ({exc.strerror})", path=final
            ) from None
        self.parts_written += 1


def _concat(frames: Sequence[pl.DataFrame]) -> pl.DataFrame | None:
    """Frames one after another (None for none); a vertical concatenation when their schemas
    agree (the usual case), which runs no query, unlike a diagonal one (issue 15)."""
    if len(frames) <= 1:
        return frames[0] if frames else None
    try:  # polars compares the schemas far faster than Python could
        return pl.concat(frames, how="vertical")
    except pl.exceptions.PolarsError:
        return pl.concat(frames, how="diagonal_relaxed")


def _recover_parts(directory: Path) -> None:
    """Complete the attempts parts staged before a crash whose results part was committed, and
    delete every other leftover `.tmp`."""
    for entry in directory.glob("attempts-*.parquet" + TMP_SUFFIX):
        final = entry.with_name(entry.name.removesuffix(TMP_SUFFIX))
        committed = final.with_name("results-" + final.name.removeprefix("attempts-"))
        if committed.exists():
            os.replace(entry, final)
    fsync_dir(directory)
    remove_tmp_files(directory)


def scan_parts(paths: Iterable[Path]) -> pl.LazyFrame:
    """A lazy scan over part files, in the order given; columns a part lacks read as null."""
    return pl.scan_parquet(
        list(paths), glob=False, missing_columns="insert", extra_columns="ignore"
    )


def part_rows(path: Path) -> int:
    """A part's row count, read from its footer alone."""
    return int(collect_parts(pl.scan_parquet(path).select(pl.len()), where=path).item())


def collect_parts(
    query: pl.LazyFrame, *, where: Path, engine: Literal["auto", "streaming"] = "auto"
) -> pl.DataFrame:
    """Run a query over parts, turning a damaged part into an `OutputError` a person can act on."""
    try:
        return query.collect(engine=engine)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise OutputError(
            f"a checkpoint part cannot be read ({exc}); move the damaged part out of the way "
            "and rerun: its rows are sent again",
            path=where,
        ) from None
