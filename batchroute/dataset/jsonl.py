"""JSONL input, including files in the OpenAI Batch API request format.

A chunk of lines goes to polars' NDJSON reader whole. Python's `json` reads a chunk line by line
only where polars cannot answer: a line that is not a JSON object, a row missing its prompt or id
(to tell a missing field from a null one), and chat rows, whose nested content polars would
re-serialise lossily when its shape varies between rows.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import polars as pl

from batchroute.dataset.messages import messages_from_python
from batchroute.dataset.normalize import (
    BASE_SCHEMA,
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
from batchroute.dataset.parsed import Parsed, check_columns, value_kind
from batchroute.dataset.records import RecordChunk, iter_record_chunks
from batchroute.dataset.rejects import Problems
from batchroute.dataset.source import Source, iter_blocks

__all__ = ["is_openai_batch", "read_jsonl"]

_BATCH_URL = "/v1/chat/completions"


def is_openai_batch(source: Source) -> bool:
    """Whether the file's first object looks like an OpenAI Batch API request."""
    head = b""
    with closing(iter_blocks(source)) as blocks:
        for block in blocks:
            head += block
            if head.strip(b" \t\r\n") and b"\n" in head.lstrip(b" \t\r\n"):
                break
    first = head.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n").split(b"\n", 1)[0]
    try:
        obj = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and "custom_id" in obj and "body" in obj


def _kind(value: Any) -> str:
    return value_kind(value, list_name="an array")  # JSON's own word for a list


