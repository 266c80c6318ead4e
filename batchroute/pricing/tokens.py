"""Token estimates that the planner, the limiter and the simulator share.

batchroute does not ship a tokenizer for every provider's models. Instead one cheap, documented
estimate is used everywhere a count is needed before a response exists: about four characters of
text per token, plus a fixed overhead per chat message. The simulator reports usage with the same
function, so a rehearsal on the simulator gives forecasts that match the "actual" figures exactly,
and real providers' reported usage replaces the estimate the moment a response arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

__all__ = [
    "CHARS_PER_TOKEN",
    "PER_MESSAGE_TOKENS",
    "PRIMING_TOKENS",
    "count_message_tokens",
    "count_text_tokens",
    "messages_tokens_expr",
]

CHARS_PER_TOKEN = 4
PER_MESSAGE_TOKENS = 4
PRIMING_TOKENS = 3


def count_text_tokens(text: str) -> int:
    """Estimate the tokens in one piece of text: ceil(characters / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: count the text parts
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def count_message_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Estimate the prompt tokens of a chat request, as the simulator reports them."""
    total = PRIMING_TOKENS
    for message in messages:
        total += PER_MESSAGE_TOKENS + count_text_tokens(_content_text(message.get("content")))
    return total


def messages_tokens_expr(messages: pl.Expr) -> pl.Expr:
    """The vectorised form of `count_message_tokens` over a List(Struct{role, content}) column."""
    per_message = (
        pl.element().struct.field("content").fill_null("").str.len_chars().cast(pl.Int64)
        + (CHARS_PER_TOKEN - 1)
    ) // CHARS_PER_TOKEN + PER_MESSAGE_TOKENS
    return messages.list.eval(per_message).list.sum().fill_null(0) + PRIMING_TOKENS
