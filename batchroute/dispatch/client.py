"""The OpenAI client: how batchroute builds one per endpoint, and sends one chat request.

This is the one place where openai's and httpx2's exceptions become batchroute's taxonomy
(`ErrorType`), like httpx's `map_httpcore_exceptions`. `send_chat` never raises for anything the
endpoint or the network did: it returns a `Reply` that says what happened.

An error message says what failed in batchroute's words (status, code, a fixed description) and
then in the provider's own: the body's `error.message` and `param`, which usually name the fix.
The provider's text can echo the API key, so it is scrubbed (`scrub_secrets`) before it is kept.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx2
import openai

from batchroute.config import EndpointConfig
from batchroute.errors import RunAbortedError
from batchroute.schema import ErrorType

__all__ = [
    "SIMULATOR_PLACEHOLDER_KEY",
    "Completion",
    "RateLimitHint",
    "Reply",
    "make_client",
    "parse_completion",
    "resolve_api_key",
    "scrub_secrets",
    "send_chat",
    "status_error_type",
    "translate_error",
]

SIMULATOR_PLACEHOLDER_KEY: Final = "sim-no-key"
"""The key sent to the embedded simulator when the job's key variable is unset."""

NO_KEY_PLACEHOLDER: Final = "no-key"
"""The key sent to servers that need none (`api_key_env: null`), since the SDK insists on one."""

_MAX_CONNECTIONS: Final = 1000
_MAX_KEEPALIVE: Final = 512
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_KEY_LIKE = re.compile(
    r"(?:\b(?:sk|pk|rk|key|api[_-]?key)-[A-Za-z0-9_\-*.]{4,})"
    r"|(?:\bBearer\s+[^\s\"',]+)"
    r"|(?:\b(?:api[_-]?key|key|token|secret)\s*[=:]\s*[^\s\"',]+)",
    re.IGNORECASE,
)
MAX_PROVIDER_MESSAGE_CHARS: Final = 400
"""How much of a provider's error message is kept."""


def resolve_api_key(endpoint: EndpointConfig, *, name: str = "endpoint") -> str:
    """The endpoint's API key from the environment; raise `RunAbortedError` naming the variable."""
    if endpoint.api_key_env is None:
        return NO_KEY_PLACEHOLDER
    key = os.environ.get(endpoint.api_key_env)
    if key:
        return key
    if endpoint.is_simulator:
        return SIMULATOR_PLACEHOLDER_KEY
    raise RunAbortedError(
        f"{name}: the environment variable {endpoint.api_key_env} is not set; export the API key "
        f"for {endpoint.base_url} in it, or set api_key_env: null for a server that needs no key"
    )


def make_client(
    endpoint: EndpointConfig, *, base_url: str, api_key: str, max_connections: int | None = None
) -> openai.AsyncOpenAI:
    """One AsyncOpenAI for an endpoint: SDK retries off, aiohttp transport, the job's timeout."""
    connections = max_connections or _MAX_CONNECTIONS
    timeout = httpx2.Timeout(endpoint.timeout_s, connect=min(endpoint.timeout_s, 10.0))
    http_client = openai.DefaultAioHttpClient(
        timeout=timeout,
        limits=httpx2.Limits(
            max_connections=connections,
            max_keepalive_connections=min(connections, _MAX_KEEPALIVE),
        ),
    )
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,  # batchroute owns the only retry loop, so every attempt is counted
        timeout=timeout,
        default_headers=dict(endpoint.headers) or None,
        http_client=http_client,
    )


@dataclass(slots=True)
class RateLimitHint:
    """What the `x-ratelimit-*` headers of one response said; None where a header was absent."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass(slots=True)
class Completion:
    """The fields batchroute keeps from a chat completion."""

    content: str | None
    finish_reason: str | None
    has_usage: bool
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float | None = None
    """Its usage priced at the answering model's float rates, once the walk has (for the
    budget); the fleet's spend and the progress display reuse it instead of pricing again."""


@dataclass(slots=True)
class Reply:
    """The outcome of one HTTP attempt: a completion, or an error in the taxonomy."""

    status_code: int | None
    completion: Completion | None = None
    error_type: str | None = None
    error_code: str | None = None
    message: str | None = None
    retry_after_s: float | None = None
    hint: RateLimitHint | None = None


async def send_chat(client: openai.AsyncOpenAI, body: Mapping[str, Any]) -> Reply:
    """POST one chat completion and translate whatever happens into a `Reply`."""
    try:
        # The raw post skips the SDK's per-request transforms and response models, which a batch
        # runner sending one shape a million times does not need (issue 2, "Client overhead").
        response = await client.post("/chat/completions", body=body, cast_to=httpx2.Response)
    except openai.APIError as exc:
        return translate_error(exc, secret=client.api_key)
    headers = response.headers
    hint = parse_rate_limit_headers(headers) if "x-ratelimit-limit-requests" in headers else None
    try:
        completion = parse_completion(json.loads(response.content))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return Reply(
            response.status_code,
            error_type=ErrorType.MALFORMED_RESPONSE,
            message=f"HTTP {response.status_code}: the body is not a chat completion",
            hint=hint,
        )
    return Reply(response.status_code, completion=completion, hint=hint)


