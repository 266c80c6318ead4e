"""The simulator, through the real AsyncOpenAI client over a real loopback socket."""

from __future__ import annotations

import asyncio
import json
import os
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import openai
import pytest

from batchroute.dispatch.client import translate_error
from batchroute.pricing.tokens import count_message_tokens, count_text_tokens
from batchroute.schema import ErrorType
from batchroute.sim import (
    EmbeddedSimulator,
    FaultRates,
    LocalSimulator,
    SimConfig,
    SimModelConfig,
    SimulatorProcess,
)
from batchroute.sim import hosting as sim_hosting
from batchroute.sim import server as sim_server
from batchroute.sim.loader import load_sim_config

T = TypeVar("T")

KEY = "sk-sim-test-secret-0123456789"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a careful reviewer."},
    {"role": "user", "content": "Review this function for off-by-one errors: def f(xs): ..."},
]

CONFIG = SimConfig(
    seed=7,
    models={
        "retired": SimModelConfig(not_found=True),
        "small": SimModelConfig(context_window=200),
        "rpm3": SimModelConfig(rpm=3, tpm=100_000),
        "tpm": SimModelConfig(tpm=1_000),
        "burst": SimModelConfig(rpm=120, per_second=True),
        "fixed": SimModelConfig(completion_tokens=42),
        "maxed": SimModelConfig(completion_tokens="max_tokens"),
        "fractions": SimModelConfig(cached_fraction=0.5, reasoning_fraction=0.25),
        "slow": SimModelConfig(latency_ms=150),
        "gpt-5-mini": SimModelConfig(),
        "o3-mini": SimModelConfig(),
        "f-rate_limit": SimModelConfig(faults=FaultRates(rate_limit=1.0, retry_after_s=3)),
        "f-server_error": SimModelConfig(faults=FaultRates(server_error=1.0)),
        "f-unavailable": SimModelConfig(faults=FaultRates(unavailable=1.0)),
        "f-hang": SimModelConfig(faults=FaultRates(hang=1.0, hang_s=60)),
        "f-disconnect": SimModelConfig(faults=FaultRates(disconnect=1.0)),
        "f-malformed": SimModelConfig(faults=FaultRates(malformed=1.0)),
        "f-content_filter": SimModelConfig(faults=FaultRates(content_filter=1.0)),
        "stormy": SimModelConfig(
            rpm=10_000,
            faults=FaultRates(
                rate_limit=0.05,
                server_error=0.05,
                unavailable=0.05,
                disconnect=0.05,
                malformed=0.05,
            ),
        ),
    },
)


@pytest.fixture(scope="module")
def sim() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(CONFIG) as running:
        yield running


def call(
    sim: EmbeddedSimulator | SimulatorProcess,
    action: Callable[[openai.AsyncOpenAI], Awaitable[T]],
    *,
    api_key: str = KEY,
    timeout: float = 10.0,
    http_client: Any = None,
) -> T:
    """Run one coroutine against the simulator with a fresh SDK client (SDK retries off)."""

    async def main() -> T:
        client = openai.AsyncOpenAI(
            base_url=sim.base_url,
            api_key=api_key,
            max_retries=0,
            timeout=timeout,
            http_client=http_client,
        )
        async with client:
            return await action(client)

    return asyncio.run(main())


def body_of(error: openai.APIStatusError) -> dict[str, Any]:
    """The `error` object of an API error's body (the SDK unwraps the envelope)."""
    assert isinstance(error.body, dict)
    return error.body


def complete(model: str, **kwargs: Any) -> Callable[[openai.AsyncOpenAI], Awaitable[Any]]:
    kwargs.setdefault("messages", MESSAGES)
    kwargs.setdefault("max_tokens", 512)
    return lambda client: client.chat.completions.create(model=model, **kwargs)


def raw(model: str, **kwargs: Any) -> Callable[[openai.AsyncOpenAI], Awaitable[Any]]:
    kwargs.setdefault("messages", MESSAGES)
    kwargs.setdefault("max_tokens", 512)
    return lambda client: client.chat.completions.with_raw_response.create(model=model, **kwargs)


