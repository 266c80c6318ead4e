"""The simulator's HTTP server: OpenAI's chat-completions and models endpoints on aiohttp.web.

A request goes through the checks a provider makes, in the order a provider makes them: the key
(401), the body (400), the model (404), a parameter the model refuses (400, with OpenAI's own
words, from the shipped table in `batchroute.dispatch.params`), the context window (400), an
injected fault drawn from the server's seeded generator, the rpm/tpm windows (429), the
model's latency, and then the answer, or the fault. Per-model settings are resolved once per
model name, so the request path touches no pydantic; answers come from `answers`, bodies from
`wire`, counts go to `stats`.

Besides the API, `GET /sim/stats` returns the counts and `POST /sim/reset` zeroes them. How the
app is hosted (in this loop, in a background thread, in its own process) is `hosting`'s concern.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from batchroute.dispatch.params import rejection
from batchroute.pricing.tokens import CHARS_PER_TOKEN, count_message_tokens, count_text_tokens
from batchroute.sim import wire
from batchroute.sim.answers import answer_for, prompt_digest
from batchroute.sim.config import SimConfig, SimModelConfig
from batchroute.sim.faults import FaultPicker
from batchroute.sim.limits import ModelLimiter
from batchroute.sim.quality import QualityDraws
from batchroute.sim.stats import SimStats

__all__ = ["MAX_BODY_BYTES", "SIM_STATE", "SimState", "create_app"]

MAX_BODY_BYTES = 64 * 1024 * 1024
"""The largest request body accepted; long-context prompts are legitimately large."""

_NO_MODEL = "(none)"
_JSON = "application/json"


class _ModelRuntime:
    """One model's settings, resolved once, plus its live rate-limit windows."""

    __slots__ = (
        "cached_fraction",
        "completion_tokens",
        "context_window",
        "faults",
        "fingerprint",
        "hang_s",
        "jitter_s",
        "latency_s",
        "limiter",
        "name",
        "not_found",
        "quality",
        "reasoning_fraction",
        "retry_after_s",
    )

    def __init__(self, name: str, settings: SimModelConfig, *, seed: int = 0) -> None:
        self.name = name
        self.quality = QualityDraws(settings, seed=seed)
        self.latency_s = settings.latency_ms / 1000
        self.jitter_s = settings.latency_jitter_ms / 1000
        self.limiter = (
            ModelLimiter(
                rpm=settings.rpm,
                tpm=settings.tpm,
                window_s=settings.limit_window_s,
                per_second=settings.per_second,
            )
            if settings.rpm is not None or settings.tpm is not None
            else None
        )
        self.faults = FaultPicker(settings.faults)
        self.hang_s = settings.faults.hang_s
        self.retry_after_s = settings.faults.retry_after_s
        self.not_found = settings.not_found
        self.context_window = settings.context_window
        self.completion_tokens = settings.completion_tokens
        self.cached_fraction = settings.cached_fraction
        self.reasoning_fraction = settings.reasoning_fraction
        self.fingerprint = "fp_" + prompt_digest(name, ())[:5].hex()

    def __repr__(self) -> str:
        return f"<_ModelRuntime {self.name!r} [limiter: {self.limiter!r}, faults: {self.faults!r}]>"


