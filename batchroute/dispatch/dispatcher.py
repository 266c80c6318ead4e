"""The per-row chain walker: send a row to its tier's model, retry, fall back, record everything.

`Dispatcher.dispatch` never raises for a row-level problem. It walks the row's model chain
(`JobConfig.chain`) under the taxonomy below, within `retry.max_attempts_per_row` HTTP attempts,
never calling one model twice for one row, and returns a `RowOutcome` with one `AttemptRecord`
per HTTP attempt.

    error                                   action
    408, 409, 429, 5xx, timeout,            retry the same model (exponential backoff, full
    connection error, malformed 2xx body    jitter; a 429 also pauses the model for everyone)
    retries on one model used up            next model in the chain
    404 (model not found)                   next model; the model is skipped for the whole run
    400 context_length_exceeded             next model whose context window fits the request
    finish_reason content_filter            next model
    JSON asked for, answer not JSON         next model
    any other 4xx                           fail the row
    401, 403; every model unavailable       abort the run (`Dispatcher.abort`)
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import anyio
import openai

from batchroute.config import EndpointConfig, Job, JobConfig
from batchroute.dispatch.client import Completion, Reply, make_client, resolve_api_key, send_chat
from batchroute.dispatch.limits import ModelLimiter
from batchroute.errors import RunAbortedError
from batchroute.pricing.budget import Budget
from batchroute.pricing.costs import FloatRates
from batchroute.pricing.prices import PriceTable
from batchroute.schema import ErrorType, Status

__all__ = ["Action", "AttemptRecord", "Dispatcher", "RowOutcome", "RowRequest"]

DEFAULT_MAX_OUTPUT_TOKENS: Final = 1024
"""The output limit the budget assumes when the job sets no max_tokens."""
PROBE_WAIT_S: Final = 5.0
"""How long other rows wait for an endpoint's first answer before sending anyway."""

_RETRYABLE: Final = frozenset(
    {
        ErrorType.RATE_LIMITED,
        ErrorType.TIMEOUT,
        ErrorType.CONFLICT,
        ErrorType.SERVER_ERROR,
        ErrorType.CONNECTION,
        ErrorType.MALFORMED_RESPONSE,
    }
)
_FALL_BACK_AT_ONCE: Final = frozenset(
    {
        ErrorType.MODEL_NOT_FOUND,
        ErrorType.CONTEXT_LENGTH,
        ErrorType.CONTENT_FILTER,
        ErrorType.INVALID_JSON,
    }
)
# Errors after which the endpoint may have done (and billed) the work: the budget keeps them at
# their expected cost rather than assuming they were free.
_MAYBE_BILLED: Final = frozenset({ErrorType.TIMEOUT, ErrorType.MALFORMED_RESPONSE})


class Action:
    """What followed an attempt, as attempts.parquet records it."""

    OK: Final = "ok"
    RETRY: Final = "retry"
    FALLBACK: Final = "fallback"
    FAIL: Final = "fail"
    ABORT: Final = "abort"


@dataclass(slots=True)
class RowRequest:
    """One row, classified and ready to send."""

    id: str
    row_index: int
    row_key: str
    tier: str
    messages: list[dict[str, str]]
    prompt_tokens: int
    """The prompt's size from `batchroute.pricing.tokens`, for limits, budget and context checks."""


@dataclass(slots=True)
class AttemptRecord:
    """One HTTP attempt, as attempts.parquet records it (the costs module adds the cost)."""

    model: str
    attempt: int
    status_code: int | None
    error_type: str | None
    action: str
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    latency_ms: float
    started_at: datetime


@dataclass(slots=True)
class RowOutcome:
    """What happened to one row: its answer or the reason it has none, and every attempt."""

    status: str
    model_requested: str
    model_used: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempts: int = 0
    fallback_depth: int = 0
    content: str | None = None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    failed_input_tokens: int = 0
    failed_output_tokens: int = 0
    latency_ms: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt_records: list[AttemptRecord] = field(default_factory=list)