def test_completion_has_the_real_shape_and_estimated_usage(sim: EmbeddedSimulator) -> None:
    response = call(sim, raw("gpt-any"))
    body = json.loads(response.http_response.content)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "gpt-any"
    assert body["system_fingerprint"].startswith("fp_")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["refusal"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_message_tokens(MESSAGES)
    assert usage["completion_tokens"] == count_text_tokens(choice["message"]["content"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    parsed = response.parse()  # the SDK's own model accepts it
    assert parsed.choices[0].message.content == choice["message"]["content"]


def test_answers_are_deterministic_per_prompt_and_model(sim: EmbeddedSimulator) -> None:
    first = call(sim, complete("gpt-any")).choices[0].message.content
    with EmbeddedSimulator(SimConfig(seed=99)) as other:
        again = call(other, complete("gpt-any")).choices[0].message.content
    assert first == again
    other_prompt = [{"role": "user", "content": "Summarise the changelog for 2.0."}]
    contents = {
        call(sim, complete("gpt-any", messages=other_prompt)).choices[0].message.content,
        call(sim, complete("gpt-other")).choices[0].message.content,
        first,
    }
    assert len(contents) == 3


def test_json_object_mode_answers_valid_json(sim: EmbeddedSimulator) -> None:
    response = call(sim, complete("gpt-any", response_format={"type": "json_object"}))
    assert isinstance(json.loads(response.choices[0].message.content), dict)


def test_json_schema_mode_answers_an_instance_of_the_schema(sim: EmbeddedSimulator) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "severity": {"enum": ["low", "high"]},
            "count": {"type": "integer"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
        },
        "required": ["name", "severity", "count", "tags"],
        "$defs": {"tag": {"type": "string"}},
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "bug", "schema": schema, "strict": True}}
    value = json.loads(
        call(sim, complete("gpt-any", response_format=fmt)).choices[0].message.content
    )
    assert set(value) == {"name", "severity", "count", "tags"}
    assert value["severity"] in {"low", "high"} and isinstance(value["count"], int)
    assert value["tags"] and all(isinstance(tag, str) for tag in value["tags"])


def test_completion_tokens_modes(sim: EmbeddedSimulator) -> None:
    fixed = call(sim, complete("fixed"))
    assert fixed.usage.completion_tokens == 42 and fixed.choices[0].finish_reason == "stop"
    maxed = call(sim, complete("maxed", max_tokens=300))
    assert maxed.usage.completion_tokens == 300
    capped = call(sim, complete("gpt-any", max_tokens=3))
    assert capped.usage.completion_tokens == 3
    assert capped.choices[0].finish_reason == "length"
    assert count_text_tokens(capped.choices[0].message.content) == 3


def test_cached_and_reasoning_token_fractions(sim: EmbeddedSimulator) -> None:
    response = call(sim, complete("fractions", max_tokens=512))
    usage = response.usage
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens // 2
    assert usage.completion_tokens_details.reasoning_tokens == usage.completion_tokens // 4


def test_retired_model_raises_not_found_with_its_code(sim: EmbeddedSimulator) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        call(sim, complete("retired"))
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert body_of(caught.value)["type"] == "invalid_request_error"


def test_over_the_context_window_raises_context_length_exceeded(sim: EmbeddedSimulator) -> None:
    prompt_tokens = count_message_tokens(MESSAGES)
    call(sim, complete("small", max_tokens=200 - prompt_tokens))  # exactly fits
    with pytest.raises(openai.BadRequestError) as caught:
        call(sim, complete("small", max_tokens=201 - prompt_tokens))
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert body_of(caught.value)["type"] == "invalid_request_error"


def test_required_key_refuses_wrong_and_missing_keys_without_echoing_them() -> None:
    with EmbeddedSimulator(SimConfig(require_api_key=KEY)) as keyed:
        wrong = "sk-wrong-key-9876543210"
        with pytest.raises(openai.AuthenticationError) as caught:
            call(keyed, complete("gpt-any"), api_key=wrong)
        assert caught.value.status_code == 401
        assert caught.value.code == "invalid_api_key"
        text = caught.value.response.text
        assert wrong not in text and KEY not in text
        with pytest.raises(openai.AuthenticationError):
            call(keyed, lambda client: client.models.list(), api_key=wrong)

        async def no_key() -> tuple[int, str]:
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    keyed.base_url + "/chat/completions",
                    json={"model": "gpt-any", "messages": MESSAGES},
                ) as response:
                    return response.status, await response.text()

        status, body = asyncio.run(no_key())
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        ok = call(keyed, raw("gpt-any"))
        assert KEY not in ok.http_response.text
        assert keyed.stats()["requests"]["gpt-any"] == {"401": 2, "200": 1}


