"""Tests for batchroute.dispatch.client: the one place SDK exceptions become the error taxonomy."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import openai
import pytest

from batchroute.config import EndpointConfig
from batchroute.dispatch.client import (
    SIMULATOR_PLACEHOLDER_KEY,
    Reply,
    make_client,
    parse_duration,
    parse_retry_after,
    resolve_api_key,
    send_chat,
)
from batchroute.errors import RunAbortedError
from batchroute.schema import ErrorType
from batchroute.sim import FaultRates, LocalSimulator, SimConfig, SimModelConfig

SECRET = "sk-test-SECRET0123456789abcdef"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def _completion(content: str | None = "hello", finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }


def _error(message: str, code: str | None, type_: str = "invalid_request_error") -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()


def _send(handler: Callable[[httpx2.Request], httpx2.Response]) -> Reply:
    async def main() -> Reply:
        client = openai.AsyncOpenAI(
            api_key=SECRET,
            base_url="http://test.invalid/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        )
        async with client:
            return await send_chat(client, BODY)

    return anyio.run(main)


def _status(status: int, body: bytes, headers: dict[str, str] | None = None) -> Reply:
    return _send(lambda request: httpx2.Response(status, content=body, headers=headers))


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, "rate_limit_exceeded", ErrorType.RATE_LIMITED),
        (408, None, ErrorType.TIMEOUT),
        (409, None, ErrorType.CONFLICT),
        (500, None, ErrorType.SERVER_ERROR),
        (502, None, ErrorType.SERVER_ERROR),
        (503, None, ErrorType.SERVER_ERROR),
        (404, "model_not_found", ErrorType.MODEL_NOT_FOUND),
        (400, "context_length_exceeded", ErrorType.CONTEXT_LENGTH),
        (400, None, ErrorType.BAD_REQUEST),
        (422, None, ErrorType.BAD_REQUEST),
        (401, "invalid_api_key", ErrorType.AUTH),
        (403, None, ErrorType.AUTH),
    ],
)
def test_status_codes_map_onto_the_taxonomy(status: int, code: str | None, expected: str) -> None:
    reply = _status(status, _error("whatever the server says", code))
    assert reply.status_code == status
    assert reply.error_type == expected
    assert reply.completion is None
    assert reply.message is not None and reply.message.startswith(f"HTTP {status}")


def test_rate_limit_is_detected_by_status_not_message_text() -> None:
    """A 429 whose body carries no code and odd text is still a rate limit."""
    reply = _status(429, b'{"error": {"message": "slow down please", "code": null}}')
    assert reply.error_type == ErrorType.RATE_LIMITED
    reply = _status(400, _error("Rate limit reached for requests", "rate_limit_exceeded"))
    assert reply.error_type == ErrorType.BAD_REQUEST


def test_retry_after_headers_are_read() -> None:
    reply = _status(
        429, _error("x", "rate_limit_exceeded"), {"retry-after-ms": "1500", "retry-after": "9"}
    )
    assert reply.retry_after_s == pytest.approx(1.5)
    reply = _status(429, _error("x", None), {"retry-after": "3"})
    assert reply.retry_after_s == pytest.approx(3.0)
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None


def test_rate_limit_headers_are_read() -> None:
    headers = {
        "x-ratelimit-limit-requests": "3000",
        "x-ratelimit-remaining-requests": "2999",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-limit-tokens": "40000",
        "x-ratelimit-remaining-tokens": "39000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    reply = _send(lambda r: httpx2.Response(200, json=_completion(), headers=headers))
    assert reply.hint is not None
    assert reply.hint.limit_requests == 3000 and reply.hint.remaining_requests == 2999
    assert reply.hint.reset_requests_s == pytest.approx(0.02)
    assert reply.hint.reset_tokens_s == pytest.approx(360.0)
    assert parse_duration("1m30.5s") == pytest.approx(90.5)
    assert parse_duration("junk") is None


def test_completion_fields_are_parsed() -> None:
    reply = _send(lambda r: httpx2.Response(200, json=_completion("the answer")))
    assert reply.error_type is None and reply.completion is not None
    c = reply.completion
    assert (c.content, c.finish_reason, c.has_usage) == ("the answer", "stop", True)
    assert (c.input_tokens, c.output_tokens, c.cached_tokens, c.reasoning_tokens) == (11, 7, 3, 2)


@pytest.mark.parametrize("body", [b"{not json", b'{"id": "x"}', b'{"choices": []}', b"[]"])
def test_malformed_2xx_body_is_malformed_response(body: bytes) -> None:
    reply = _status(200, body)
    assert reply.status_code == 200
    assert reply.error_type == ErrorType.MALFORMED_RESPONSE


def test_transport_errors_map_to_timeout_and_connection() -> None:
    def timeout(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=request)

    def refused(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    assert _send(timeout).error_type == ErrorType.TIMEOUT
    reply = _send(refused)
    assert reply.error_type == ErrorType.CONNECTION and reply.status_code is None


def test_no_key_in_any_message() -> None:
    """A 401 body that echoes the key, as OpenAI's does, never reaches our message."""
    reply = _status(
        401,
        _error(
            f"Incorrect API key provided: {SECRET}. You can find your key at ...", "invalid_api_key"
        ),
    )
    assert reply.error_type == ErrorType.AUTH
    assert SECRET not in repr(reply) and SECRET[:12] not in repr(reply)
    reply = _status(400, _error(f"bad {SECRET}", SECRET))  # even a code that is a key
    assert SECRET not in repr(reply)