def parse_completion(data: Any) -> Completion:
    """The content, finish reason and usage of a decoded chat-completion body."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise TypeError("content is not text")
    usage = data.get("usage")
    if not usage:
        return Completion(content, choice.get("finish_reason"), False, 0, 0, 0, 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Completion(
        content,
        choice.get("finish_reason"),
        True,
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(prompt_details.get("cached_tokens") or 0),
        int(completion_details.get("reasoning_tokens") or 0),
    )


def translate_error(exc: openai.APIError, *, secret: str | None = None) -> Reply:
    """Map an SDK exception onto the taxonomy, by type and status code, never by message text.

    `secret` (the API key in use) is scrubbed from the provider's message, besides anything
    that looks like a key.
    """
    if isinstance(exc, openai.APIStatusError):
        return _translate_status(exc, secret=secret)
    if isinstance(exc, openai.APIConnectionError):
        # The aiohttp transport reports a dropped connection as a connect *timeout*; look at
        # the underlying cause to tell a real timeout from a closed connection.
        cause = _root_cause(exc)
        if isinstance(exc, openai.APITimeoutError) and _is_timeout(cause):
            return Reply(None, error_type=ErrorType.TIMEOUT, message="no response before timeout")
        return Reply(
            None,
            error_type=ErrorType.CONNECTION,
            message=f"connection error ({type(cause).__name__})",
        )
    return Reply(
        None,
        error_type=ErrorType.MALFORMED_RESPONSE,
        message=f"the response could not be read ({type(exc).__name__})",
    )


def status_error_type(status: int, code: str | None) -> str:
    """The taxonomy's error type for an HTTP error status (and the body's `code`).

    For replies that arrive as data rather than as an SDK exception: the Batch API's error
    lines. `_translate_status` classifies the online replies the same way.
    """
    if status == 429:
        return ErrorType.RATE_LIMITED
    if status in (401, 403):
        return ErrorType.AUTH
    if status == 404:
        return ErrorType.MODEL_NOT_FOUND
    if status == 408:
        return ErrorType.TIMEOUT
    if status == 409:
        return ErrorType.CONFLICT
    if status >= 500:
        return ErrorType.SERVER_ERROR
    if code == "context_length_exceeded":
        return ErrorType.CONTEXT_LENGTH
    return ErrorType.BAD_REQUEST


def _translate_status(exc: openai.APIStatusError, *, secret: str | None) -> Reply:
    status = exc.status_code
    code = _safe_word(exc.code) or _safe_word(exc.type)
    headers = exc.response.headers
    hint = parse_rate_limit_headers(headers) if "x-ratelimit-limit-requests" in headers else None
    retry_after: float | None = None
    if status == 429 or isinstance(exc, openai.RateLimitError):
        error_type, what = ErrorType.RATE_LIMITED, "rate limited by the endpoint"
        retry_after = parse_retry_after(headers)
    elif status in (401, 403):
        error_type = ErrorType.AUTH
        what = "the endpoint refused the API key" if status == 401 else "permission denied"
    elif status == 404:
        error_type, what = ErrorType.MODEL_NOT_FOUND, "the model does not exist on this endpoint"
    elif status == 408:
        error_type, what = ErrorType.TIMEOUT, "the endpoint timed out"
    elif status == 409:
        error_type, what = ErrorType.CONFLICT, "conflict"
    elif status >= 500:
        error_type, what = ErrorType.SERVER_ERROR, "server error"
        retry_after = parse_retry_after(headers)
    elif exc.code == "context_length_exceeded":
        error_type, what = ErrorType.CONTEXT_LENGTH, "the prompt exceeds the model's context"
    else:
        error_type, what = ErrorType.BAD_REQUEST, "the endpoint rejected the request"
    param = _safe_word(exc.param)
    if param:
        what += f" (param {param})"
    label = f"HTTP {status} {code}" if code else f"HTTP {status}"
    message = f"{label}: {what}"
    said = _provider_message(exc.body, secret=secret)
    if said:
        message += f": {said}"
    return Reply(
        status,
        error_type=error_type,
        error_code=code,
        message=message,
        retry_after_s=retry_after,
        hint=hint,
    )


def _provider_message(body: object, *, secret: str | None) -> str | None:
    """The body's `error.message`, scrubbed of keys and cut to a readable length."""
    text = body.get("message") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        return None
    return scrub_secrets(" ".join(text.split()), secret=secret)[:MAX_PROVIDER_MESSAGE_CHARS]


def scrub_secrets(text: str, *, secret: str | None = None) -> str:
    """`text` with the given secret, and anything that looks like a key, replaced by [redacted]."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


def parse_retry_after(headers: httpx2.Headers | Mapping[str, str]) -> float | None:
    """The wait a response asks for: `retry-after-ms`, else `retry-after` (seconds or a date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def parse_rate_limit_headers(headers: httpx2.Headers | Mapping[str, str]) -> RateLimitHint:
    """The `x-ratelimit-*` headers as numbers; unparseable values become None."""
    return RateLimitHint(
        limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
        remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
        remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


def parse_duration(value: str | None) -> float | None:
    """A reset duration as OpenAI writes it ("1s", "6m0s", "20ms", "0.5") in seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts:
        return None
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _safe_word(value: object) -> str | None:
    """A code or type from the error body, only if it is a plain word (it cannot carry a key)."""
    if isinstance(value, str) and _SAFE_WORD.match(value) and not value.startswith("sk-"):
        return value
    return None


def _root_cause(exc: BaseException) -> BaseException:
    seen = 0
    while exc.__cause__ is not None and seen < 8:
        exc = exc.__cause__
        seen += 1
    return exc


def _is_timeout(cause: BaseException) -> bool:
    # aiohttp's ServerTimeoutError and SocketTimeoutError subclass TimeoutError; anything else
    # that reached here (a disconnect, a reset) is a connection problem.
    return isinstance(cause, (TimeoutError, httpx2.TimeoutException))
