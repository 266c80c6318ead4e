"""The JSON shapes of OpenAI's API that the simulator sends, byte for byte the real layouts.

Clients parse these with the real SDK, so field names, nesting and error codes follow the API's
own responses, including the error codes that cooldown logic keys on (`rate_limit_exceeded`,
`model_not_found`, `context_length_exceeded`, `invalid_api_key`).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = [
    "OWNED_BY",
    "completion_body",
    "context_length_error",
    "error_body",
    "format_duration",
    "invalid_api_key_error",
    "model_list_body",
    "model_not_found_error",
    "model_object",
    "rate_limit_error",
    "server_error",
]

OWNED_BY = "batchroute-sim"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    choices: list[tuple[str | None, str]],
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    reasoning_tokens: int,
    system_fingerprint: str,
) -> bytes:
    """A `chat.completion` object with a choice per (content, finish_reason), as UTF-8 JSON."""
    return _dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
                for index, (content, finish_reason) in enumerate(choices)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": reasoning_tokens,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": system_fingerprint,
        }
    ).encode()


def error_body(message: str, *, type: str, param: str | None = None, code: str | None) -> bytes:
    """The API's error envelope: `{"error": {"message", "type", "param", "code"}}`."""
    return _dumps(
        {"error": {"message": message, "type": type, "param": param, "code": code}}
    ).encode()


def rate_limit_error(
    model: str, *, kind: str, limit: int, used: int, requested: int, wait_s: float
) -> bytes:
    """A 429 body as OpenAI words it; `kind` is "requests" or "tokens"."""
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    return error_body(
        f"Rate limit reached for {model} in organization org-batchroute-sim on {unit}: "
        f"Limit {limit}, Used {used}, Requested {requested}. "
        f"Please try again in {format_duration(wait_s)}. "
        "Visit https://platform.openai.com/account/rate-limits to learn more.",
        type=kind,
        code="rate_limit_exceeded",
    )


def model_not_found_error(model: str) -> bytes:
    """The 404 for a model that does not exist (or was retired)."""
    return error_body(
        f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
    )


def context_length_error(*, context_window: int, prompt_tokens: int, max_tokens: int) -> bytes:
    """The 400 for a prompt plus max_tokens over the model's context window."""
    return error_body(
        f"This model's maximum context length is {context_window} tokens. However, you "
        f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
        f"{max_tokens} in the completion). Please reduce the length of the messages or "
        "completion.",
        type="invalid_request_error",
        param="messages",
        code="context_length_exceeded",
    )


def invalid_api_key_error(*, missing: bool) -> bytes:
    """The 401 for a missing or wrong key; the key itself is never echoed back."""
    message = (
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        if missing
        else "Incorrect API key provided. You can find your API key in the simulator's config."
    )
    return error_body(message, type="invalid_request_error", code="invalid_api_key")


def server_error(status: int) -> bytes:
    """A 500 or 503 body."""
    message = (
        "The server is overloaded or not ready yet."
        if status == 503
        else "The server had an error while processing your request. Sorry about that!"
    )
    return error_body(message, type="server_error", code="server_error")


def model_object(model: str, *, created: int) -> dict[str, Any]:
    """One entry of `GET /v1/models`."""
    return {"id": model, "object": "model", "created": created, "owned_by": OWNED_BY}


def model_list_body(models: list[str], *, created: int) -> bytes:
    """The body of `GET /v1/models`."""
    return _dumps(
        {"object": "list", "data": [model_object(m, created=created) for m in models]}
    ).encode()


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: "120ms", "1s", "1.5s", "6m0s"."""
    millis = math.ceil(seconds * 1000)
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
