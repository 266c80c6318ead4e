"""Chat messages given in a row: checked, and flattened to `[{role, content}]` with text content.

Most files are decoded by polars in one vectorised pass. A row polars cannot type (content given as
a list of parts, or not a chat at all) is decoded in Python, because only a parser can tell those
apart; the row then either becomes text messages or gets the reason it cannot be sent.
"""

from __future__ import annotations

import json
from typing import Any, Final

import polars as pl

from batchroute.dataset.parsed import value_kind
from batchroute.schema import INPUT_SCHEMA

__all__ = [
    "MESSAGES_DTYPE",
    "flatten_messages",
    "messages_from_json_text",
    "messages_from_native",
    "messages_from_python",
]

MESSAGES_DTYPE: Final = INPUT_SCHEMA["messages"]

Message = dict[str, str | None]


def _content_text(content: Any, *, index: int) -> tuple[str | None, str | None]:
    if content is None or isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        return None, f"message {index} has content that is {value_kind(content)}, not text"
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            if part.get("type", "text") != "text":
                return None, f"message {index} has a '{part.get('type')}' part; only text is sent"
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else None
            what = (
                f"a '{kind}' part"
                if isinstance(kind, str)
                else f"a part that is {value_kind(part)}"
            )
            return None, f"message {index} has {what}; batchroute sends text parts only"
    return "\n".join(texts), None


def flatten_messages(value: Any) -> tuple[list[Message] | None, str | None]:
    """A parsed JSON chat as text messages, or None and why it is not one (None, None if null)."""
    if value is None:
        return None, None
    if not isinstance(value, list):
        return None, f"is {value_kind(value)}, not a list of chat messages"
    messages: list[Message] = []
    for index, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return None, f"message {index} is not an object with a 'role'"
        text, problem = _content_text(message.get("content"), index=index)
        if problem is not None:
            return None, problem
        messages.append({"role": message["role"], "content": text})
    return messages, None


def messages_from_python(values: list[Any], *, name: str) -> tuple[pl.Series, pl.Series]:
    """Chats parsed by Python's json, as a messages column and a column of invalid reasons."""
    chats: list[list[Message] | None] = []
    reasons: list[str | None] = []
    for value in values:
        chat, problem = flatten_messages(value)
        chats.append(chat)
        reasons.append(None if problem is None else f"{name}: {problem}")
    return (
        pl.Series(name, chats, dtype=MESSAGES_DTYPE),
        pl.Series("reason", reasons, dtype=pl.String),
    )


def messages_from_json_text(series: pl.Series) -> tuple[pl.Series, pl.Series]:
    """A column of chats written as JSON text (CSV, a Parquet string column), decoded."""
    series = series.cast(pl.String)
    try:
        decoded = series.str.json_decode(MESSAGES_DTYPE)
    except pl.exceptions.PolarsError:
        pass  # some row is not text chat messages; find which, and why, row by row
    else:
        return decoded.alias(series.name), pl.Series("reason", [None] * len(series), pl.String)
    values: list[Any] = []
    bad: dict[int, str] = {}
    for index, text in enumerate(series.to_list()):
        try:
            values.append(None if text is None else json.loads(text))
        except json.JSONDecodeError as exc:
            values.append(None)
            bad[index] = f"{series.name}: is not valid JSON ({exc.msg}, character {exc.pos + 1})"
    chats, reasons = messages_from_python(values, name=series.name)
    if bad:
        reasons = pl.Series("reason", [bad.get(i, r) for i, r in enumerate(reasons.to_list())])
    return chats, reasons


def messages_from_native(series: pl.Series) -> tuple[pl.Series, pl.Series]:
    """A column of chats stored as Parquet lists of structs (or JSON strings), as text messages."""
    dtype = series.dtype
    if dtype == pl.String:
        return messages_from_json_text(series)
    if (
        isinstance(dtype, pl.List)
        and isinstance(dtype.inner, pl.Struct)
        and {f.name: f.dtype for f in dtype.inner.fields}.get("content") == pl.String
        and "role" in {f.name for f in dtype.inner.fields}
    ):
        element = pl.element().struct
        chats = series.list.eval(
            pl.struct(role=element.field("role").cast(pl.String), content=element.field("content"))
        )
        return chats.cast(MESSAGES_DTYPE), pl.Series("reason", [None] * len(series), pl.String)
    return messages_from_python(series.to_list(), name=series.name)
