"""Tests for batchroute.dispatch: the taxonomy, fallback, abort, cooldown, budget, fault storm.

Every test goes through the real AsyncOpenAI client over a loopback socket: to the embedded
simulator, or to a tiny scripted aiohttp server for the answers the simulator does not give.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from batchroute.config import Job, parse_job
from batchroute.dispatch.dispatcher import Dispatcher, RowOutcome, RowRequest
from batchroute.errors import RunAbortedError
from batchroute.pricing.budget import Budget
from batchroute.pricing.costs import usage_cost
from batchroute.pricing.prices import resolve_prices
from batchroute.pricing.tokens import count_message_tokens, message_token_bound
from batchroute.schema import ErrorType, Status
from batchroute.sim import FaultRates, LocalSimulator, SimConfig, SimModelConfig

SECRET = "sk-test-SECRET0123456789abcdef"
KEY_ENV = "BR_DISPATCH_TEST_KEY"

Spec = tuple[int, Any, Mapping[str, str]] | str
"""(status, JSON body or raw bytes, headers), or "drop" to close the connection unanswered."""
Script = Callable[[int], Spec]
"""Given the model's 1-based request number, what to answer."""


def _answer(
    content: str | None = '{"answer": "fine"}', finish_reason: str = "stop"
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x",
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
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _err(status: int, code: str | None = None, message: str = "no") -> Spec:
    return (status, {"error": {"message": message, "type": "x", "param": None, "code": code}}, {})


OK: Spec = (200, _answer(), {})
RATE_LIMITED: Spec = (
    429,
    {"error": {"message": "slow", "code": "rate_limit_exceeded"}},
    {"retry-after-ms": "30"},
)


def always(spec: Spec) -> Script:
    return lambda n: spec


def first(spec: Spec, times: int = 1, then: Spec = OK) -> Script:
    return lambda n: spec if n <= times else then


class ScriptedServer:
    """An OpenAI-shaped server answering each model from a script, counting what it saw."""

    def __init__(self, scripts: Mapping[str, Script]) -> None:
        self.scripts = dict(scripts)
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[float, str, int | str]] = []
        self.keys: set[str] = set()
        self.bodies: list[dict[str, Any]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        model = body["model"]
        self.bodies.append(body)
        self.keys.add(request.headers.get("Authorization", ""))
        self.counts[model] += 1
        spec = self.scripts.get(model, always(OK))(self.counts[model])
        if spec == "drop":
            self.log.append((time.monotonic(), model, "drop"))
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=204)
        assert not isinstance(spec, str)
        status, payload, headers = spec
        self.log.append((time.monotonic(), model, status))
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return web.Response(
            body=raw, status=status, headers=headers, content_type="application/json"
        )

    async def __aenter__(self) -> ScriptedServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{site.port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def make_job(
    *,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    tiers: Mapping[str, Any] | None = None,
    retry: Mapping[str, Any] | None = None,
    budget: Mapping[str, Any] | None = None,
    endpoint: Mapping[str, Any] | None = None,
    request: Mapping[str, Any] | None = None,
) -> Job:
    priced = {"input_per_mtok": 1, "output_per_mtok": 2}
    data = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "endpoint": {"api_key_env": KEY_ENV, "timeout_s": 2, **(endpoint or {})},
        "request": {"max_tokens": 64, **(request or {})},
        "tiers": tiers
        or {
            "standard": "a",
            "structured": {
                "model": "a",
                "request": {"params": {"response_format": {"type": "json_object"}}},
            },
        },
        "models": {
            name: {**priced, **cfg}
            for name, cfg in (models or {"a": {"fallback": "b"}, "b": {}}).items()
        },
        "retry": {"backoff_initial_s": 0.001, "backoff_max_s": 0.01, **(retry or {})},
        "budget": budget or {},
    }
    config = parse_job(data, path=Path("t.yaml"))
    return Job(config, path=Path("t.yaml"), text_sha256="0" * 64)


