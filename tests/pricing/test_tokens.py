"""The one token estimate: the vectorised form agrees with the scalar one the simulator uses."""

from __future__ import annotations

import polars as pl

from batchroute.pricing.tokens import (
    DEFAULT_OUTPUT_TOKENS,
    count_message_tokens,
    count_text_tokens,
    expected_output_tokens,
    message_token_bound,
    messages_token_bound_expr,
    messages_tokens_expr,
    output_token_limit,
)
from batchroute.schema import INPUT_SCHEMA


def test_text_tokens_are_ceil_of_a_quarter_of_the_characters() -> None:
    assert [count_text_tokens("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_message_tokens_count_priming_and_each_message() -> None:
    messages = [{"role": "system", "content": "abcde"}, {"role": "user", "content": "hi there!!!!"}]
    assert count_message_tokens(messages) == 3 + (4 + 2) + (4 + 3)
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "x"}]}]
    assert count_message_tokens(parts) == 3 + 4 + 1


def test_vectorised_estimate_equals_the_scalar_one_row_by_row() -> None:
    chats = [
        [{"role": "user", "content": "Summarise this ticket 🎫 for the weekly review."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x" * 50_001}],
        [{"role": "user", "content": None}],
        [],
    ]
    frame = pl.DataFrame({"messages": chats}, schema={"messages": INPUT_SCHEMA["messages"]})
    vectorised = frame.select(messages_tokens_expr(pl.col("messages"))).to_series().to_list()
    scalar = [count_message_tokens([m for m in chat if m]) for chat in chats]
    assert vectorised == scalar


def test_the_token_bound_is_never_below_the_estimate_and_counts_bytes() -> None:
    """The estimate (characters / 4) undercounts CJK text; the byte bound never does."""
    chats = [
        [{"role": "user", "content": "こんにちは世界" * 20}],
        [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": ""}],
    ]
    for chat in chats:
        bound = message_token_bound(chat)
        assert bound >= count_message_tokens(chat)
        assert bound >= sum(len(m["content"]) for m in chat)  # ≥ one token per character
    cjk = chats[0][0]["content"]
    assert message_token_bound(chats[0]) == 3 + 16 + len(cjk.encode("utf-8"))
    schema = {"messages": INPUT_SCHEMA["messages"]}
    frame = pl.DataFrame({"messages": chats}, schema=schema)
    vectorised = frame.select(messages_token_bound_expr(pl.col("messages"))).to_series()
    assert vectorised.to_list() == [message_token_bound(chat) for chat in chats]


def test_the_output_limit_is_the_one_the_body_sends() -> None:
    assert output_token_limit({"max_tokens": 512}) == 512
    assert output_token_limit({"max_completion_tokens": 300, "max_tokens": 512}) == 300
    assert output_token_limit({"temperature": 0}) is None
    assert expected_output_tokens(expected=None, body={}) == DEFAULT_OUTPUT_TOKENS
    assert expected_output_tokens(expected=None, body={"max_completion_tokens": 77}) == 77
    assert expected_output_tokens(expected=90, body={"max_tokens": 512}) == 90