class SimState:
    """Everything one running simulator holds: settings per model, generators, counts."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.fault_rng = random.Random(config.seed)
        self.jitter_rng = random.Random(config.seed + 1)
        self.api_key = config.require_api_key
        self.closing = asyncio.Event()
        """Set at shutdown, so hanging requests stop hanging."""
        self.serial = 0
        self.started = time.monotonic()
        """The origin of the fault schedules' clock; `/sim/reset` restarts it."""
        self._models: dict[str, _ModelRuntime] = {}
        self.request_log: list[dict[str, str | None]] | None = [] if config.log_requests else None
        """With `log_requests`: each chat request's model and last user message, in order."""

    def model(self, name: str) -> _ModelRuntime:
        """The runtime for a model name, created on first use (every name is served)."""
        runtime = self._models.get(name)
        if runtime is None:
            runtime = self._models[name] = _ModelRuntime(
                name, self.config.for_model(name), seed=self.config.seed
            )
        return runtime

    def reset(self) -> None:
        """Zero the counts and restart the fault schedules' clock (rate windows carry on)."""
        self.stats.reset()
        self.started = time.monotonic()
        if self.request_log is not None:
            self.request_log.clear()

    def listed_models(self) -> list[str]:
        """The models `GET /v1/models` lists: the configured ones that are not "retired"."""
        return [name for name in self.config.models if not self.config.for_model(name).not_found]

    def __repr__(self) -> str:
        return f"<SimState [models: {len(self._models)}, {self.stats!r}]>"


SIM_STATE = web.AppKey("batchroute_sim_state", SimState)