def row(i: int, *, tier: str = "standard", text: str | None = None) -> RowRequest:
    messages = [{"role": "user", "content": text or f"question {i}"}]
    return RowRequest(str(i), i, f"k{i}", tier, messages, count_message_tokens(messages))


async def run_rows(
    job: Job, base_url: str, rows: list[RowRequest], *, budget: Budget | None = None
) -> tuple[list[RowOutcome], Dispatcher]:
    outcomes: list[RowOutcome | None] = [None] * len(rows)
    dispatcher = Dispatcher(
        job, prices=resolve_prices(job), budget=budget, base_urls={"simulator": base_url}
    )
    async with dispatcher:

        async def one(index: int) -> None:
            outcomes[index] = await dispatcher.dispatch(rows[index])

        async with anyio.create_task_group() as group:
            for index in range(len(rows)):
                group.start_soon(one, index)
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None], dispatcher


def scripted(
    scripts: Mapping[str, Script], job: Job, rows: list[RowRequest], **kw: Any
) -> tuple[list[RowOutcome], Dispatcher, ScriptedServer]:
    async def main() -> tuple[list[RowOutcome], Dispatcher, ScriptedServer]:
        async with ScriptedServer(scripts) as server:
            outcomes, dispatcher = await run_rows(job, server.base_url, rows, **kw)
            return outcomes, dispatcher, server

    return anyio.run(main)


def actions(outcome: RowOutcome) -> list[tuple[str, str]]:
    return [(r.model, r.action) for r in outcome.attempt_records]


TAXONOMY = [
    # name, script for a, tier, status, error type, model used, [(model, action)...]
    ("ok", always(OK), "standard", Status.OK, None, "a", [("a", "ok")]),
    (
        "429 retries",
        first(RATE_LIMITED),
        "standard",
        Status.OK,
        None,
        "a",
        [("a", "retry"), ("a", "ok")],
    ),
    (
        "408 retries",
        first(_err(408)),
        "standard",
        Status.OK,
        None,
        "a",
        [("a", "retry"), ("a", "ok")],
    ),
    (
        "409 retries",
        first(_err(409)),
        "standard",
        Status.OK,
        None,
        "a",
        [("a", "retry"), ("a", "ok")],
    ),
    (
        "500 retries",
        first(_err(500)),
        "standard",
        Status.OK,
        None,
        "a",
        [("a", "retry"), ("a", "ok")],
    ),
    (
        "503 retries",
        first(_err(503)),
        "standard",
        Status.OK,
        None,
        "a",
        [("a", "retry"), ("a", "ok")],
    ),
    (
        "dropped connection retries",
        first("drop"),
        "standard",
        Status.OK,
        None,
        "a",
        [("a", "retry"), ("a", "ok")],
    ),
    (
        "malformed 2xx retries",
        first((200, b'{"choices": [', {})),
        "standard",
        Status.OK,
        None,
        "a",
        [("a", "retry"), ("a", "ok")],
    ),
    (
        "retries run out, then fall back",
        always(_err(500)),
        "standard",
        Status.OK,
        None,
        "b",
        [("a", "retry"), ("a", "retry"), ("a", "fallback"), ("b", "ok")],
    ),
    (
        "404 falls back at once",
        always(_err(404, "model_not_found")),
        "standard",
        Status.OK,
        None,
        "b",
        [("a", "fallback"), ("b", "ok")],
    ),
    (
        "context length falls back",
        always(_err(400, "context_length_exceeded")),
        "standard",
        Status.OK,
        None,
        "b",
        [("a", "fallback"), ("b", "ok")],
    ),
    (
        "content filter falls back",
        always((200, _answer(None, "content_filter"), {})),
        "standard",
        Status.OK,
        None,
        "b",
        [("a", "fallback"), ("b", "ok")],
    ),
    (
        "invalid JSON falls back",
        always((200, _answer("not { json"), {})),
        "structured",
        Status.OK,
        None,
        "b",
        [("a", "fallback"), ("b", "ok")],
    ),
    (
        "other 4xx fails the row",
        always(_err(400, "invalid_value")),
        "standard",
        Status.FAILED,
        ErrorType.BAD_REQUEST,
        None,
        [("a", "fail")],
    ),
    (
        "422 fails the row",
        always(_err(422)),
        "standard",
        Status.FAILED,
        ErrorType.BAD_REQUEST,
        None,
        [("a", "fail")],
    ),
    (
        "401 aborts",
        always(_err(401, "invalid_api_key")),
        "standard",
        Status.FAILED,
        ErrorType.AUTH,
        None,
        [("a", "abort")],
    ),
    (
        "403 aborts",
        always(_err(403)),
        "standard",
        Status.FAILED,
        ErrorType.AUTH,
        None,
        [("a", "abort")],
    ),
]


