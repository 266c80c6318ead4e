"""Deterministic answers: the same messages to the same model always get the same content.

The answer is chosen by a hash of the model and the messages, never by a random generator, so a
rerun of a job on the simulator reproduces every row. When the request asks for JSON the content
is valid JSON: a small generic object for `json_object`, and an instance of the schema for
`json_schema` (objects, arrays, enums, `$ref`s; strings are placeholder phrases).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["answer_for", "prompt_digest"]

_OPENERS = (
    "Here is a concise answer.",
    "Sure, here is how I would approach it.",
    "Short version first, details after.",
    "Good question; the answer depends on a few things.",
    "Here is what I found.",
    "This is a common problem, and the fix is usually simple.",
)
_SENTENCES = (
    "Start by reproducing the issue with the smallest input that still shows it.",
    "Keep the change small and cover it with a test that fails before the fix.",
    "Measure before optimising: the slow part is rarely where it first appears.",
    "Prefer explicit configuration over implicit defaults so the behaviour is easy to audit.",
    "Validate the input at the boundary and keep the core logic free of parsing concerns.",
    "Batch the writes, since one round trip per row dominates the cost at this scale.",
    "Add a timeout and a bounded retry with jitter around the network call.",
    "Log the identifiers you need to trace a request, but never the credentials.",
    "An index on the filtered column turns the full scan into a range lookup.",
    "Split the function where it does two things; each half is easier to test.",
    "Cache the result keyed on the inputs that actually change the output.",
    "Document the trade-off in the pull request so reviewers know why it was chosen.",
    "Use a context manager so the resource is released even when an error is raised.",
    "Pin the dependency versions and let the lock file record exactly what was tested.",
    "Return early on the error cases; the main path then reads top to bottom.",
    "Guard shared state with a lock, or better, give each worker its own copy.",
    "Stream the file instead of loading it whole, so memory stays flat as it grows.",
    "Check the edge cases: empty input, a single element, and duplicates.",
    "The naming should say what the value is, including its unit where it matters.",
    "Roll the change out behind a flag so it can be turned off without a deploy.",
)
_CLOSERS = (
    "Let me know if you want a worked example.",
    "That should be enough to get started.",
    "Happy to go deeper on any of these points.",
    "",
)
_WORDS = (
    "alpha",
    "batch",
    "cache",
    "delta",
    "event",
    "field",
    "graph",
    "index",
    "queue",
    "route",
    "shard",
    "token",
)
_MAX_DEPTH = 8


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""


def prompt_digest(model: str, messages: Sequence[Mapping[str, Any]]) -> bytes:
    """A 16-byte hash of the model and the messages' roles and text."""
    h = hashlib.blake2b(model.encode(), digest_size=16)
    for message in messages:
        h.update(b"\x1e")
        h.update(str(message.get("role", "")).encode())
        h.update(b"\x1f")
        h.update(_text_of(message.get("content")).encode())
    return h.digest()


def _text_answer(digest: bytes) -> str:
    parts = [_OPENERS[digest[0] % len(_OPENERS)]]
    count = 1 + digest[1] % 6
    for i in range(count):
        parts.append(_SENTENCES[digest[2 + i] % len(_SENTENCES)])
    closer = _CLOSERS[digest[8] % len(_CLOSERS)]
    if closer:
        parts.append(closer)
    return " ".join(parts)


def _json_object_answer(digest: bytes) -> dict[str, Any]:
    return {
        "answer": _SENTENCES[digest[2] % len(_SENTENCES)],
        "items": [_WORDS[b % len(_WORDS)] for b in digest[3 : 4 + digest[1] % 4]],
        "confidence": round(0.5 + (digest[9] % 50) / 100, 2),
        "ref": digest[10:14].hex(),
    }


class _SchemaFiller:
    """Builds one deterministic instance of a JSON schema."""

    def __init__(self, root: Mapping[str, Any], digest: bytes) -> None:
        self._root = root
        self._digest = digest
        self._i = 0

    def _byte(self) -> int:
        self._i += 1
        return self._digest[self._i % len(self._digest)]

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        node: Any = self._root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        return node if isinstance(node, Mapping) else {}

    def fill(self, schema: Any, depth: int = 0) -> Any:
        if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self._byte() % len(enum)]
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.fill(options[0], depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        if kind == "object":
            props = schema.get("properties", {})
            if not isinstance(props, Mapping):
                return {}
            return {name: self.fill(sub, depth + 1) for name, sub in props.items()}
        if kind == "array":
            low = schema.get("minItems", 1)
            high = schema.get("maxItems", max(low, 3))
            count = low + self._byte() % (high - low + 1) if high >= low else low
            return [self.fill(schema.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "integer":
            return int(schema.get("minimum", 0)) + self._byte() % 100
        if kind == "number":
            return float(schema.get("minimum", 0)) + self._byte() / 10
        if kind == "boolean":
            return self._byte() % 2 == 0
        if kind == "null":
            return None
        return f"{_WORDS[self._byte() % len(_WORDS)]} {_WORDS[self._byte() % len(_WORDS)]}"


def _json_mode(response_format: Any) -> tuple[str, Mapping[str, Any] | None]:
    if not isinstance(response_format, Mapping):
        return "text", None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return "json_schema", schema if isinstance(schema, Mapping) else None
    if kind == "json_object":
        return "json_object", None
    return "text", None


def answer_for(digest: bytes, *, response_format: Any = None) -> str:
    """The content for a request whose prompt hashed to `digest`: text, or JSON when asked."""
    mode, schema = _json_mode(response_format)
    if mode == "text":
        return _text_answer(digest)
    value = (
        _SchemaFiller(schema, digest).fill(schema)
        if schema is not None
        else _json_object_answer(digest)
    )
    return json.dumps(value, ensure_ascii=False)