def test_rpm_limit_answers_429_with_retry_after_and_every_response_has_headers(
    sim: EmbeddedSimulator,
) -> None:
    responses = [call(sim, raw("rpm3")) for _ in range(3)]
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in responses]
    assert remaining == [2, 1, 0]
    for response in responses:
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-limit-tokens"] == "100000"
        assert response.headers["x-ratelimit-reset-requests"]
        assert int(response.headers["x-ratelimit-remaining-tokens"]) < 100_000
    with pytest.raises(openai.RateLimitError) as caught:
        call(sim, complete("rpm3"))
    error = caught.value
    assert error.code == "rate_limit_exceeded" and body_of(error)["type"] == "requests"
    headers = error.response.headers
    assert 55 <= int(headers["retry-after"]) <= 60
    assert 55_000 <= int(headers["retry-after-ms"]) <= 60_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert sim.stats()["limited"]["rpm3"] == 1


def test_tpm_limit_counts_prompt_plus_max_tokens(sim: EmbeddedSimulator) -> None:
    prompt = count_message_tokens(MESSAGES)
    first = call(sim, raw("tpm", max_tokens=600))
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1_000 - prompt - 600)
    with pytest.raises(openai.RateLimitError) as caught:
        call(sim, complete("tpm", max_tokens=600))
    assert body_of(caught.value)["type"] == "tokens"
    call(sim, complete("tpm", max_tokens=1_000 - 2 * prompt - 600))  # what is left still fits


def test_per_second_window_admits_rpm_over_60_per_second(sim: EmbeddedSimulator) -> None:
    async def burst(client: openai.AsyncOpenAI) -> list[int]:
        results = await asyncio.gather(
            *(complete("burst")(client) for _ in range(5)), return_exceptions=True
        )
        return [429 if isinstance(r, openai.RateLimitError) else 200 for r in results]

    # Two of five: the one-second window's expiry is checked in virtual time in test_sim_limits.
    assert sorted(call(sim, burst)) == [200, 200, 429, 429, 429]


