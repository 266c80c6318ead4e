"""What the cache keeps of an answer, which answers it keeps, and their JSON form."""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["CACHEABLE_FINISH_REASONS", "CachedAnswer", "decode_answer", "encode_answer"]

CACHEABLE_FINISH_REASONS: frozenset[str] = frozenset({"stop", "tool_calls"})
"""A normal end of an answer; anything else (length, content_filter, None) is never stored."""

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """What a successful row needs from an answer; stored as JSON."""

    content: str
    finish_reason: str
    model: str
    """The model's wire name, as the endpoint reported it."""
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    created: int | None = None
    """The response's own `created` time (unix seconds), when the endpoint gave one."""

    @property
    def is_cacheable(self) -> bool:
        """A complete answer: a normal finish reason and some content."""
        return self.finish_reason in CACHEABLE_FINISH_REASONS and self.content is not None


def encode_answer(answer: CachedAnswer) -> str:
    """The answer as a JSON object."""
    # Spelled out rather than dataclasses.asdict, which deep-copies and costs several times more.
    fields = {
        "content": answer.content,
        "finish_reason": answer.finish_reason,
        "model": answer.model,
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "cached_tokens": answer.cached_tokens,
        "reasoning_tokens": answer.reasoning_tokens,
        "created": answer.created,
    }
    return _COMPACT.encode(fields)


def decode_answer(text: str) -> CachedAnswer | None:
    """An answer from its JSON; None (a miss) if the row is not one this version can read."""
    try:
        return CachedAnswer(**json.loads(text))
    except (ValueError, TypeError):
        return None