def test_resolve_api_key() -> None:
    real = EndpointConfig(base_url="https://api.example.com/v1", api_key_env="BR_TEST_KEY_UNSET")
    with pytest.raises(RunAbortedError, match="BR_TEST_KEY_UNSET"):
        resolve_api_key(real)
    sim = EndpointConfig(api_key_env="BR_TEST_KEY_UNSET")
    assert resolve_api_key(sim) == SIMULATOR_PLACEHOLDER_KEY


def test_resolve_api_key_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BR_TEST_KEY", SECRET)
    endpoint = EndpointConfig(base_url="https://api.example.com/v1", api_key_env="BR_TEST_KEY")
    assert resolve_api_key(endpoint) == SECRET
    assert resolve_api_key(EndpointConfig(base_url="http://x/v1", api_key_env=None))


def test_loopback_faults_through_the_aiohttp_transport() -> None:
    """Over a real socket: a dropped connection is `connection`, a hang is `timeout`."""
    sim = SimConfig(
        models={
            "drop": SimModelConfig(faults=FaultRates(disconnect=1.0)),
            "hang": SimModelConfig(faults=FaultRates(hang=1.0, hang_s=5.0)),
            "ok": SimModelConfig(),
        }
    )

    async def main() -> dict[str, Reply]:
        async with LocalSimulator(sim) as server:
            endpoint = EndpointConfig(timeout_s=0.3)
            client = make_client(endpoint, base_url=server.base_url, api_key="k")
            async with client:
                return {
                    name: await send_chat(client, {**BODY, "model": name})
                    for name in ("drop", "hang", "ok")
                }

    replies = anyio.run(main)
    assert replies["drop"].error_type == ErrorType.CONNECTION
    assert replies["hang"].error_type == ErrorType.TIMEOUT
    assert replies["ok"].completion is not None and replies["ok"].completion.content


def test_make_client_turns_sdk_retries_off() -> None:
    async def main() -> int:
        client = make_client(EndpointConfig(), base_url="http://127.0.0.1:9/v1", api_key="k")
        async with client:
            return client.max_retries

    assert anyio.run(main) == 0


def test_error_message_carries_the_providers_words_scrubbed() -> None:
    """The body's error.message and param reach the row's message, with any key removed."""
    said = (
        "Unsupported value: 'temperature' does not support 0 with this model. "
        "Only the default (1) value is supported."
    )
    body = json.dumps(
        {
            "error": {
                "message": f"{said} (key {SECRET}, also sk-proj-abcd1234efgh)",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "unsupported_value",
            }
        }
    ).encode()
    reply = _status(400, body)
    assert reply.error_type == ErrorType.BAD_REQUEST
    assert reply.message is not None
    assert said in reply.message
    assert "param temperature" in reply.message and "unsupported_value" in reply.message
    assert SECRET not in reply.message and "sk-proj-abcd" not in reply.message