@pytest.mark.parametrize(
    ("name", "script", "tier", "status", "error_type", "model_used", "expected"),
    TAXONOMY,
    ids=[case[0] for case in TAXONOMY],
)
def test_taxonomy(
    name: str,
    script: Script,
    tier: str,
    status: str,
    error_type: str | None,
    model_used: str | None,
    expected: list[tuple[str, str]],
) -> None:
    job = make_job(retry={"max_retries_per_model": 2})
    [outcome], dispatcher, server = scripted({"a": script}, job, [row(1, tier=tier)])
    assert (outcome.status, outcome.error_type, outcome.model_used) == (
        status,
        error_type,
        model_used,
    )
    assert actions(outcome) == expected
    assert outcome.attempts == len(expected) == sum(server.counts.values())
    assert [r.attempt for r in outcome.attempt_records] == list(range(1, len(expected) + 1))
    assert outcome.fallback_depth == (1 if expected[-1][0] == "b" else 0)
    if status != Status.OK:
        assert outcome.error_message
    if error_type == ErrorType.AUTH:
        assert isinstance(dispatcher.abort, RunAbortedError)
        assert KEY_ENV in str(dispatcher.abort)


def test_failed_attempt_tokens_are_counted() -> None:
    job = make_job()
    script = always((200, _answer(None, "content_filter"), {}))
    [outcome], _, _ = scripted({"a": script}, job, [row(1)])
    assert outcome.failed_input_tokens == 10 and outcome.failed_output_tokens == 5
    assert (outcome.input_tokens, outcome.output_tokens) == (10, 5)
    record = outcome.attempt_records[0]
    assert (record.error_type, record.input_tokens, record.status_code) == (
        ErrorType.CONTENT_FILTER,
        10,
        200,
    )


def test_retries_exhausted_on_every_model_fail_with_reason() -> None:
    job = make_job(retry={"max_retries_per_model": 1})
    [outcome], _, server = scripted({"a": always(_err(500)), "b": always(_err(503))}, job, [row(1)])
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.SERVER_ERROR
    assert outcome.error_message and "503" in outcome.error_message
    assert outcome.attempts == 4 == sum(server.counts.values())
    assert outcome.attempt_records[-1].action == "fail"


def test_attempt_budget_caps_the_whole_chain() -> None:
    job = make_job(retry={"max_retries_per_model": 5, "max_attempts_per_row": 3})
    [outcome], _, server = scripted({"a": always(_err(500))}, job, [row(1)])
    assert outcome.attempts == 3 == server.counts["a"]
    assert outcome.error_type == ErrorType.ATTEMPTS_EXHAUSTED
    assert outcome.attempt_records[-1].action == "fail"


def test_cycle_in_fallbacks_never_revisits_a_model() -> None:
    job = make_job(
        models={"a": {"fallback": "b"}, "b": {"fallback": "a"}}, retry={"max_retries_per_model": 0}
    )
    [outcome], _, server = scripted({"a": always(_err(500)), "b": always(_err(500))}, job, [row(1)])
    assert [r.model for r in outcome.attempt_records] == ["a", "b"]
    assert server.counts == Counter({"a": 1, "b": 1})