class _Probe:
    """Holds an endpoint's other rows until its first request is answered.

    An invalid key then aborts the run after one request, not after a whole concurrency's worth.
    """

    __slots__ = ("_event", "_probing", "open")

    def __init__(self) -> None:
        self.open = False
        self._probing = False
        self._event = anyio.Event()

    async def enter(self) -> bool:
        """Wait for the first answer; True if the caller is the one to send the first request."""
        if not self._probing:
            self._probing = True
            return True
        with anyio.move_on_after(PROBE_WAIT_S):
            await self._event.wait()
        return False

    def finish(self) -> None:
        self.open = True
        self._event.set()


@dataclass(slots=True)
class _Model:
    """Everything dispatch needs about one model, resolved once at enter."""

    name: str
    api_model: str
    endpoint: str
    limiter: ModelLimiter
    context_window: int | None
    client: openai.AsyncOpenAI
    rates: FloatRates | None
    """The model's price in fast form, for the budget; None when it has no price."""
    probe: _Probe = field(default_factory=lambda: _Probe())
    unavailable: str | None = None
    """Why the model is skipped for the rest of the run (a 404), or None."""

    def reservation(self, prompt_tokens: int, max_output_tokens: int) -> float:
        """What the budget holds while a request is in flight: its worst-case cost."""
        if self.rates is None:
            return 0.0
        return self.rates.worst_case_usd(
            prompt_tokens=prompt_tokens, output_tokens=max_output_tokens
        )

    def actual_cost(self, completion: Completion) -> float:
        if self.rates is None:
            return 0.0
        return self.rates.usage_usd(
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cached_tokens=completion.cached_tokens,
            reasoning_tokens=completion.reasoning_tokens,
        )


@dataclass(slots=True)
class _Tier:
    """A tier's chain and request, resolved once."""

    chain: tuple[str, ...]
    bodies: dict[str, dict[str, Any]]
    """Per model: the request body without its messages."""
    wants_json: bool
    max_tokens: int
    max_output_tokens: int
    """The output limit the budget reserves for: max_tokens, else the default."""


