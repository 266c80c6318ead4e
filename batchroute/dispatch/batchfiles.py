"""The Batch API's files: the input lines batchroute writes, and the output and error lines it
reads back.

An input line is the online request body (`walk.plan_tiers`) with the row key as `custom_id`,
built for a whole frame at once; `split_files` cuts lines into files within the API's limits.
`read_line` keeps of an output or error line only what the row needs, so a collected file of
50,000 answers is not held as 50,000 parsed JSON trees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import polars as pl

from batchroute.dispatch.client import Completion, parse_completion

__all__ = [
    "ENDPOINT",
    "MAX_FILE_BYTES",
    "MAX_FILE_REQUESTS",
    "Line",
    "file_numbers",
    "read_line",
    "request_lines",
    "split_files",
    "validation_error",
]

MAX_FILE_REQUESTS: Final = 50_000
"""The Batch API's limit on requests in one input file."""
MAX_FILE_BYTES: Final = 200 * 1024 * 1024
"""The Batch API's limit on one input file's size."""

ENDPOINT: Final = "/v1/chat/completions"


def request_lines(rows: pl.DataFrame, body: dict[str, Any]) -> pl.Series:
    """Each row's line of a Batch API input file (vectorised): `custom_id` is the row key."""
    fixed = json.dumps(body, ensure_ascii=False, separators=(",", ":"))[:-1]
    head = pl.struct(pl.col("row_key").alias("custom_id")).struct.json_encode().str.head(-1)
    messages = pl.struct("messages").struct.json_encode().str.slice(len('{"messages":'))
    return rows.select(
        pl.concat_str(
            head,
            pl.lit(f',"method":"POST","url":"{ENDPOINT}","body":{fixed},"messages":'),
            messages,
            pl.lit("}"),
        ).alias("line")
    ).to_series()


def split_files(
    lines: pl.Series,
    tokens: pl.Series,
    *,
    max_requests: int = MAX_FILE_REQUESTS,
    max_bytes: int = MAX_FILE_BYTES,
    max_tokens: int | None = None,
) -> pl.Series:
    """A file number per line, so that no file passes the request, byte or token limit."""
    return file_numbers(
        lines.str.len_bytes() + 1,
        tokens,
        max_requests=max_requests,
        max_bytes=max_bytes,
        max_tokens=max_tokens,
    )


def file_numbers(
    line_bytes: pl.Series,
    tokens: pl.Series,
    *,
    max_requests: int = MAX_FILE_REQUESTS,
    max_bytes: int = MAX_FILE_BYTES,
    max_tokens: int | None = None,
) -> pl.Series:
    """A file number per line from each line's size in bytes (newline included).

    Vectorised: each limit cuts the running total into windows a line's largest size below the
    limit wide, so a window never holds more than the limit; a file is a run of lines sharing
    all three windows. Taking sizes rather than lines lets files be planned without the lines.
    """
    frame = pl.DataFrame({"bytes": line_bytes.cast(pl.Int64), "tokens": tokens.cast(pl.Int64)})

    def window(column: str, limit: int) -> pl.Expr:
        largest = frame[column].max()
        width = max(1, limit - (largest if isinstance(largest, int) else 0))
        return (pl.col(column).cum_sum() - pl.col(column)) // width

    keys = [pl.int_range(pl.len()) // max_requests, window("bytes", max_bytes)]
    if max_tokens is not None:
        keys.append(window("tokens", max_tokens))
    return frame.select(pl.struct(keys).rle_id().alias("file")).to_series()


@dataclass(frozen=True, slots=True)
class Line:
    """What a row needs of one output or error line (the rest of the line is dropped)."""

    status: int | None
    """The line's HTTP status; None for a line the batch never ran (expired, cancelled)."""
    completion: Completion | None = None
    code: str | None = None
    message: str | None = None


def read_line(raw: str) -> tuple[str, Line]:
    """A line of an output or error file: its custom_id, and what the row needs of it."""
    item = json.loads(raw)
    custom_id = str(item.get("custom_id"))
    response = item.get("response")
    if not isinstance(response, dict):
        return custom_id, Line(None)
    status = int(response.get("status_code") or 0)
    body = response.get("body")
    if status == 200:
        try:
            return custom_id, Line(status, completion=parse_completion(body))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return custom_id, Line(status)
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    said = error.get("message") if isinstance(error, dict) else None
    return custom_id, Line(
        status,
        code=code if isinstance(code, str) else None,
        message=said if isinstance(said, str) else None,
    )


def validation_error(batch: Any) -> tuple[int | None, str]:
    """The first validation error of a failed batch: (its line, its words)."""
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) or []
    if not data:
        return None, "the batch failed without an error list"
    first = data[0]
    return first.line, f"{first.code or 'invalid'}: {first.message or ''}".strip()