def test_model_not_found_is_skipped_by_later_rows() -> None:
    job = make_job()
    outcomes, dispatcher, server = scripted(
        {"a": always(_err(404, "model_not_found"))}, job, [row(i) for i in range(40)]
    )
    assert all(o.status == Status.OK and o.model_used == "b" for o in outcomes)
    assert server.counts["a"] < 40, "rows after the 404 skip the retired model"
    assert dispatcher.models["a"].unavailable
    assert dispatcher.abort is None


def test_every_model_unavailable_aborts_the_run() -> None:
    job = make_job()
    not_found = always(_err(404, "model_not_found"))
    outcomes, dispatcher, server = scripted(
        {"a": not_found, "b": not_found}, job, [row(i) for i in range(30)]
    )
    assert isinstance(dispatcher.abort, RunAbortedError)
    assert "unavailable" in str(dispatcher.abort)
    assert server.counts == Counter({"a": 1, "b": 1}), "one request per retired model"
    assert {o.status for o in outcomes} <= {Status.FAILED, Status.SKIPPED_ABORTED}
    assert Counter(o.status for o in outcomes)[Status.SKIPPED_ABORTED] >= 25


def test_context_length_falls_back_only_to_a_model_that_fits() -> None:
    """The simulator rejects the long prompt on a; b's window is too small, so c answers."""
    job = make_job(
        models={"a": {"fallback": "b"}, "b": {"fallback": "c", "context_window": 100}, "c": {}}
    )
    sim = SimConfig(models={"a": SimModelConfig(context_window=120)})
    long_row = row(1, text="word " * 200)  # ~250 prompt tokens + 64 max_tokens

    async def main() -> tuple[list[RowOutcome], dict[str, Any]]:
        async with LocalSimulator(sim) as server:
            outcomes, _ = await run_rows(job, server.base_url, [long_row])
            return outcomes, server.stats()

    [outcome], stats = anyio.run(main)
    assert outcome.status == Status.OK and outcome.model_used == "c"
    assert actions(outcome) == [("a", "fallback"), ("c", "ok")]
    assert outcome.fallback_depth == 2
    assert "b" not in stats["requests"]


def test_invalid_key_aborts_after_a_handful_of_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    job = make_job(models={"a": {"fallback": "b", "max_concurrency": 64}, "b": {}})
    sim = SimConfig(require_api_key="the-right-key")

    async def main() -> tuple[list[RowOutcome], Dispatcher, dict[str, Any]]:
        async with LocalSimulator(sim) as server:
            outcomes, dispatcher = await run_rows(
                job, server.base_url, [row(i) for i in range(500)]
            )
            return outcomes, dispatcher, server.stats()

    outcomes, dispatcher, stats = anyio.run(main)
    assert isinstance(dispatcher.abort, RunAbortedError)
    assert stats["total"] <= 5
    statuses = Counter(o.status for o in outcomes)
    assert statuses[Status.SKIPPED_ABORTED] >= 495
    assert statuses[Status.FAILED] == stats["total"]
    assert all(o.error_type in (ErrorType.AUTH, ErrorType.ABORTED) for o in outcomes)


def test_no_key_in_any_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server echoes the key in its 401 body; no outcome, record or abort carries it."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    job = make_job()
    echo = always(_err(401, "invalid_api_key", f"Incorrect API key provided: {SECRET}."))
    outcomes, dispatcher, server = scripted({"a": echo}, job, [row(i) for i in range(5)])
    assert server.keys == {f"Bearer {SECRET}"}, "the key did reach the server"
    texts = [repr(o) for o in outcomes] + [str(dispatcher.abort), repr(dispatcher)]
    for text in texts:
        assert SECRET not in text and SECRET[8:20] not in text


def test_missing_key_for_real_endpoint_names_the_variable() -> None:
    job = make_job(
        endpoint={"base_url": "https://api.example.com/v1", "api_key_env": "BR_SURELY_UNSET_KEY"}
    )

    async def main() -> None:
        async with Dispatcher(job, prices=resolve_prices(job)):
            pass

    with pytest.raises(RunAbortedError, match="BR_SURELY_UNSET_KEY"):
        anyio.run(main)


