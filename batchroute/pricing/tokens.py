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
    "DEFAULT_OUTPUT_TOKENS",
    "PER_MESSAGE_TOKENS",
    "PRIMING_TOKENS",
    "count_message_tokens",
    "count_text_tokens",
    "expected_output_tokens",
    "message_token_bound",
    "messages_token_bound_expr",
    "messages_tokens_expr",
    "output_token_limit",
    "text_tokens_expr",
]

CHARS_PER_TOKEN = 4
PER_MESSAGE_TOKENS = 4
PRIMING_TOKENS = 3
DEFAULT_OUTPUT_TOKENS = 1024
"""The output assumed, and reserved, for a request that sends no output limit of its own."""
_BOUND_PER_MESSAGE_TOKENS = 16
"""A generous ceiling on the tokens a chat template adds per message (role, separators)."""


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


def message_token_bound(messages: Iterable[Mapping[str, Any]]) -> int:
    """A true upper bound on a chat request's prompt tokens, for the budget's reservation.

    A byte-level BPE tokenizer never yields more tokens than the UTF-8 bytes it encodes, so
    bytes plus a generous per-message template overhead bound every provider's count, where
    `count_message_tokens` (characters / 4) is only an estimate.
    """
    total = PRIMING_TOKENS
    for message in messages:
        text = _content_text(message.get("content"))
        total += _BOUND_PER_MESSAGE_TOKENS + len(text.encode("utf-8"))
    return total


def output_token_limit(body: Mapping[str, Any]) -> int | None:
    """The output limit a chat-completions body sends (`max_completion_tokens` or `max_tokens`).

    None when the body sends no limit: the model may then answer up to its own limit.
    """
    limits = [
        value
        for key in ("max_completion_tokens", "max_tokens")
        if isinstance(value := body.get(key), int) and not isinstance(value, bool)
    ]
    return min(limits) if limits else None


def expected_output_tokens(*, expected: int | None, body: Mapping[str, Any]) -> int:
    """What a response is assumed to cost when planning: the expected output, else the limit.

    `DEFAULT_OUTPUT_TOKENS` when the tier sets neither.
    """
    return expected or output_token_limit(body) or DEFAULT_OUTPUT_TOKENS


def text_tokens_expr(text: pl.Expr) -> pl.Expr:
    """The vectorised `count_text_tokens` (null text counts 0)."""
    return (
        text.fill_null("").str.len_chars().cast(pl.Int64) + (CHARS_PER_TOKEN - 1)
    ) // CHARS_PER_TOKEN


def messages_tokens_expr(messages: pl.Expr) -> pl.Expr:
    """The vectorised form of `count_message_tokens` over a List(Struct{role, content}) column."""
    per_message = text_tokens_expr(pl.element().struct.field("content")) + PER_MESSAGE_TOKENS
    return messages.list.eval(per_message).list.sum().fill_null(0) + PRIMING_TOKENS


def messages_token_bound_expr(messages: pl.Expr) -> pl.Expr:
    """The vectorised form of `message_token_bound` over a List(Struct{role, content}) column."""
    per_message = (
        pl.element().struct.field("content").fill_null("").str.len_bytes().cast(pl.Int64)
        + _BOUND_PER_MESSAGE_TOKENS
    )
    return messages.list.eval(per_message).list.sum().fill_null(0) + PRIMING_TOKENS