def _respond(
    body: bytes, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(body=body, status=status, headers=headers, content_type=_JSON)


def _bad_request(
    message: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    return _respond(
        wire.error_body(message, type="invalid_request_error", param=param, code=code),
        status=400,
    )


def _parse_n(body: Mapping[str, Any]) -> int | str:
    value = body.get("n", 1)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        return f"Invalid 'n': expected an integer from 1 to 128, but got {json.dumps(value)}."
    return value


def _auth_failure(state: SimState, request: web.Request) -> web.Response | None:
    expected = state.api_key
    if expected is None:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if (
        scheme.lower() == "bearer"
        and given
        and hmac.compare_digest(given.encode(), expected.encode())
    ):
        return None
    return _respond(wire.invalid_api_key_error(missing=not given), status=401)


def _hang_up(request: web.Request) -> web.Response:
    """Close the connection without a response; the client sees a connection error."""
    transport = request.transport
    if transport is not None:
        transport.close()
    # aiohttp fails to write this to the closed transport and drops it quietly.
    return web.Response(status=204)


def _parse_max_tokens(body: Mapping[str, Any]) -> int | None | str:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "max_tokens must be a positive integer"
    return value


async def _chat_completions(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    stats = state.stats
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    model_name = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model_name, str) or not model_name:
        model_name = None
    stat_key = model_name or _NO_MODEL

    denied = _auth_failure(state, request)
    if denied is not None:
        stats.count(stat_key, "401")
        return denied
    if not isinstance(body, dict):
        stats.count(stat_key, "400")
        return _bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)"
        )
    if model_name is None:
        stats.count(stat_key, "400")
        return _bad_request("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        stats.count(stat_key, "400")
        return _bad_request(
            "'messages' must be a non-empty array of message objects", param="messages"
        )
    if state.request_log is not None:
        state.request_log.append({"model": model_name, "prompt": _last_user_text(messages)})
    max_tokens = _parse_max_tokens(body)
    if isinstance(max_tokens, str):
        stats.count(stat_key, "400")
        return _bad_request(max_tokens, param="max_tokens")
    n = _parse_n(body)
    if isinstance(n, str):
        stats.count(stat_key, "400")
        return _bad_request(n, param="n", code="invalid_value")
    if body.get("stream"):
        stats.count(stat_key, "400")
        return _bad_request("the simulator does not stream; send stream: false", param="stream")

    model = state.model(model_name)
    limiter = model.limiter
    if model.not_found:
        stats.count(stat_key, "404")
        headers = limiter.headers(time.monotonic()) if limiter is not None else None
        return _respond(wire.model_not_found_error(model_name), status=404, headers=headers)

    refused = rejection(model_name, body)
    if refused is not None:
        stats.count(stat_key, "400")
        return _bad_request(refused.message, param=refused.param, code=refused.code)

    prompt_tokens = count_message_tokens(messages)
    reserved = prompt_tokens + (max_tokens or 0) * n
    if model.context_window is not None and reserved > model.context_window:
        stats.count(stat_key, "400")
        headers = limiter.headers(time.monotonic()) if limiter is not None else None
        return _respond(
            wire.context_length_error(
                context_window=model.context_window,
                prompt_tokens=prompt_tokens,
                max_tokens=max_tokens or 0,
            ),
            status=400,
            headers=headers,
        )

    fault = model.faults.draw(state.fault_rng, elapsed_s=time.monotonic() - state.started)
    if fault == "rate_limit":
        stats.count(stat_key, "429", fault=fault)
        return _too_many(
            model, kind="requests", limit=0, used=0, requested=1, wait_s=model.retry_after_s
        )
    if limiter is not None:
        denial = limiter.admit(reserved, time.monotonic())
        if denial is not None:
            stats.count(stat_key, "429")
            stats.count_limited(stat_key)
            return _too_many(
                model,
                kind=denial.kind,
                limit=denial.limit,
                used=denial.used,
                requested=denial.requested,
                wait_s=denial.wait_s,
            )

    if fault == "hang":
        stats.count(stat_key, "hang", fault=fault)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(model.hang_s):
                await state.closing.wait()
        return _hang_up(request)
    if fault == "disconnect":
        stats.count(stat_key, "disconnect", fault=fault)
    elif fault == "server_error":
        stats.count(stat_key, "500", fault=fault)
    elif fault == "unavailable":
        stats.count(stat_key, "503", fault=fault)
    else:
        stats.count(stat_key, "200", fault=fault)

    delay = model.latency_s
    if model.jitter_s:
        delay += state.jitter_rng.uniform(0, model.jitter_s)
    if delay > 0:
        await asyncio.sleep(delay)

    if fault == "disconnect":
        return _hang_up(request)
    headers = limiter.headers(time.monotonic()) if limiter is not None else None
    if fault == "server_error" or fault == "unavailable":
        status = 500 if fault == "server_error" else 503
        return _respond(wire.server_error(status), status=status, headers=headers)

    payload = _completion(state, model, body, messages, prompt_tokens, max_tokens, fault, n)
    if fault == "malformed":
        payload = payload[: len(payload) // 2]
    return _respond(payload, headers=headers)


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str):
            return content
    return None


def _too_many(
    model: _ModelRuntime, *, kind: str, limit: int, used: int, requested: int, wait_s: float
) -> web.Response:
    limiter = model.limiter
    headers = limiter.headers(time.monotonic()) if limiter is not None else {}
    wait_s = max(0.0, wait_s)
    headers["retry-after"] = str(math.ceil(wait_s))
    headers["retry-after-ms"] = str(math.ceil(wait_s * 1000))
    if limit == 0 and limiter is not None:  # an injected 429 reports the configured limit
        limit = (limiter.rpm if kind == "requests" else limiter.tpm) or 0
    body = wire.rate_limit_error(
        model.name, kind=kind, limit=limit, used=used, requested=requested, wait_s=wait_s
    )
    return _respond(body, status=429, headers=headers)


def _completion(
    state: SimState,
    model: _ModelRuntime,
    body: Mapping[str, Any],
    messages: list[dict[str, Any]],
    prompt_tokens: int,
    max_tokens: int | None,
    fault: str | None,
    n: int = 1,
) -> bytes:
    state.serial += 1
    digest = prompt_digest(model.name, messages)
    choices: list[tuple[str | None, str]] = []
    completion_tokens = 0
    for index in range(n):
        # Choice 0 is the answer a request without `n` gets; the others differ, deterministically.
        seed = digest if index == 0 else prompt_digest(f"{model.name}#{index}", messages)
        content, finish_reason, tokens = _choice(model, body, seed, max_tokens, fault)
        choices.append((content, finish_reason))
        completion_tokens += tokens
    return wire.completion_body(
        completion_id=f"chatcmpl-{state.serial:08x}{digest[:10].hex()}",
        created=int(time.time()),
        model=model.name,
        choices=choices,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=math.floor(model.cached_fraction * prompt_tokens),
        reasoning_tokens=math.floor(model.reasoning_fraction * completion_tokens),
        system_fingerprint=model.fingerprint,
    )


def _choice(
    model: _ModelRuntime,
    body: Mapping[str, Any],
    digest: bytes,
    max_tokens: int | None,
    fault: str | None,
) -> tuple[str | None, str, int]:
    """One choice's content, finish reason and completion tokens."""
    if fault == "content_filter":
        return None, "content_filter", 0
    quality = model.quality
    response_format = body.get("response_format")
    if quality.judge:
        content = quality.verdict(body.get("messages") or (), digest=digest)
    else:
        content = answer_for(digest, response_format=response_format)
    finish_reason = "stop"
    if quality.active and not quality.judge:
        wants_json = isinstance(response_format, Mapping) and response_format.get("type") in {
            "json_object",
            "json_schema",
        }
        content, finish_reason = quality.degrade(
            content, finish_reason, digest=digest, wants_json=wants_json
        )
        if finish_reason == "length":
            tokens = count_text_tokens(content) * 2
            return content, finish_reason, max_tokens if max_tokens is not None else tokens
    mode = model.completion_tokens
    if mode is None:
        completion_tokens = count_text_tokens(content)
        if max_tokens is not None and completion_tokens > max_tokens:
            content = content[: max_tokens * CHARS_PER_TOKEN]
            completion_tokens, finish_reason = max_tokens, "length"
    elif mode == "max_tokens":
        completion_tokens = max_tokens if max_tokens is not None else count_text_tokens(content)
    elif max_tokens is not None and mode > max_tokens:
        completion_tokens, finish_reason = max_tokens, "length"
    else:
        completion_tokens = mode
    return content, finish_reason, completion_tokens


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An unknown route or method answers the API's JSON error body, not aiohttp's text."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        message = f"Invalid URL ({request.method} {request.path})"
        body = wire.error_body(message, type="invalid_request_error", param=None, code=None)
        status = 404 if isinstance(exc, web.HTTPNotFound) else 405
        return _respond(body, status=status)


async def _list_models(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    denied = _auth_failure(state, request)
    if denied is not None:
        return denied
    return _respond(wire.model_list_body(state.listed_models(), created=int(time.time())))


async def _get_model(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    denied = _auth_failure(state, request)
    if denied is not None:
        return denied
    name = request.match_info["model"]
    if state.config.for_model(name).not_found:
        return _respond(wire.model_not_found_error(name), status=404)
    body = wire.model_object(name, created=int(time.time()))
    return _respond(json.dumps(body).encode())


async def _stats(request: web.Request) -> web.Response:
    return _respond(json.dumps(request.app[SIM_STATE].stats.snapshot()).encode())


async def _requests(request: web.Request) -> web.Response:
    log = request.app[SIM_STATE].request_log
    if log is None:
        return _bad_request("the simulator keeps no request log; start it with log_requests: true")
    return _respond(json.dumps({"requests": log}).encode())


async def _reset(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    state.reset()
    return _respond(json.dumps(state.stats.snapshot()).encode())


async def _on_shutdown(app: web.Application) -> None:
    app[SIM_STATE].closing.set()


def create_app(config: SimConfig | None = None) -> web.Application:
    """The simulator as an aiohttp application, with its own counts and generators."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors])
    app[SIM_STATE] = SimState(config or SimConfig())
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model:.+}", _get_model)
    app.router.add_get("/sim/stats", _stats)
    app.router.add_get("/sim/requests", _requests)
    from batchroute.sim.batches import add_batch_routes  # it reads SIM_STATE from this module

    add_batch_routes(app)
    app.router.add_post("/sim/reset", _reset)
    app.on_shutdown.append(_on_shutdown)
    return app