def test_cooldown_is_shared_by_simultaneous_429s() -> None:
    """Twenty rows draw 429s together: one pause, and nothing is sent until it ends."""
    job = make_job(
        models={"a": {"max_concurrency": 50}, "b": {}}, retry={"max_retries_per_model": 4}
    )
    t0: list[float] = []
    pause_s = 0.3

    def script(n: int) -> Spec:
        if n == 1:
            return OK  # the warm-up row opens the model's first-request probe
        if not t0:
            t0.append(time.monotonic())
        if time.monotonic() - t0[0] < 0.05:
            return (
                429,
                {"error": {"code": "rate_limit_exceeded"}},
                {"retry-after-ms": str(int(pause_s * 1000))},
            )
        return OK

    async def main() -> tuple[list[RowOutcome], Dispatcher, ScriptedServer]:
        async with ScriptedServer({"a": script}) as server:
            dispatcher = Dispatcher(
                job, prices=resolve_prices(job), base_urls={"simulator": server.base_url}
            )
            outcomes: list[RowOutcome] = []
            async with dispatcher:
                assert (await dispatcher.dispatch(row(0))).status == Status.OK

                async def one(i: int) -> None:
                    outcomes.append(await dispatcher.dispatch(row(i)))

                async with anyio.create_task_group() as group:
                    for i in range(1, 21):
                        group.start_soon(one, i)
            return outcomes, dispatcher, server

    outcomes, dispatcher, server = anyio.run(main)
    assert all(o.status == Status.OK for o in outcomes)
    limited = [t for t, _, status in server.log if status == 429]
    later = [t for t, _, status in server.log[1:] if status == 200]
    assert len(limited) >= 10, "the rows really drew their 429s together"
    limiter = dispatcher.limiters["a"]
    assert limiter.pauses == 1
    # Nothing reached the server before the pause the limiter scheduled had ended (an ordering
    # of two readings of the same monotonic clock, not a measured duration).
    assert min(later) >= limiter.cooldown_until


def test_rows_wait_when_every_model_is_cooling() -> None:
    """Both models of the chain answer 429 for a while: rows wait and succeed, none fail."""
    job = make_job(retry={"max_retries_per_model": 2, "max_attempts_per_row": 8})
    start: dict[str, float] = {}

    def cooling(model: str) -> Script:
        def script(n: int) -> Spec:
            start.setdefault(model, time.monotonic())
            if time.monotonic() - start[model] < 0.4:
                return (429, {"error": {"code": "rate_limit_exceeded"}}, {"retry-after-ms": "200"})
            return OK

        return script

    outcomes, dispatcher, _ = scripted(
        {"a": cooling("a"), "b": cooling("b")}, job, [row(i) for i in range(10)]
    )
    assert [o.status for o in outcomes] == [Status.OK] * 10
    assert all(o.attempts <= 8 for o in outcomes)


def test_budget_cap_skips_rows_and_bounds_spend() -> None:
    job = make_job(models={"a": {"max_concurrency": 4}, "b": {}})
    one_row = resolve_prices(job).get("a")
    assert one_row is not None
    # Expected cost per row: ~7 prompt tokens at $1/M plus 64 max_tokens at $2/M.
    cap = Decimal("0.0004")
    budget = Budget(cap)

    async def main() -> tuple[list[RowOutcome], Dispatcher]:
        async with LocalSimulator(SimConfig(default=SimModelConfig(latency_ms=5))) as server:
            return await run_rows(job, server.base_url, [row(i) for i in range(20)], budget=budget)

    outcomes, _ = anyio.run(main)
    statuses = Counter(o.status for o in outcomes)
    assert budget.exhausted
    assert statuses[Status.SKIPPED_BUDGET] > 0 and statuses[Status.OK] > 0
    assert budget.spent_usd <= float(cap)
    assert all(
        o.error_type == ErrorType.BUDGET for o in outcomes if o.status == Status.SKIPPED_BUDGET
    )
    assert all(o.attempts == 0 for o in outcomes if o.status == Status.SKIPPED_BUDGET)


