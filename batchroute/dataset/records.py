"""Cutting a byte stream into chunks of whole records, in bounded memory.

A record ends at a newline; for CSV, only at a newline outside quotes. RFC 4180 escapes a quote
inside a quoted field by doubling it, so a newline ends a record exactly when the number of quotes
before it (counted from the record's start) is even. That makes the split one vectorised pass of
numpy over the bytes, with no per-line Python, and it finds an unterminated quote at the end.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from batchroute.errors import DatasetError

__all__ = ["MAX_RECORD_BYTES", "RecordChunk", "iter_record_chunks"]

MAX_RECORD_BYTES = 64 << 20
"""A record longer than this is taken for a runaway quote rather than held in memory."""

_SCAN_BYTES = 4 << 20
_NEWLINE, _RETURN, _QUOTE = 10, 13, 34

Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class RecordChunk:
    """Whole records of the file: their bytes, and where each non-blank record lies in them."""

    data: bytes
    starts: Int64Array
    """Offset in `data` of each record."""
    ends: Int64Array
    """Offset in `data` just past each record, before its newline and any carriage return."""
    lines: Int64Array
    """The 1-based physical line of the file on which each record starts."""
    byte_offset: int
    """Offset of `data` in the decompressed, UTF-8 stream."""

    def __len__(self) -> int:
        return len(self.starts)

    def record(self, index: int) -> bytes:
        """One record's bytes, without its line ending."""
        return self.data[self.starts[index] : self.ends[index]]


class _Splitter:
    def __init__(
        self, *, path: Path, quoted: bool, max_records: int, check_utf8: bool, header: int
    ) -> None:
        self.path = path
        self.extra_first = header  # the first chunk also carries the header's records
        self.quoted = quoted
        self.max_records = max_records
        self.check_utf8 = check_utf8
        self.offset = 0  # stream offset of the pending buffer
        self.line = 1  # physical line at the start of the pending buffer
        self.partial_line = 1  # physical line where the last, unfinished record starts

    def split(self, buf: bytes, *, final: bool) -> tuple[list[RecordChunk], int, int]:
        """Chunks of whole records from `buf`, the bytes they consumed, and where a partial
        record at the end of `buf` starts."""
        arr = np.frombuffer(buf, dtype=np.uint8)
        newlines = np.flatnonzero(arr == _NEWLINE).astype(np.int64)
        terms = newlines
        if self.quoted:
            quotes = np.flatnonzero(arr == _QUOTE)
            if len(quotes):
                terms = newlines[(np.searchsorted(quotes, newlines) & 1) == 0]
        starts = np.concatenate(([0], terms[:-1] + 1)).astype(np.int64) if len(terms) else terms
        done = int(terms[-1]) + 1 if len(terms) else 0
        partial = done
        self.partial_line = self.line + int(np.searchsorted(newlines, done))
        if final and done < len(buf):
            if self.quoted and buf.count(b'"', done) % 2:
                raise DatasetError(
                    "a quoted field in the row that starts here is never closed",
                    path=self.path,
                    line=self.line + buf.count(b"\n", 0, done),
                    hint='close the quote, or double any quote inside a quoted field ("")',
                )
            starts = np.append(starts, done)
            terms = np.append(terms, len(buf))
            done = len(buf)
        ends = terms.copy()
        has_return = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == _RETURN)
        ends[has_return] -= 1
        keep = ends > starts  # blank lines are not records
        starts, ends, terms = starts[keep], ends[keep], terms[keep]
        lines = self.line + np.searchsorted(newlines, starts).astype(np.int64)
        groups: list[tuple[int, int]] = []
        first = 0
        while first < len(starts):
            size = self.max_records + self.extra_first
            if not final and first + size > len(starts):
                break
            groups.append((first, min(first + size, len(starts))))
            first += size
            self.extra_first = 0
        if not final:
            done = int(terms[first - 1]) + 1 if first else 0
        chunks = []
        for first, stop in groups:
            lo, hi = int(starts[first]), min(int(terms[stop - 1]) + 1, len(buf))
            chunk = RecordChunk(
                data=buf[lo:hi],
                starts=starts[first:stop] - lo,
                ends=ends[first:stop] - lo,
                lines=lines[first:stop],
                byte_offset=self.offset + lo,
            )
            if self.check_utf8:
                self._check_utf8(chunk)
            chunks.append(chunk)
        self.offset += done
        self.line += int(np.searchsorted(newlines, done))
        return chunks, done, partial

    def _check_utf8(self, chunk: RecordChunk) -> None:
        if chunk.data.isascii():
            return
        try:
            chunk.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            index = int(np.searchsorted(chunk.starts, exc.start, side="right")) - 1
            line = int(chunk.lines[max(index, 0)]) + chunk.data.count(
                b"\n", int(chunk.starts[max(index, 0)]), exc.start
            )
            raise DatasetError(
                f"is not valid UTF-8 (byte 0x{chunk.data[exc.start]:02x})",
                path=self.path,
                line=line,
                byte_offset=chunk.byte_offset + exc.start,
                hint="set input.encoding: latin-1 (or the file's encoding) in the job",
            ) from None

    def too_long(self) -> DatasetError:
        what = "a quoted field in the row" if self.quoted else "the line"
        return DatasetError(
            f"{what} that starts here runs past {MAX_RECORD_BYTES >> 20} MiB without ending",
            path=self.path,
            line=self.partial_line,
            hint="check for a quote that is never closed" if self.quoted else None,
        )


def iter_record_chunks(
    blocks: Iterator[bytes],
    *,
    path: Path,
    quoted: bool,
    max_records: int,
    check_utf8: bool,
    header: int = 0,
) -> Iterator[RecordChunk]:
    """Chunks of `max_records` non-blank records (the last may hold fewer); the first chunk
    holds `header` records more."""
    splitter = _Splitter(
        path=path, quoted=quoted, max_records=max_records, check_utf8=check_utf8, header=header
    )
    pending: list[bytes] = []
    pending_bytes = pending_newlines = 0
    rescan_at = 0  # a buffer without a whole chunk is scanned again only once it has doubled
    for block in blocks:
        if splitter.offset == 0 and not pending and block.startswith(codecs.BOM_UTF8):
            block = block[len(codecs.BOM_UTF8) :]
            splitter.offset = len(codecs.BOM_UTF8)  # error offsets count from the file's start
        pending.append(block)
        pending_bytes += len(block)
        pending_newlines += block.count(b"\n")
        ready = pending_newlines >= max_records or pending_bytes >= _SCAN_BYTES
        if not ready or pending_bytes < rescan_at:
            continue
        buf = b"".join(pending)
        chunks, done, partial = splitter.split(buf, final=False)
        if len(buf) - partial > MAX_RECORD_BYTES:
            raise splitter.too_long()
        yield from chunks
        rest = buf[done:]
        pending = [rest] if rest else []
        pending_bytes, pending_newlines = len(rest), rest.count(b"\n")
        rescan_at = 2 * len(rest)
    chunks, _, _ = splitter.split(b"".join(pending), final=True)
    yield from chunks
