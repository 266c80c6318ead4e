"""The journal: every answered row made durable within milliseconds, by group commit.

A session appends to one file, `<run_dir>/parts/journal-<ordinal>-<session>.log`. Each record
is framed as

    length (u32, little-endian) | crc32 (u32) | kind (u8) | payload (`length` bytes)

where the CRC covers the kind and the payload. `kind` is `INDEX` (the rows the session read:
an Arrow IPC stream of `row_index`, `row_key`, `id`, `line` and the passthrough metadata) or
`ROWS` (settled rows: a u64 length, the results as an Arrow IPC stream, then their attempts as
another). One `commit` writes the index waiting since the last one and one `ROWS` record with
one `write`, then `fdatasync`s: this is a group commit, so the cost of a sync is shared by every
row answered since the previous one. The runner commits at once when the writer is idle, and
otherwise at most every `output.commit_interval_ms`.

Reading stops at the first record that is short or fails its CRC: that is the torn tail of a
session killed mid-write (or a damaged byte), and it and everything after it are dropped, never
misread. The rows in it were never durable, so they are sent again.

A journal is compacted into Parquet parts (`parts.PartWriter`) when its session
closes, or, after a crash, when the next session opens the run directory; then it is deleted.
A part is cut at the first commit that brings it to `part_rows` rows (`output.checkpoint_rows`)
and to `part_min_bytes` of journal: a fast run of short answers makes a few parts of a few MiB,
not many small ones, each a Parquet write and an fsync (issue 15: end-of-run CPU), while memory
holds at most one part.
Compaction is idempotent: part names and contents depend only on the journal's content and
those two bounds, which are the same whether a session closes or a crash is repaired, so a
crash during it is repaired by compacting the same journal again; the session's parts beyond the
last one it writes (left by a compaction with other bounds) are removed.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import polars as pl

from batchroute.errors import OutputError
from batchroute.store.parts import INDEX_COLUMNS, PartWriter, next_ordinal
from batchroute.store.rundir import PARTS_DIR, fsync_dir

__all__ = [
    "INDEX",
    "JOURNAL_GLOB",
    "PART_MIN_BYTES",
    "ROWS",
    "Journal",
    "compact_journal",
    "journal_name",
    "read_journal",
    "recover_journals",
]

INDEX: Final = 1
ROWS: Final = 2
JOURNAL_GLOB: Final = "journal-*.log"
_HEADER = struct.Struct("<IIB")
_SPLIT = struct.Struct("<Q")
_MAX_RECORD = 1 << 31
PART_MIN_BYTES: Final = 8 << 20
"""The journal bytes a part holds at least (unless the journal ends first)."""
_NAME = re.compile(r"^journal-(?P<ordinal>[0-9]+)-(?P<session>.+)\.log$")

logger = logging.getLogger("batchroute")


def journal_name(ordinal: int, session: str) -> str:
    """The file name of a session's journal."""
    return f"journal-{ordinal:04d}-{session}.log"


def _ipc(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_ipc_stream(buffer, compression="uncompressed")
    return buffer.getvalue()


def _frame(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes((kind,))))
    return _HEADER.pack(len(payload), crc, kind) + payload


def encode_rows(results: pl.DataFrame, attempts: pl.DataFrame) -> bytes:
    """One framed `ROWS` record: settled rows and their attempts."""
    encoded = _ipc(results)
    return _frame(ROWS, _SPLIT.pack(len(encoded)) + encoded + _ipc(attempts))


def encode_index(index: pl.DataFrame) -> bytes:
    """One framed `INDEX` record."""
    return _frame(INDEX, _ipc(index))


class Journal:
    """A session's append-only journal; `commit` is blocking (call it from a thread)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        session: str,
        metadata_columns: Sequence[str] = (),
        part_rows: int = 1000,
        part_min_bytes: int = PART_MIN_BYTES,
        recover: bool = True,
        ordinal: int | None = None,
    ) -> None:
        """`recover=False, ordinal=N`: for one of several sessions writing the run directory at
        once (a Ray worker): leave the others' journals alone and share the driver's ordinal."""
        self.run_dir = Path(run_dir)
        self.parts_dir = self.run_dir / PARTS_DIR
        self.metadata_columns = tuple(metadata_columns)
        self.part_rows = part_rows
        self.part_min_bytes = part_min_bytes
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            if recover:
                recover_journals(self.run_dir, part_rows=part_rows, part_min_bytes=part_min_bytes)
            self.ordinal = ordinal if ordinal is not None else next_ordinal(self.run_dir)
            self.path = self.parts_dir / journal_name(self.ordinal, session)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
            fsync_dir(self.parts_dir)
        except OSError as exc:
            raise OutputError(
                f"cannot open the run's journal ({exc.strerror})", path=self.parts_dir
            ) from None
        self.session = session
        self._index: list[pl.DataFrame] = []
        self._lock = threading.Lock()
        self._closed = False
        self.commits = 0
        self.rows_committed = 0
        self.bytes_written = 0

    def __repr__(self) -> str:
        return (
            f"<Journal {self.path.name!r} [commits: {self.commits}, rows: {self.rows_committed}, "
            f"bytes: {self.bytes_written}{', closed' if self._closed else ''}]>"
        )

    def add_index(self, frame: pl.DataFrame) -> None:
        """Record the rows this session read (in input order); written with the next commit.

        Keeps `row_index`, `row_key`, `id`, `line` and the declared metadata columns. No I/O:
        it is safe to call from the event loop.
        """
        columns = [
            pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
            for name, dtype in INDEX_COLUMNS.items()
        ]
        columns += [
            pl.col(name)
            for name in self.metadata_columns
            if name in frame.columns and name not in INDEX_COLUMNS
        ]
        index = frame.select(columns)
        with self._lock:
            self._index.append(index)

    def commit(self, results: pl.DataFrame, attempts: pl.DataFrame) -> None:
        """Make the waiting index and these rows durable: one write, one sync."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this Journal is closed")
            index, self._index = self._index, []
        records = [encode_index(pl.concat(index, how="diagonal_relaxed"))] if index else []
        if results.height or attempts.height:
            records.append(encode_rows(results, attempts))
        if not records:
            return
        data = b"".join(records)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            _sync(self._fd)
        except OSError as exc:
            raise OutputError(
                f"cannot write the run's journal ({exc.strerror})", path=self.path
            ) from None
        self.commits += 1
        self.rows_committed += results.height
        self.bytes_written += len(data)

    def close(self, *, compact: bool = True) -> None:
        """Commit the waiting index, close the file and compact it into Parquet parts."""
        if self._closed:
            return
        empty = pl.DataFrame()
        self.commit(empty, empty)
        with self._lock:
            self._closed = True
        os.close(self._fd)
        if compact:
            compact_journal(self.path, part_rows=self.part_rows, part_min_bytes=self.part_min_bytes)


