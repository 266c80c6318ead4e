"""From a file's columns to the frame the runner reads (`INPUT_SCHEMA`), as polars expressions.

Each format reader produces the same intermediate frame: the row's `line` and ordinal, and the
job's columns under fixed private names (`_id`, `_prompt` or `_messages`, `_system`, `_tier`,
`_json`, `_invalid`), followed by the metadata columns under their own names. `normalize` turns
that into `INPUT_SCHEMA` with whole-column expressions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

from batchroute.config import InputConfig
from batchroute.schema import INPUT_SCHEMA

__all__ = [
    "BASE_SCHEMA",
    "ColumnMap",
    "normalize",
    "truthy",
]

LINE: Final = "_line"
ORDINAL: Final = "_ordinal"
ID: Final = "_id"
PROMPT: Final = "_prompt"
MESSAGES: Final = "_messages"
SYSTEM: Final = "_system"
TIER: Final = "_tier"
JSON: Final = "_json"
INVALID: Final = "_invalid"

BASE_SCHEMA: Final = pl.Schema(
    {
        LINE: pl.Int64,
        ORDINAL: pl.Int64,
        ID: pl.String,
        SYSTEM: pl.String,
        TIER: pl.String,
        INVALID: pl.String,
    }
)
"""The intermediate columns with a fixed type; `_prompt`/`_messages` and `_json` come beside."""

_TRUE_WORDS = ("true", "1", "yes")


@dataclass(frozen=True)
class ColumnMap:
    """Which of the file's columns feed which part of a request."""

    id: str | None
    prompt: str
    messages: str | None
    system: str | None
    system_constant: str | None
    tier: str
    json_output: str
    metadata: tuple[str, ...]
    openai_batch: bool = False

    @classmethod
    def from_config(cls, config: InputConfig, *, openai_batch: bool = False) -> ColumnMap:
        """The mapping an `input:` section describes (the Batch API format fixes id and chat)."""
        return cls(
            id="custom_id" if openai_batch else config.id_column,
            prompt=config.prompt_column,
            messages="body.messages" if openai_batch else config.messages_column,
            system=config.system_prompt_column,
            system_constant=config.system_prompt,
            tier=config.tier_hint_column,
            json_output=config.json_output_column,
            metadata=config.metadata_columns,
            openai_batch=openai_batch,
        )

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def text_column(self) -> str:
        """The column holding each row's request: the prompt, or the chat messages."""
        return self.messages if self.messages is not None else self.prompt

    def key_columns(self) -> list[tuple[str, str]]:
        """The columns every row needs (id, prompt or messages), with the setting naming each."""
        if self.openai_batch:
            return [("custom_id", "input.format"), ("body", "input.format")]
        pairs = [(self.id, "input.id_column")] if self.id is not None else []
        if self.messages is not None:
            pairs.append((self.messages, "input.messages_column"))
        else:
            pairs.append((self.prompt, "input.prompt_column"))
        return pairs

    def required(self) -> list[tuple[str, str]]:
        """Every column the file must have, with the setting naming each."""
        pairs = self.key_columns()
        if self.system is not None:
            pairs.append((self.system, "input.system_prompt_column"))
        pairs.extend((name, "input.metadata_columns") for name in self.metadata)
        return pairs


def truthy(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """True for true, 1, "true", "1", "yes" (any case, any padding); null stays null."""
    if dtype == pl.Boolean:
        return column
    if dtype.is_numeric():
        return column != 0
    if dtype == pl.Null or dtype.is_nested():
        return pl.lit(None, pl.Boolean)  # no hint: the column is absent or not a flag
    text = column.cast(pl.String).str.strip_chars().str.to_lowercase()
    return pl.when(text == "").then(None).otherwise(text.is_in(_TRUE_WORDS))


def _blank(text: pl.Expr) -> pl.Expr:
    return text.is_null() | (text.str.strip_chars() == "")


def _joined_contents(roles: tuple[str, ...]) -> pl.Expr:
    element = pl.element().struct
    return (
        pl.col(MESSAGES)
        .list.eval(element.field("content").filter(element.field("role").is_in(roles)))
        .list.eval(pl.element().drop_nulls())
        .list.join("\n")
    )


def normalize(raw: pl.DataFrame, columns: ColumnMap, *, row_offset: int) -> pl.DataFrame:
    """The intermediate frame of one chunk as `INPUT_SCHEMA`, then the metadata columns."""
    system: pl.Expr
    empty_reason: pl.Expr
    if columns.is_chat:
        prompt = _joined_contents(("user",))
        joined = _joined_contents(("system", "developer"))
        system = pl.when(joined == "").then(None).otherwise(joined)
        messages = pl.col(MESSAGES)
        empty_reason = (
            pl.when(pl.col(MESSAGES).list.len().fill_null(0) == 0)
            .then(pl.lit(f"{columns.text_column} is empty"))
            .when(_blank(prompt))
            .then(pl.lit(f"{columns.text_column} has no user message with text"))
        )
    else:
        prompt = pl.col(PROMPT).cast(pl.String)
        given = (
            pl.lit(columns.system_constant, pl.String)
            if columns.system_constant is not None
            else pl.col(SYSTEM)
        )
        system = pl.when(_blank(given)).then(None).otherwise(given)
        user = pl.struct(role=pl.lit("user"), content=prompt)
        messages = (
            pl.when(system.is_null())
            .then(pl.concat_list(user))
            .otherwise(pl.concat_list(pl.struct(role=pl.lit("system"), content=system), user))
        )
        empty_reason = pl.when(_blank(prompt)).then(pl.lit("prompt is empty"))
    tier = pl.col(TIER).cast(pl.String).str.strip_chars().str.to_lowercase()
    n = raw.height
    frame = raw.select(
        pl.int_range(row_offset, row_offset + n, dtype=pl.Int64).alias("row_index"),
        pl.col(LINE).alias("line"),
        pl.coalesce(pl.col(ID), pl.col(ORDINAL).cast(pl.String)).alias("id"),
        prompt.alias("prompt"),
        system.alias("system_prompt"),
        messages.cast(INPUT_SCHEMA["messages"]).alias("messages"),
        pl.when(tier == "").then(None).otherwise(tier).alias("tier_hint"),
        truthy(pl.col(JSON), raw.schema[JSON]).alias("json_output"),
        pl.coalesce(pl.col(INVALID), empty_reason).alias("invalid_reason"),
        *(pl.col(name) for name in columns.metadata),
    )
    return frame.cast(dict(INPUT_SCHEMA))  # type: ignore[arg-type]