@pytest.mark.parametrize(
    ("price", "sim"),
    [
        pytest.param(
            {"reasoning_per_mtok": 60},
            {"completion_tokens": "max_tokens", "reasoning_fraction": 0.9},
            id="reasoning",
        ),
        pytest.param(
            {"cached_input_per_mtok": 40},
            {"completion_tokens": "max_tokens", "cached_fraction": 1.0},
            id="cached",
        ),
        pytest.param({"output_per_mtok": 50}, {"completion_tokens": "max_tokens"}, id="output"),
    ],
)
def test_budget_cap_holds_at_every_price_component(
    price: dict[str, Any], sim: dict[str, Any]
) -> None:
    """Spend, priced exactly from reported usage, never passes the cap, whatever is dear."""
    # The forecast expects short answers; the simulator answers at the full output limit.
    job = make_job(
        models={"a": {"max_concurrency": 8, **price}, "b": {}},
        request={"expected_output_tokens": 4},
    )
    model_price = resolve_prices(job).get("a")
    assert model_price is not None
    cap = Decimal("0.02")
    budget = Budget(cap)

    async def main() -> tuple[list[RowOutcome], Dispatcher]:
        config = SimConfig(default=SimModelConfig(latency_ms=5, **sim))
        async with LocalSimulator(config) as server:
            return await run_rows(job, server.base_url, [row(i) for i in range(60)], budget=budget)

    outcomes, _ = anyio.run(main)
    spent = sum(
        (
            usage_cost(
                model_price,
                input_tokens=r.input_tokens or 0,
                output_tokens=r.output_tokens or 0,
                cached_tokens=r.cached_tokens or 0,
                reasoning_tokens=r.reasoning_tokens or 0,
            )
            for o in outcomes
            for r in o.attempt_records
        ),
        Decimal(0),
    )
    assert budget.exhausted
    assert Counter(o.status for o in outcomes)[Status.OK] > 0
    assert spent <= cap


def test_budget_cap_holds_when_the_provider_counts_more_prompt_tokens_than_estimated() -> None:
    """The reservation uses the prompt's byte bound: a tokenizer that counts every byte of a
    non-ASCII prompt (far above the characters / 4 estimate) still cannot pass the cap."""
    text = "東京の天気を要約してください。" * 20
    messages = [{"role": "user", "content": text}]
    bound = message_token_bound(messages)
    answer = _answer()
    answer["usage"] = {"prompt_tokens": bound, "completion_tokens": 64, "total_tokens": bound + 64}
    job = make_job(models={"a": {"max_concurrency": 8}, "b": {}})
    price = resolve_prices(job).get("a")
    assert price is not None
    cap = Decimal("0.01")
    budget = Budget(cap)
    rows = [
        RowRequest(str(i), i, f"k{i}", "standard", messages, count_message_tokens(messages), bound)
        for i in range(40)
    ]
    outcomes, _, _ = scripted({"a": always((200, answer, {}))}, job, rows, budget=budget)
    spent = sum(
        (
            usage_cost(price, input_tokens=r.input_tokens or 0, output_tokens=r.output_tokens or 0)
            for o in outcomes
            for r in o.attempt_records
        ),
        Decimal(0),
    )
    assert budget.exhausted and any(o.status == Status.OK for o in outcomes)
    assert spent <= cap


def assert_attempts_match_server(outcomes: list[RowOutcome], stats: dict[str, Any]) -> None:
    """Every request the server counted is an attempt the client recorded, and back.

    The one gap allowed: an attempt that timed out or lost its connection before the server
    read it (under load, a 0.5 s timeout can pass before the request is accepted or read). The
    client records it, since it is an attempt it made and cannot know was never seen; the
    server never counted it. So, per model: the server's count of each status is at least the
    client's (every reply the client saw, the server sent), the client's total is at least the
    server's, and any excess is no larger than the client's attempts without a reply.
    """
    records = [r for o in outcomes for r in o.attempt_records]
    for model in {r.model for r in records} | set(stats["requests"]):
        mine = [r for r in records if r.model == model]
        served = stats["requests"].get(model, {})
        unseen = len(mine) - sum(served.values())
        no_reply = sum(r.status_code is None for r in mine)
        assert 0 <= unseen <= no_reply, (model, len(mine), served, no_reply)
        for status, count in Counter(r.status_code for r in mine if r.status_code).items():
            assert count <= served.get(str(status), 0), (model, status, count, served)