def test_latency_is_applied(sim: EmbeddedSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler waits the model's latency (recorded, not timed: no wall clock in tests)."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(delay: float, result: Any = None) -> Any:
        waits.append(delay)
        return await real_sleep(0, result)

    shim = types.SimpleNamespace(**{**vars(asyncio), "sleep": recorded})
    monkeypatch.setattr(sim_server, "asyncio", shim)
    call(sim, complete("slow"))
    assert waits == [pytest.approx(0.15)]


@pytest.mark.parametrize(
    ("model", "exception", "status"),
    [
        ("f-rate_limit", openai.RateLimitError, 429),
        ("f-server_error", openai.InternalServerError, 500),
        ("f-unavailable", openai.InternalServerError, 503),
        ("f-disconnect", openai.APIConnectionError, None),
        ("f-hang", openai.APITimeoutError, None),
        ("f-malformed", json.JSONDecodeError, None),
    ],
)
def test_each_fault_surfaces_as_the_sdk_exception(
    sim: EmbeddedSimulator, model: str, exception: type[Exception], status: int | None
) -> None:
    before = sim.stats()["requests"].get(model, {})
    with pytest.raises(exception) as caught:
        call(sim, complete(model), timeout=0.5)
    if status is not None:
        assert isinstance(caught.value, openai.APIStatusError)
        assert caught.value.status_code == status
    if model == "f-rate_limit":
        assert isinstance(caught.value, openai.RateLimitError)
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["retry-after"] == "3"
        assert caught.value.response.headers["retry-after-ms"] == "3000"
    after = sim.stats()["requests"][model]
    assert sum(after.values()) == sum(before.values()) + 1


def test_disconnect_through_the_sdk_aiohttp_transport_is_a_connection_error(
    sim: EmbeddedSimulator,
) -> None:
    """The SDK's aiohttp transport calls a dropped connection a timeout; batchroute does not.

    The client's timeout is far beyond the test's own (pytest-timeout), so a hang fails the test.
    """
    with pytest.raises(openai.APIConnectionError) as caught:
        call(sim, complete("f-disconnect"), timeout=600, http_client=openai.DefaultAioHttpClient())
    assert translate_error(caught.value).error_type == ErrorType.CONNECTION


def test_content_filter_fault_ends_the_choice_with_no_content(sim: EmbeddedSimulator) -> None:
    response = call(sim, complete("f-content_filter"))
    assert response.choices[0].finish_reason == "content_filter"
    assert response.choices[0].message.content is None
    assert sim.stats()["faults"]["f-content_filter"]["content_filter"] >= 1


def test_stats_count_every_request_exactly_once() -> None:
    n = 120

    async def storm(client: openai.AsyncOpenAI) -> int:
        async def one() -> int:
            try:
                await complete("stormy")(client)
            except (openai.APIError, json.JSONDecodeError):
                return 0
            return 1

        return sum(await asyncio.gather(*(one() for _ in range(n))))

    with EmbeddedSimulator(CONFIG) as fresh:
        ok = call(fresh, storm)
        stats = fresh.stats()
        counts = stats["requests"]["stormy"]
        assert stats["total"] == n == sum(counts.values())
        faults = stats["faults"]["stormy"]
        assert sum(faults.values()) > 0
        assert ok == counts["200"] - faults.get("malformed", 0)
        assert counts.get("429", 0) == faults.get("rate_limit", 0)  # no limit was hit
        fresh.reset()
        assert fresh.stats() == {"total": 0, "requests": {}, "faults": {}, "limited": {}}


def test_same_seed_draws_the_same_faults() -> None:
    async def thirty(client: openai.AsyncOpenAI) -> None:
        for _ in range(30):
            try:
                await complete("stormy")(client)
            except (openai.APIError, json.JSONDecodeError):
                pass

    def outcomes() -> dict[str, int]:
        with EmbeddedSimulator(CONFIG) as fresh:
            call(fresh, thirty)
            counts: dict[str, int] = fresh.stats()["faults"]["stormy"]
            return counts

    first = outcomes()
    assert sum(first.values()) > 0
    assert outcomes() == first


def test_models_endpoints(sim: EmbeddedSimulator) -> None:
    listed = call(sim, lambda client: client.models.list())
    ids = {model.id for model in listed.data}
    assert "rpm3" in ids and "retired" not in ids
    assert call(sim, lambda client: client.models.retrieve("gpt-any")).id == "gpt-any"
    with pytest.raises(openai.NotFoundError):
        call(sim, lambda client: client.models.retrieve("retired"))


def test_malformed_request_bodies_answer_400(sim: EmbeddedSimulator) -> None:
    async def post(data: bytes) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                sim.base_url + "/chat/completions",
                data=data,
                headers={"Content-Type": "application/json"},
            ) as response:
                return response.status, await response.json()

    for data in (b'{"model": "gpt-any", "messages": [', b'{"model": "gpt-any"}', b"[]"):
        status, body = asyncio.run(post(data))
        assert status == 400
        assert body["error"]["type"] == "invalid_request_error"


def test_local_simulator_runs_inside_a_running_loop() -> None:
    async def main() -> int:
        async with LocalSimulator(SimConfig()) as local:
            async with openai.AsyncOpenAI(
                base_url=local.base_url, api_key="k", max_retries=0
            ) as client:
                await client.chat.completions.create(model="m", messages=MESSAGES)
            total: int = local.stats()["total"]
            return total

    assert asyncio.run(main()) == 1


