"""The input file as a stream of UTF-8 bytes: format, compression and encoding resolved.

Everything format-specific reads from `iter_blocks`, which undoes gzip/zstd compression, strips a
byte-order mark and transcodes other encodings to UTF-8 as it goes, in fixed-size blocks, so no
reader ever holds more than a block of the raw file.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

import zstandard

from batchroute.config import InputConfig
from batchroute.errors import DatasetError

__all__ = ["BLOCK_BYTES", "Source", "iter_blocks", "resolve_source"]

BLOCK_BYTES = 1 << 20
"""How much of the (decompressed) file is read at a time."""

Format = Literal["jsonl", "csv", "parquet", "openai_batch"]
Compression = Literal["gzip", "zstd", "none"]

_FORMAT_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSION_SUFFIXES: dict[str, Compression] = {
    ".gz": "gzip",
    ".gzip": "gzip",
    ".zst": "zstd",
    ".zstd": "zstd",
}
_MAGIC: dict[bytes, Compression] = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


@dataclass(frozen=True)
class Source:
    """Where the input is and how to read its bytes."""

    path: Path
    format: Format
    compression: Compression
    encoding: str

    @property
    def is_utf8(self) -> bool:
        return self.encoding in {"utf-8", "utf-8-sig"}


def resolve_source(config: InputConfig, *, path: Path) -> Source:
    """Settle the format, compression and encoding from the job and the file's name and bytes."""
    if not path.exists():
        raise DatasetError(
            "no such input file",
            path=path,
            hint="check input.path in the job; relative "
            "paths resolve against the directory batchroute runs in",
        )
    if path.is_dir():
        raise DatasetError(
            "is a directory, not a file", path=path, hint="point input.path at a file"
        )
    suffixes = [s.lower() for s in path.suffixes]
    compression = config.compression
    if compression is None:
        if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
            compression = _COMPRESSION_SUFFIXES[suffixes[-1]]
        else:
            compression = _sniff_compression(path)
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    fmt = config.format
    if fmt is None:
        fmt = _FORMAT_SUFFIXES.get(suffixes[-1]) if suffixes else None
        if fmt is None:
            raise DatasetError(
                "cannot tell the file's format from its name",
                path=path,
                hint="name it .jsonl, .csv or .parquet (optionally .gz/.zst), "
                "or set input.format: jsonl, csv, parquet or openai_batch",
            )
    if fmt == "parquet" and compression != "none":
        raise DatasetError(
            f"a Parquet file cannot be {compression}-compressed as a whole",
            path=path,
            hint="Parquet compresses its own pages; decompress the file first",
        )
    return Source(path=path, format=fmt, compression=compression, encoding=config.encoding)


def _sniff_compression(path: Path) -> Compression:
    try:
        with path.open("rb") as file:
            head = file.read(4)
    except OSError as exc:
        raise DatasetError(f"cannot be read ({exc.strerror})", path=path) from None
    for magic, compression in _MAGIC.items():
        if head.startswith(magic):
            return compression
    return "none"


def _open(source: Source, raw: BinaryIO) -> BinaryIO:
    if source.compression == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    if source.compression == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return cast(BinaryIO, reader)
    return raw


def _read_blocks(source: Source) -> Iterator[bytes]:
    try:
        raw = source.path.open("rb")
    except OSError as exc:
        raise DatasetError(f"cannot be read ({exc.strerror})", path=source.path) from None
    with raw, _open(source, raw) as stream:
        while True:
            try:
                block = stream.read(BLOCK_BYTES)
            except (gzip.BadGzipFile, EOFError, zlib.error, zstandard.ZstdError) as exc:
                raise DatasetError(
                    f"is not valid {source.compression} data ({exc})",
                    path=source.path,
                    hint="the file may be truncated or corrupt, or not compressed at all: "
                    "set input.compression: none if so",
                ) from None
            except OSError as exc:
                raise DatasetError(f"cannot be read ({exc.strerror})", path=source.path) from None
            if not block:
                return
            yield block


def iter_blocks(source: Source) -> Generator[bytes, None, None]:
    """The file's content as UTF-8 bytes, decompressed, in blocks.

    A UTF-8 file's byte-order mark is left for the record splitter to step over, so that byte
    offsets in errors count from the file's first byte; other encodings lose theirs here.
    """
    blocks = _read_blocks(source)
    if source.is_utf8:
        yield from blocks
        return
    decoder = codecs.getincrementaldecoder(source.encoding)("strict")
    offset = 0
    for block in blocks:
        try:
            text = decoder.decode(block)
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"is not valid {source.encoding} text",
                path=source.path,
                byte_offset=offset + exc.start,
                hint="set input.encoding to the file's encoding in the job",
            ) from None
        if offset == 0:
            text = text.removeprefix("\ufeff")
        offset += len(block)
        yield text.encode("utf-8")
    try:
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DatasetError(
            f"ends in the middle of a {source.encoding} character",
            path=source.path,
            byte_offset=offset,
            hint="the file may be truncated, or set input.encoding to the file's encoding",
        ) from None
    if tail:
        yield tail.encode("utf-8")