def test_fault_storm() -> None:
    """1,000 rows, ~15% mixed faults on one model, another model down: nothing is lost."""
    job = make_job(
        models={
            "a": {"fallback": "gone"},
            "gone": {"fallback": "c"},
            "c": {},
            "bulk": {"fallback": "gone"},
        },
        tiers={"standard": "a", "bulk": "bulk"},
        retry={"max_retries_per_model": 2, "max_attempts_per_row": 5},
        endpoint={"timeout_s": 0.5},
    )
    faults = FaultRates(
        rate_limit=0.02,
        server_error=0.03,
        unavailable=0.03,
        disconnect=0.02,
        malformed=0.025,
        content_filter=0.015,
        hang=0.005,
        hang_s=2.0,
        retry_after_s=0.05,
    )
    sim = SimConfig(
        seed=7,
        models={
            "a": SimModelConfig(faults=faults),
            "gone": SimModelConfig(not_found=True),
            "bulk": SimModelConfig(faults=faults),
        },
    )
    rows = [row(i, tier="bulk" if i % 5 == 0 else "standard") for i in range(1000)]

    async def main() -> tuple[list[RowOutcome], Dispatcher, dict[str, Any]]:
        async with LocalSimulator(sim) as server:
            outcomes, dispatcher = await run_rows(job, server.base_url, rows)
            return outcomes, dispatcher, server.stats()

    outcomes, dispatcher, stats = anyio.run(main)
    assert len(outcomes) == 1000
    assert all(
        o.started_at is not None and o.finished_at is not None and o.finished_at >= o.started_at
        for o in outcomes
    )
    assert dispatcher.abort is None
    recorded = sum(o.attempts for o in outcomes)
    assert recorded == sum(len(o.attempt_records) for o in outcomes)
    assert_attempts_match_server(outcomes, stats)
    assert stats["requests"]["gone"] == {"404": 1}, "a retired model is called once per run"
    assert all(o.attempts <= 5 for o in outcomes)
    failed = [o for o in outcomes if o.status != Status.OK]
    assert all(o.error_type and o.error_message for o in failed)
    assert Counter(o.status for o in outcomes)[Status.OK] >= 950
    assert {o.model_used for o in outcomes if o.status == Status.OK} <= {"a", "c", "bulk"}


def test_an_answer_is_priced_once_for_budget_spend_and_progress() -> None:
    """The float cost the budget settles is the one the fleet's spend and the progress add."""
    job = make_job(models={"a": {"input_per_mtok": 3, "output_per_mtok": 15}})
    price = resolve_prices(job).get("a")
    assert price is not None
    budget = Budget(None)

    async def main() -> tuple[list[RowOutcome], Dispatcher]:
        async with LocalSimulator(SimConfig()) as server:
            return await run_rows(job, server.base_url, [row(i) for i in range(12)], budget=budget)

    outcomes, dispatcher = anyio.run(main)
    assert all(o.status == Status.OK for o in outcomes)
    for o in outcomes:
        exact = usage_cost(
            price,
            input_tokens=o.input_tokens,
            output_tokens=o.output_tokens,
            cached_tokens=o.cached_tokens,
            reasoning_tokens=o.reasoning_tokens,
        )
        assert o.cost_estimate_usd == pytest.approx(float(exact), rel=1e-9)
    estimates = sum(o.cost_estimate_usd or 0.0 for o in outcomes)
    assert dispatcher.fleet.spent_usd == pytest.approx(estimates, rel=1e-12)
    assert budget.spent_usd == pytest.approx(estimates, rel=1e-12)