def _scalar_text(value: Any) -> str | None:
    """A JSON scalar as the text polars gives it when casting to String; None otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def _line_numbers(chunk: RecordChunk) -> pl.Expr | pl.Series:
    """The chunk's line numbers as a column: a range when its records are one per line.

    That is the usual JSONL file, and a range spares polars the numpy conversion, whose first
    use imports numpy.ma: a fiftieth of a second of every run (`bench_overhead.py`).
    """
    lines, count = chunk.lines, len(chunk.lines)
    first = int(lines[0]) if count else 0
    if count and int(lines[-1]) - first == count - 1:  # strictly increasing: consecutive
        return pl.int_range(first, first + count, dtype=pl.Int64).alias(LINE)
    return pl.Series(LINE, lines, dtype=pl.Int64)


def _fast(chunk: RecordChunk, columns: ColumnMap, *, ordinal: int) -> Parsed | None:
    """The chunk read by polars alone, or None when a row needs a closer look."""
    if columns.is_chat:
        return None
    try:
        frame = pl.read_ndjson(chunk.data, infer_schema_length=None)
    except pl.exceptions.PolarsError:
        return None
    if frame.height != len(chunk):
        return None  # a whitespace-only line that polars skipped; line numbers would slip
    schema = frame.schema
    scalar_names = [columns.prompt, columns.id, columns.system, columns.tier, columns.json_output]
    for name in scalar_names:
        if name is not None and name in schema and schema[name].is_nested():
            return None
    for name in (columns.prompt, columns.id):
        if name is None:
            continue
        if name not in schema or frame[name].null_count():
            return None  # a missing field is a row problem, a null prompt a row failure
        if schema[name] == pl.String and (frame[name] == "").any():
            return None

    def optional(name: str | None, dtype: pl.DataType | None) -> pl.Expr:
        if name is None or name not in schema:
            return pl.lit(None, dtype)
        return pl.col(name) if dtype is None else pl.col(name).cast(dtype)

    raw = frame.select(
        _line_numbers(chunk),
        pl.int_range(ordinal + 1, ordinal + 1 + frame.height, dtype=pl.Int64).alias(ORDINAL),
        optional(columns.id, pl.String()).alias(ID),
        optional(columns.prompt, pl.String()).alias(PROMPT),
        optional(columns.system, pl.String()).alias(SYSTEM),
        optional(columns.tier, pl.String()).alias(TIER),
        optional(columns.json_output, None).alias(JSON),
        pl.lit(None, pl.String).alias(INVALID),
        *(optional(name, None).alias(name) for name in columns.metadata),
    )
    return Parsed(raw=raw, rejects=None, found=tuple(frame.columns), records=len(chunk))


def _metadata_frame(rows: list[dict[str, Any]], names: tuple[str, ...]) -> pl.DataFrame:
    if not names:
        return pl.DataFrame(height=len(rows))
    text = "\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    try:
        frame = pl.read_ndjson(text.encode("utf-8"), infer_schema_length=None) if rows else None
    except pl.exceptions.PolarsError:
        frame = None  # values of different shapes in one column: keep them as JSON text
    if frame is not None:
        return frame.select(
            pl.col(n) if n in frame.columns else pl.lit(None).alias(n) for n in names
        )
    return pl.DataFrame(
        {
            n: pl.Series(
                n,
                [
                    v if v is None or isinstance(v, str) else json.dumps(v)
                    for v in (r[n] for r in rows)
                ],
                dtype=pl.String,
            )
            for n in names
        }
    )


def _slow(chunk: RecordChunk, columns: ColumnMap, *, ordinal: int, problems: Problems) -> Parsed:
    """The chunk read line by line with Python's json, each bad row reported or set aside."""
    found: dict[str, None] = {}
    base: dict[str, list[Any]] = {name: [] for name in BASE_SCHEMA}
    texts: list[str | None] = []
    chats: list[Any] = []
    json_values: list[str | None] = []
    metadata: list[dict[str, Any]] = []
    records = 0
    for index in range(len(chunk)):
        raw_line = chunk.record(index)
        if not raw_line.strip():
            continue  # a line of spaces is blank, like an empty one
        line = int(chunk.lines[index])
        ordinal += 1
        records += 1
        try:
            obj = json.loads(raw_line)
        except json.JSONDecodeError as exc:
            problems.add(
                f"is not valid JSON ({exc.msg}, column {exc.colno})", line=line, raw=raw_line
            )
            continue
        if not isinstance(obj, dict):
            problems.add(
                f"is {_kind(obj)}, not a JSON object; write one object per line",
                line=line,
                raw=raw_line,
            )
            continue
        found.update(dict.fromkeys(obj))
        invalid: str | None = None
        row_id: str | None = None
        if columns.id is not None:
            value = obj.get(columns.id)
            row_id = _scalar_text(value)
            if row_id is None or row_id == "":
                what = "no such field" if columns.id not in obj else f"an empty id ({_kind(value)})"
                if row_id is None and value is not None:
                    what = f"an id that is {_kind(value)}, not a string or number"
                problems.add(f"the row has {what}", line=line, raw=raw_line, field=columns.id)
                continue
        if columns.openai_batch:
            body = obj.get("body")
            if not isinstance(body, dict):
                problems.add("has no 'body' object", line=line, raw=raw_line, field="body")
                continue
            method, url = obj.get("method"), obj.get("url")
            if (method is not None and str(method).upper() != "POST") or (
                url is not None and url != _BATCH_URL
            ):
                invalid = f"is a {method} {url} request; batchroute sends POST {_BATCH_URL} only"
            chats.append(body.get("messages"))
        elif columns.messages is not None:
            if columns.messages not in obj:
                problems.add(
                    "the row has no such field", line=line, raw=raw_line, field=columns.messages
                )
                continue
            chats.append(obj[columns.messages])
        else:
            if columns.prompt not in obj:
                problems.add(
                    "the row has no such field", line=line, raw=raw_line, field=columns.prompt
                )
                continue
            value = obj[columns.prompt]
            text = _scalar_text(value)
            if text is None and value is not None:
                invalid = f"prompt is {_kind(value)}, not text"
            texts.append(text)
        base[LINE].append(line)
        base[ORDINAL].append(ordinal)
        base[ID].append(row_id)
        base[SYSTEM].append(_scalar_text(obj.get(columns.system)) if columns.system else None)
        base[TIER].append(_scalar_text(obj.get(columns.tier)))
        base[INVALID].append(invalid)
        json_values.append(_scalar_text(obj.get(columns.json_output)))
        metadata.append({name: obj.get(name) for name in columns.metadata})
    raw = pl.DataFrame(base, schema=BASE_SCHEMA)
    if columns.is_chat:
        messages, reasons = messages_from_python(chats, name=columns.text_column)
        raw = raw.with_columns(
            messages.alias(MESSAGES), pl.coalesce(pl.col(INVALID), reasons).alias(INVALID)
        )
    else:
        raw = raw.with_columns(pl.Series(PROMPT, texts, dtype=pl.String))
    raw = raw.with_columns(pl.Series(JSON, json_values, dtype=pl.String))
    raw = pl.concat([raw, _metadata_frame(metadata, columns.metadata)], how="horizontal")
    return Parsed(raw=raw, rejects=problems.frame(), found=tuple(found), records=records)


def _check_first_object(chunk: RecordChunk, columns: ColumnMap, *, source: Source) -> None:
    """Name a wrongly mapped prompt or id up front, rather than as a problem on every row."""
    for index in range(len(chunk)):
        try:
            obj = json.loads(chunk.record(index))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            where = f" in its first object (line {int(chunk.lines[index])})"
            check_columns(
                columns.key_columns(), found=list(obj), path=source.path, where=where, noun="field"
            )
            return


def read_jsonl(
    source: Source, columns: ColumnMap, *, skip: bool, chunk_rows: int
) -> Iterator[Parsed]:
    """The file's rows in chunks of `chunk_rows` lines, read into the intermediate frame."""
    ordinal = 0
    chunks = iter_record_chunks(
        iter_blocks(source),
        path=source.path,
        quoted=False,
        max_records=chunk_rows,
        check_utf8=source.is_utf8,
    )
    for chunk in chunks:
        if ordinal == 0:
            _check_first_object(chunk, columns, source=source)
        parsed = _fast(chunk, columns, ordinal=ordinal)
        if parsed is None:
            problems = Problems(path=source.path, skip=skip)
            parsed = _slow(chunk, columns, ordinal=ordinal, problems=problems)
        ordinal += parsed.records
        yield parsed