def test_shutdown_wakes_hanging_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown ends a hang at once: with an hour's grace and an hour's hang, only the wake-up
    lets this test finish within its pytest-timeout (no wall-clock assertion)."""
    monkeypatch.setattr(sim_hosting, "SHUTDOWN_TIMEOUT_S", 3600.0)
    config = SimConfig(default=SimModelConfig(faults=FaultRates(hang=1.0, hang_s=3600)))
    with EmbeddedSimulator(config) as hanging:
        with pytest.raises(openai.APITimeoutError):
            call(hanging, complete("m"), timeout=0.2)
        assert hanging.stats()["requests"]["m"] == {"hang": 1}


def test_a_busy_port_fails_startup_with_the_os_error(sim: EmbeddedSimulator) -> None:
    with pytest.raises(OSError), EmbeddedSimulator(SimConfig(), port=sim.port):
        pass


def test_simulator_process_serves_from_its_own_process() -> None:
    config = SimConfig(models={"gone": SimModelConfig(not_found=True)})
    with SimulatorProcess(config) as child:
        assert child.pid != os.getpid()
        assert call(child, raw("m")).http_response.status_code == 200
        with pytest.raises(openai.NotFoundError):
            call(child, complete("gone"))
        assert child.stats()["requests"] == {"m": {"200": 1}, "gone": {"404": 1}}
        child.reset()
        assert child.stats()["total"] == 0


def test_reasoning_model_refuses_temperature_0_with_openais_body(sim: EmbeddedSimulator) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        call(sim, complete("gpt-5-mini", max_tokens=None, temperature=0))
    assert body_of(caught.value) == {
        "message": "Unsupported value: 'temperature' does not support 0 with this model. "
        "Only the default (1) value is supported.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "unsupported_value",
    }
    ok = call(sim, complete("gpt-5-mini", max_tokens=None, temperature=1))
    assert ok.choices[0].finish_reason == "stop"


def test_reasoning_model_refuses_max_tokens_and_takes_max_completion_tokens(
    sim: EmbeddedSimulator,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        call(sim, complete("o3-mini", max_tokens=64))
    error = body_of(caught.value)
    assert (error["param"], error["code"]) == ("max_tokens", "unsupported_parameter")
    assert "Use 'max_completion_tokens' instead." in error["message"]
    ok = call(sim, complete("o3-mini", max_tokens=None, max_completion_tokens=4))
    assert ok.usage is not None and ok.usage.completion_tokens <= 4
    assert call(sim, complete("gpt-4o", temperature=0)).choices  # other models take it


def test_a_models_section_inherits_from_default() -> None:
    config = SimConfig(
        default=SimModelConfig(latency_ms=40, rpm=600, faults=FaultRates(server_error=0.1)),
        models={"m": SimModelConfig(faults=FaultRates(rate_limit=0.2)), "n": SimModelConfig(rpm=5)},
    )
    m = config.for_model("m")
    assert (m.latency_ms, m.rpm) == (40, 600)
    assert (m.faults.server_error, m.faults.rate_limit) == (0.1, 0.2)
    n = config.for_model("n")
    assert (n.latency_ms, n.rpm, n.faults.server_error) == (40, 5, 0.1)
    assert config.for_model("other") == config.default


def test_standalone_models_endpoint_lists_the_jobs_models(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: j\ninput: {path: x.jsonl}\ntiers: {standard: a}\n"
        "models: {a: {api_model: wire-a}, b: {}, gone: {}}\n"
        "simulator: {models: {gone: {not_found: true}}}\n"
    )
    with EmbeddedSimulator(load_sim_config(job)) as standalone:
        listed = call(standalone, lambda client: client.models.list())
    assert {model.id for model in listed.data} == {"wire-a", "b"}


def test_n_returns_that_many_choices(sim: EmbeddedSimulator) -> None:
    response = call(sim, complete("gpt-any", n=2))
    assert [choice.index for choice in response.choices] == [0, 1]
    assert response.choices[0].message.content != response.choices[1].message.content
    single = call(sim, complete("gpt-any"))
    assert single.choices[0].message.content == response.choices[0].message.content
    assert response.usage is not None and single.usage is not None
    assert response.usage.completion_tokens > single.usage.completion_tokens


def test_an_unknown_route_answers_the_apis_json_404(sim: EmbeddedSimulator) -> None:
    async def get() -> tuple[int, str, dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            async with session.post(sim.base_url + "/nothing/here", json={}) as response:
                return response.status, response.content_type, await response.json()

    status, content_type, body = asyncio.run(get())
    assert (status, content_type) == (404, "application/json")
    assert body == {
        "error": {
            "message": "Invalid URL (POST /v1/nothing/here)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def _get(sim: EmbeddedSimulator, path: str, *, method: str = "GET") -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    url = sim.base_url.removesuffix("/v1") + path
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_request_log_says_which_model_was_asked_what() -> None:
    with EmbeddedSimulator(SimConfig(log_requests=True)) as logged:
        call(logged, complete("small"))
        call(logged, complete("big", messages=[{"role": "user", "content": "second"}]))
        status, body = _get(logged, "/sim/requests")
        assert status == 200
        assert body["requests"] == [
            {"model": "small", "prompt": MESSAGES[-1]["content"]},
            {"model": "big", "prompt": "second"},
        ]
        _get(logged, "/sim/reset", method="POST")
        assert _get(logged, "/sim/requests")[1] == {"requests": []}
    with EmbeddedSimulator(SimConfig()) as unlogged:
        status, body = _get(unlogged, "/sim/requests")
        assert status == 400 and "log_requests: true" in body["error"]["message"]