def _sync(fd: int) -> None:
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


def read_journal(path: Path) -> Iterator[tuple[int, bytes]]:
    """The intact records of a journal, in order; a torn or damaged tail is dropped with a
    warning."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise OutputError(f"cannot read the run's journal ({exc.strerror})", path=path) from None
    try:
        size = os.fstat(handle.fileno()).st_size
        offset = 0
        while offset < size:
            header = handle.read(_HEADER.size)
            reason = None
            if len(header) < _HEADER.size:
                reason = "a record header is cut short"
            else:
                length, crc, kind = _HEADER.unpack(header)
                if length > min(_MAX_RECORD, size - offset - _HEADER.size):
                    reason = "a record is cut short"
                else:
                    payload = handle.read(length)
                    if zlib.crc32(payload, zlib.crc32(bytes((kind,)))) != crc:
                        reason = "a record fails its checksum"
                    elif kind not in (INDEX, ROWS):
                        reason = f"a record has an unknown kind {kind}"
            if reason is not None:
                logger.warning(
                    "%s: %s at byte %d; the %d bytes from there on are dropped and their rows "
                    "will be sent again",
                    path,
                    reason,
                    offset,
                    size - offset,
                )
                return
            yield kind, payload
            offset += _HEADER.size + length
    finally:
        handle.close()


def decode_rows(payload: bytes) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The (results, attempts) frames of a `ROWS` record's payload."""
    (split,) = _SPLIT.unpack_from(payload)
    start = _SPLIT.size
    results = pl.read_ipc_stream(io.BytesIO(payload[start : start + split]))
    attempts = pl.read_ipc_stream(io.BytesIO(payload[start + split :]))
    return results, attempts


def decode_index(payload: bytes) -> pl.DataFrame:
    """The index frame of an `INDEX` record's payload."""
    return pl.read_ipc_stream(io.BytesIO(payload))


def compact_journal(
    path: Path, *, part_rows: int = 1000, part_min_bytes: int = PART_MIN_BYTES
) -> int:
    """Write a journal's records as Parquet parts of its session, then delete it; return the
    number of result rows.

    A part is cut at the first record that brings it to both `part_rows` rows and
    `part_min_bytes` bytes of journal records.
    """
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"not a journal file name: {path.name}")
    store = PartWriter(
        path.parent.parent,
        session=match.group("session"),
        ordinal=int(match.group("ordinal")),
        flush_rows=part_rows,
        metadata_columns=None,
    )
    rows = 0
    # A commit holds a few dozen rows: they are handed to the store a part's worth at a time,
    # so a part is cast and checked once, not once a commit (issue 15: end-of-run CPU). Each
    # hand-over holds at least `part_rows` rows, so the store writes it as one part.
    held: list[tuple[pl.DataFrame, pl.DataFrame]] = []
    held_rows = held_bytes = 0
    for kind, payload in read_journal(path):
        if kind == INDEX:
            store.add_index(decode_index(payload))
            continue
        results, attempts = decode_rows(payload)
        rows += results.height
        held.append((results, attempts))
        held_rows += results.height
        held_bytes += len(payload)
        if held_rows >= part_rows and held_bytes >= part_min_bytes:
            _add_held(store, held)
            held, held_rows, held_bytes = [], 0, 0
    _add_held(store, held)
    store.close()
    store.remove_later_parts()
    try:
        path.unlink()
        fsync_dir(path.parent)
    except OSError as exc:
        raise OutputError(
            f"cannot remove a compacted journal ({exc.strerror})", path=path
        ) from None
    return rows


def _add_held(store: PartWriter, held: list[tuple[pl.DataFrame, pl.DataFrame]]) -> None:
    if not held:
        return
    store.add([results for results, _ in held], [attempts for _, attempts in held])


def recover_journals(
    run_dir: Path, *, part_rows: int = 1000, part_min_bytes: int = PART_MIN_BYTES
) -> int:
    """Compact the journals that sessions killed before closing left behind; return how many."""
    journals = sorted((Path(run_dir) / PARTS_DIR).glob(JOURNAL_GLOB))
    for path in journals:
        rows = compact_journal(path, part_rows=part_rows, part_min_bytes=part_min_bytes)
        logger.info("%s: recovered %d answered rows from an interrupted session", path.name, rows)
    return len(journals)
