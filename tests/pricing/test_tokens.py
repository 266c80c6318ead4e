"""The one token estimate: the vectorised form agrees with the scalar one the simulator uses."""

from __future__ import annotations

import polars as pl

from batchroute.pricing.tokens import count_message_tokens, count_text_tokens, messages_tokens_expr
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