class Dispatcher:
    """Sends rows through one AsyncOpenAI client per endpoint, with per-model limits.

    Use it as an async context manager inside the running event loop: it creates the clients
    and limiters on enter and closes the clients on exit.
    """

    def __init__(
        self,
        job: Job | JobConfig,
        *,
        prices: PriceTable,
        budget: Budget | None = None,
        base_urls: Mapping[str, str] | None = None,
    ) -> None:
        self.config = job.config if isinstance(job, Job) else job
        self.prices = prices
        self.budget = budget if budget is not None else Budget(None)
        self.base_urls = dict(base_urls or {})
        self.abort: RunAbortedError | None = None
        """Set when the run cannot go on; later rows come back skipped_aborted at once."""
        self.models: dict[str, _Model] = {}
        self.limiters: dict[str, ModelLimiter] = {}
        self.rows_done = 0
        self.attempts_sent = 0
        self._tiers: dict[str, _Tier] = {}
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._probes: dict[str, _Probe] = {}
        self._reachable: tuple[str, ...] = ()

    def __repr__(self) -> str:
        cooling = [name for name, limiter in self.limiters.items() if limiter.is_cooling()]
        unavailable = [name for name, model in self.models.items() if model.unavailable]
        in_flight = sum(limiter.in_flight for limiter in self.limiters.values())
        return (
            f"<Dispatcher {self.config.name!r} [rows done: {self.rows_done}, "
            f"attempts: {self.attempts_sent}, in flight: {in_flight}, cooling: {cooling}, "
            f"unavailable: {unavailable}, aborted: {self.abort is not None}] {self.budget!r}>"
        )

    async def __aenter__(self) -> Dispatcher:
        config = self.config
        endpoints: dict[str, EndpointConfig] = {}
        for name in config.models:
            key = config.models[name].endpoint or "endpoint"
            endpoints[key] = config.endpoint_for(name)
        # Every key is resolved before any client exists, so a missing one leaks nothing.
        api_keys = {
            key: resolve_api_key(endpoint, name=key if key == "endpoint" else f"endpoints.{key}")
            for key, endpoint in endpoints.items()
        }
        for key, endpoint in endpoints.items():
            api_key = api_keys[key]
            base_url = self.base_urls.get(endpoint.base_url, endpoint.base_url)
            if endpoint.is_simulator and base_url == endpoint.base_url:
                raise ValueError(
                    "base_url 'simulator' needs the running simulator's URL in base_urls"
                )
            concurrency = sum(
                m.max_concurrency
                for name, m in config.models.items()
                if (m.endpoint or "endpoint") == key
            )
            self._clients[key] = make_client(
                endpoint, base_url=base_url, api_key=api_key, max_connections=concurrency + 16
            )
            self._probes[key] = _Probe()
        for name, model_cfg in config.models.items():
            price = self.prices.get(name)
            limiter = ModelLimiter(
                name,
                rpm=model_cfg.rpm,
                tpm=model_cfg.tpm,
                max_concurrency=model_cfg.max_concurrency,
            )
            self.limiters[name] = limiter
            endpoint_key = model_cfg.endpoint or "endpoint"
            window = model_cfg.context_window
            if window is None and price is not None:
                window = price.context_window
            self.models[name] = _Model(
                name=name,
                api_model=config.api_model(name),
                endpoint=endpoint_key,
                limiter=limiter,
                context_window=window,
                rates=FloatRates.of(price) if price is not None else None,
                client=self._clients[endpoint_key],
            )
        reachable: list[str] = []
        for tier in config.tiers:
            request = config.tier_request(tier)
            chain = config.chain(tier)
            reachable.extend(m for m in chain if m not in reachable)
            fields = request.body_fields()
            self._tiers[tier] = _Tier(
                chain=chain,
                bodies={m: {"model": config.api_model(m), **fields} for m in chain},
                wants_json=request.wants_json,
                max_tokens=request.max_tokens or 0,
                max_output_tokens=request.max_tokens or DEFAULT_MAX_OUTPUT_TOKENS,
            )
        self._reachable = tuple(reachable)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            for client in self._clients.values():
                await client.close()

    async def dispatch(self, row: RowRequest) -> RowOutcome:
        """Answer one row by walking its tier's chain; never raises for a row-level problem."""
        walk = _Walk(self, row)
        try:
            return await walk.run()
        finally:
            self.rows_done += 1

    def _mark_unavailable(self, model: _Model, reason: str) -> None:
        model.unavailable = reason
        if self.abort is None and all(self.models[m].unavailable for m in self._reachable):
            names = ", ".join(self._reachable)
            self.abort = RunAbortedError(
                f"every model of this job is unavailable ({names} answered 404 model not found); "
                "check the model names (models.*.api_model) and the endpoint's base_url",
                model=model.name,
                status_code=404,
            )

    def _abort_auth(self, model: _Model, reply: Reply) -> None:
        if self.abort is not None:
            return
        endpoint = self.config.endpoint_for(model.name)
        variable = endpoint.api_key_env or "(no key variable)"
        what = "refused the API key" if reply.status_code == 401 else "denied permission"
        self.abort = RunAbortedError(
            f"the endpoint for {model.name} {what} (HTTP {reply.status_code}); check the key in "
            f"the environment variable {variable} and its access to this model",
            model=model.name,
            status_code=reply.status_code,
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _is_json(text: str | None) -> bool:
    if text is None:
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class _Walk:
    """The state of one row's walk down its chain."""

    __slots__ = (
        "attempts",
        "context_blocked",
        "depth",
        "dispatcher",
        "last_message",
        "last_type",
        "outcome",
        "row",
        "tier",
    )

    def __init__(self, dispatcher: Dispatcher, row: RowRequest) -> None:
        self.dispatcher = dispatcher
        self.row = row
        # A tier the job does not map goes where unmatched rows go (`standard` is required).
        self.tier = dispatcher._tiers.get(row.tier) or dispatcher._tiers["standard"]
        self.outcome = RowOutcome(
            status=Status.FAILED, model_requested=self.tier.chain[0], started_at=_now()
        )
        self.attempts = 0
        self.depth = 0
        self.context_blocked = False
        self.last_type: str | None = None
        self.last_message: str | None = None

    def _finish(self, status: str, error_type: str | None, message: str | None) -> RowOutcome:
        outcome = self.outcome
        outcome.status = status
        outcome.error_type = error_type
        outcome.error_message = message
        outcome.attempts = self.attempts
        outcome.fallback_depth = self.depth
        outcome.finished_at = _now()
        return outcome

    def _stopped(self) -> RowOutcome | None:
        """The outcome if the run aborted or the budget ran out before the next attempt."""
        dispatcher = self.dispatcher
        records = self.outcome.attempt_records
        if dispatcher.abort is not None:
            if records and records[-1].action in (Action.RETRY, Action.FALLBACK):
                records[-1].action = Action.ABORT
            if self.attempts == 0:
                return self._finish(
                    Status.SKIPPED_ABORTED, ErrorType.ABORTED, "not sent: the run aborted"
                )
            return self._finish(
                Status.FAILED,
                ErrorType.ABORTED,
                f"the run aborted after {self.attempts} attempt(s); last: {self.last_message}",
            )
        if dispatcher.budget.exhausted:
            if records and records[-1].action in (Action.RETRY, Action.FALLBACK):
                records[-1].action = Action.FAIL
            return self._skipped_budget()
        return None

    def _skipped_budget(self) -> RowOutcome:
        message = "not sent: the budget cap was reached"
        if self.attempts:
            message += f" (after {self.attempts} attempt(s); last: {self.last_message})"
        return self._finish(Status.SKIPPED_BUDGET, ErrorType.BUDGET, message)

    def _next_model(self, position: int) -> int | None:
        """The index of the first model from `position` on that this row may still call."""
        chain = self.tier.chain
        models = self.dispatcher.models
        needed = self.row.prompt_tokens + self.tier.max_tokens
        while position < len(chain):
            model = models[chain[position]]
            fits = (
                not self.context_blocked
                or model.context_window is None
                or model.context_window >= needed
            )
            if model.unavailable is None and fits:
                return position
            position += 1
        return None

    def _no_model_left(self) -> RowOutcome:
        chain = " -> ".join(self.tier.chain)
        if self.last_type is None:
            return self._finish(
                Status.FAILED,
                ErrorType.NO_MODEL_AVAILABLE,
                f"no model of the chain {chain} is available (all answered 404 model not found)",
            )
        return self._finish(
            Status.FAILED,
            self.last_type,
            f"{self.last_message}; no model left in the chain {chain} "
            f"after {self.attempts} attempt(s)",
        )

    async def run(self) -> RowOutcome:
        stopped = self._stopped()
        if stopped is not None:
            return stopped
        position = self._next_model(0)
        while position is not None:
            self.depth = position
            moved = await self._try_model(self.dispatcher.models[self.tier.chain[position]])
            if isinstance(moved, RowOutcome):
                return moved
            position = self._next_model(position + 1)
        return self._stopped() or self._no_model_left()

    async def _try_model(self, model: _Model) -> RowOutcome | None:
        """Attempt one model until it answers (an outcome) or the row must move on (None)."""
        dispatcher = self.dispatcher
        config = dispatcher.config
        retry = config.retry
        budget = dispatcher.budget
        limiter = model.limiter
        row = self.row
        tokens = row.prompt_tokens + self.tier.max_tokens
        retries = 0
        while True:
            stopped = self._stopped()
            if stopped is not None:
                return stopped
            if model.unavailable is not None:
                return None  # another row found it gone while this one waited
            if self.attempts >= retry.max_attempts_per_row:
                return self._finish(
                    Status.FAILED,
                    ErrorType.ATTEMPTS_EXHAUSTED,
                    f"the row's {retry.max_attempts_per_row} attempts ran out; "
                    f"last: {self.last_message}",
                )
            # The first request to an endpoint, then to each model, goes alone: a bad key or a
            # retired model then costs one request, not a whole concurrency's worth.
            probes = [dispatcher._probes[model.endpoint], model.probe]
            held = [probe for probe in probes if not probe.open and await probe.enter()]
            try:
                reply, latency_ms, started_at, cost = await self._send(model, tokens)
            finally:
                for probe in held:
                    probe.finish()
            if reply is None:
                if model.unavailable is not None:
                    return None
                stopped = self._stopped()
                if stopped is not None:
                    return stopped
                continue
            self.attempts += 1
            record = AttemptRecord(
                model=model.name,
                attempt=self.attempts,
                status_code=reply.status_code,
                error_type=reply.error_type,
                action=Action.OK,
                input_tokens=None,
                output_tokens=None,
                cached_tokens=None,
                reasoning_tokens=None,
                latency_ms=latency_ms,
                started_at=started_at,
            )
            self.outcome.attempt_records.append(record)
            if reply.hint is not None:
                limiter.follow_headers(reply.hint)
            completion = reply.completion
            if completion is not None:
                if completion.has_usage:
                    record.input_tokens = completion.input_tokens
                    record.output_tokens = completion.output_tokens
                    record.cached_tokens = completion.cached_tokens
                    record.reasoning_tokens = completion.reasoning_tokens
                    limiter.settle(tokens, self._charged_tokens(completion))
                    budget.settle(cost, model.actual_cost(completion))
                else:
                    budget.settle(cost, cost)
                if completion.finish_reason == "content_filter":
                    error_type = ErrorType.CONTENT_FILTER
                    message = f"HTTP {reply.status_code}: the answer was withheld (content_filter)"
                elif self.tier.wants_json and not _is_json(completion.content):
                    error_type = ErrorType.INVALID_JSON
                    message = (
                        f"HTTP {reply.status_code}: JSON was asked for, the answer is not JSON"
                    )
                else:
                    return self._succeed(model, completion, latency_ms)
                record.error_type = error_type
                self.outcome.failed_input_tokens += completion.input_tokens
                self.outcome.failed_output_tokens += completion.output_tokens
            else:
                error_type = reply.error_type or ErrorType.MALFORMED_RESPONSE
                message = reply.message or error_type
                limiter.settle(tokens, tokens if error_type in _MAYBE_BILLED else 0)
                budget.settle(cost, cost if error_type in _MAYBE_BILLED else 0.0)
                if error_type == ErrorType.RATE_LIMITED:
                    limiter.cool_down(reply.retry_after_s)
            self.last_type = error_type
            self.last_message = f"{message} [{model.name}]"

            if error_type in _RETRYABLE:
                retries += 1
                if self.attempts >= retry.max_attempts_per_row:
                    record.action = Action.FAIL
                    return self._finish(
                        Status.FAILED,
                        ErrorType.ATTEMPTS_EXHAUSTED,
                        f"the row's {retry.max_attempts_per_row} attempts ran out; "
                        f"last: {self.last_message}",
                    )
                if retries <= retry.max_retries_per_model:
                    record.action = Action.RETRY
                    await anyio.sleep(self._backoff(retries, reply))
                    continue
                return self._move_on(record)
            if error_type in _FALL_BACK_AT_ONCE:
                if error_type == ErrorType.MODEL_NOT_FOUND:
                    dispatcher._mark_unavailable(model, message)
                elif error_type == ErrorType.CONTEXT_LENGTH:
                    self.context_blocked = True
                if dispatcher.abort is not None:
                    record.action = Action.ABORT
                    return self._finish(Status.FAILED, error_type, self.last_message)
                return self._move_on(record)
            if error_type == ErrorType.AUTH:
                dispatcher._abort_auth(model, reply)
                record.action = Action.ABORT
                return self._finish(Status.FAILED, ErrorType.AUTH, self.last_message)
            record.action = Action.FAIL
            return self._finish(Status.FAILED, error_type, self.last_message)

    def _move_on(self, record: AttemptRecord) -> RowOutcome | None:
        """Fall back to the next model, or fail the row if none is left."""
        position = self.tier.chain.index(record.model)
        if self._next_model(position + 1) is None:
            record.action = Action.FAIL
            return self._no_model_left()
        if self.attempts >= self.dispatcher.config.retry.max_attempts_per_row:
            record.action = Action.FAIL
            return self._finish(
                Status.FAILED,
                ErrorType.ATTEMPTS_EXHAUSTED,
                f"the row's {self.attempts} attempts ran out; last: {self.last_message}",
            )
        record.action = Action.FALLBACK
        return None

    async def _send(
        self, model: _Model, tokens: int
    ) -> tuple[Reply | None, float, datetime, float]:
        """One paced, budgeted HTTP attempt; (None, ...) if it was not sent after the wait."""
        dispatcher = self.dispatcher
        limiter = model.limiter
        await limiter.acquire(tokens)
        try:
            # Checked after the wait: the run may have aborted or the model gone meanwhile.
            if dispatcher.abort is not None or model.unavailable is not None:
                limiter.settle(tokens, 0)
                return None, 0.0, _now(), 0.0
            cost = model.reservation(self.row.prompt_tokens, self.tier.max_output_tokens)
            if not dispatcher.budget.reserve(cost):
                limiter.settle(tokens, 0)
                return None, 0.0, _now(), 0.0
            body = dict(self.tier.bodies[model.name])
            body["messages"] = self.row.messages
            started_at = _now()
            start = time.perf_counter()
            try:
                reply = await send_chat(model.client, body)
            except BaseException:
                dispatcher.budget.settle(cost, cost)
                raise
            dispatcher.attempts_sent += 1
            return reply, (time.perf_counter() - start) * 1000.0, started_at, cost
        finally:
            limiter.release()

    def _backoff(self, retries: int, reply: Reply) -> float:
        """Full-jitter exponential backoff; a 5xx's retry-after is honoured as a minimum."""
        retry = self.dispatcher.config.retry
        ceiling = min(retry.backoff_max_s, retry.backoff_initial_s * 2 ** (retries - 1))
        delay = random.uniform(0.0, ceiling)
        if reply.retry_after_s is not None and reply.error_type != ErrorType.RATE_LIMITED:
            # A 429's retry-after is the model's shared cooldown, which the limiter enforces.
            delay = max(delay, min(reply.retry_after_s, retry.backoff_max_s))
        return delay

    def _charged_tokens(self, completion: Completion) -> int:
        """The tokens the endpoint counts against TPM: the reported prompt plus max_tokens.

        Providers reserve `max_tokens` at request time (OpenAI does, and so does the simulator),
        so only the prompt estimate is corrected with usage, unless the output was larger.
        """
        return completion.input_tokens + max(completion.output_tokens, self.tier.max_tokens)

    def _succeed(self, model: _Model, completion: Completion, latency_ms: float) -> RowOutcome:
        outcome = self.outcome
        outcome.model_used = model.name
        outcome.content = completion.content
        outcome.finish_reason = completion.finish_reason
        outcome.input_tokens = completion.input_tokens
        outcome.output_tokens = completion.output_tokens
        outcome.cached_tokens = completion.cached_tokens
        outcome.reasoning_tokens = completion.reasoning_tokens
        outcome.latency_ms = latency_ms
        return self._finish(Status.OK, None, None)
