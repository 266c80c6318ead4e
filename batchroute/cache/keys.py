"""The cache key: a hash of the canonical request, every field of it, and nothing else."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["request_key"]

_KEY_VERSION = 1
"""Part of every key: a change to what is hashed must change every key, not reuse old answers."""
# Made once: json.dumps with any option builds a new encoder on every call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def request_key(base_url: str, body: Mapping[str, Any]) -> bytes:
    """The cache key of one request: a 16-byte (128-bit) blake2b of its canonical JSON.

    `base_url` is the endpoint as configured (`simulator` stays `simulator`, not a loopback
    port); `body` is the whole request body as sent, `model` and `messages` included. Nothing is
    picked from the body: an allow-list of fields is how a cache serves the answer to another
    question once a parameter it forgot changes. Headers and API keys are not part of a body.
    """
    canonical = _CANONICAL.encode([_KEY_VERSION, base_url.rstrip("/"), body])
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()
