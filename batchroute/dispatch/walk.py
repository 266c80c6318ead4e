"""A row's way through its chain: send, read the reply, ask the policy, retry or fall back.

`RowWalk.run` never raises for a row-level problem. It calls each model of the row's chain at
most once in turn, within `retry.max_attempts_per_row` HTTP attempts, and returns a `RowOutcome`
with one `AttemptRecord` per attempt. What to do after each reply is `policy.decide`'s; the side
effects on the shared fleet (a 429 slows the model, a 404 retires it, a 401 aborts the run) are
made here, through the fleet's public methods.

An answer is checked against its tier's checks (`verify.py`, and the judge's call, `judge.py`)
before it counts. One that fails sends the row up its escalation path: the walk starts the next
tier's chain with that tier's request, within the same attempt cap, and the first answer that
passes is the row's. Fallback moves along a chain; escalation moves between tiers.

A row's climb survives a crash: before the next tier is asked, the attempts made so far are
handed to the run's `on_escalate` hook, which returns once they are durable; a later session
reads them back (`store.escalations`) and resumes the row at the tier it reached
(`EscalationProgress`), so a rejected answer is never bought twice.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from batchroute.config import JobConfig, RetryConfig
from batchroute.dispatch.client import Completion, Reply, send_chat
from batchroute.dispatch.fleet import Fleet, ModelState
from batchroute.dispatch.judge import JudgePlan, JudgeRequest, read_verdict
from batchroute.dispatch.params import adapt_body
from batchroute.dispatch.policy import Action, Ending, RowState, decide, is_retryable
from batchroute.dispatch.rows import (
    Answer,
    AttemptRecord,
    EscalationHook,
    EscalationProgress,
    RowOutcome,
    RowRequest,
    rejection_message,
)
from batchroute.dispatch.verify import Verifier
from batchroute.pricing.budget import reserved_output_tokens
from batchroute.schema import ErrorType, Status

__all__ = ["AnswerCache", "RowWalk", "TierPlan", "plan_tiers"]


class AnswerCache(Protocol):
    """The response cache as a walk uses it (`batchroute.cache.runs.RunCache`)."""

    def get(self, model: str, body: dict[str, Any], messages: Any) -> Answer | None:
        """The stored answer to exactly this request, or None."""
        ...

    def store(
        self,
        model: str,
        body: dict[str, Any],
        messages: Any,
        completion: Completion,
        *,
        key: bytes | None = None,
    ) -> None:
        """Keep an answer the policy accepted; `key`, when known, is this request's key."""
        ...


# Errors after which the endpoint may have done (and billed) the work: the budget keeps them at
# their expected cost rather than assuming they were free.
_MAYBE_BILLED: Final = frozenset({ErrorType.TIMEOUT, ErrorType.MALFORMED_RESPONSE})


@dataclass(frozen=True, slots=True)
class TierPlan:
    """A tier's chain and request, resolved once per run."""

    chain: tuple[str, ...]
    bodies: dict[str, dict[str, Any]]
    """Per model: the request body without its messages, as that model accepts it."""
    wants_json: bool
    max_tokens: int
    reserved_output_tokens: dict[str, int]
    """Per model: the output tokens the budget reserves for (`pricing.budget`)."""
    tier: str = "standard"
    verifier: Verifier = Verifier(())
    """The checks each answer of this tier must pass (`dispatch.verify`)."""
    escalation: tuple[str, ...] = ()
    """The tiers a failed check climbs to, in order (`JobConfig.escalation_path`)."""
    max_escalations: int = 0
    judge: JudgePlan | None = None
    """The job's judge, for a `judge` check."""


def plan_tiers(config: JobConfig) -> dict[str, TierPlan]:
    """Each tier's chain and per-model request bodies (see `params.adapt_body`)."""
    plans: dict[str, TierPlan] = {}
    judge = JudgePlan.of(config)
    for tier in config.tiers:
        request = config.tier_request(tier)
        chain = config.chain(tier)
        fields = request.body_fields()
        bodies = {}
        for model in chain:
            api_model = config.api_model(model)
            body, _ = adapt_body(api_model, fields)
            bodies[model] = {"model": api_model, **body}
        plans[tier] = TierPlan(
            chain=chain,
            bodies=bodies,
            wants_json=request.wants_json,
            max_tokens=request.max_tokens or 0,
            reserved_output_tokens={
                model: reserved_output_tokens(
                    body,
                    context_window=config.models[model].context_window
                    if model in config.models
                    else None,
                )
                for model, body in bodies.items()
            },
            tier=tier,
            verifier=Verifier(config.checks(tier)),
            escalation=config.escalation_path(tier),
            max_escalations=config.verify.max_escalations,
            judge=judge,
        )
    return plans


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


class RowWalk:
    """The state of one row's walk down its chain."""

    __slots__ = (
        "attempts",
        "context_blocked",
        "escalating",
        "fleet",
        "last_message",
        "last_type",
        "on_escalate",
        "origin",
        "outcome",
        "plan",
        "plans",
        "retry",
        "row",
        "cache",
    )

    def __init__(
        self,
        fleet: Fleet,
        plan: TierPlan,
        row: RowRequest,
        cache: AnswerCache | None = None,
        *,
        plans: Mapping[str, TierPlan] | None = None,
        resume: EscalationProgress | None = None,
        on_escalate: EscalationHook | None = None,
    ) -> None:
        self.fleet = fleet
        self.cache = cache
        self.plan = plan
        self.origin = plan
        """The row's own tier's plan: its escalation path and its planned cost start here."""
        self.plans: Mapping[str, TierPlan] = plans or {plan.tier: plan}
        """Every tier's plan, for escalation; the row's own alone means it cannot escalate."""
        self.escalating = False
        self.row = row
        self.retry: RetryConfig = fleet.config.retry
        self.outcome = RowOutcome(
            status=Status.FAILED, model_requested=plan.chain[0], started_at=_now()
        )
        self.attempts = 0
        self.context_blocked = False
        self.last_type: str | None = None
        self.last_message: str | None = None
        self.on_escalate = on_escalate
        if resume is not None:
            self._resume(resume)

    def _resume(self, progress: EscalationProgress) -> None:
        """Start where an earlier session's climb stopped: at the tier it reached, carrying what
        an uninterrupted walk would carry there. A climb this job's path no longer allows (it
        cannot, short of a changed key) is ignored: the row starts from its own tier."""
        path = self.origin.escalation
        depth = progress.depth
        if not 0 < depth <= min(len(path), self.origin.max_escalations):
            return
        if path[depth - 1] not in self.plans:
            return
        outcome = self.outcome
        outcome.escalated_from = self.origin.tier
        outcome.escalation_depth = depth
        outcome.verify_failures = list(progress.verify_failures)
        outcome.failed_input_tokens = progress.failed_input_tokens
        outcome.failed_output_tokens = progress.failed_output_tokens
        self.attempts = progress.attempts
        self.plan = self.plans[path[depth - 1]]
        self.last_type = ErrorType.VERIFICATION_FAILED
        self.last_message = progress.last_message

    async def run(self) -> RowOutcome:
        """Walk the chain, and up the escalation path while answers fail their checks, until an
        answer that passes or an ending; never raises for a row's problem."""
        while True:
            outcome = await self._walk_chain()
            if outcome is not None:
                return outcome
            # A failed check chose to escalate (`_verify`): the row starts the next tier's chain.
            self.escalating = False
            self.outcome.escalated_from = self.outcome.escalated_from or self.plan.tier
            self.outcome.escalation_depth += 1
            self.plan = self.plans[self._escalation_target()]
            self.context_blocked = False
            if self.on_escalate is not None:
                # The rejected answers become durable before the next tier is asked: a crash from
                # here on resumes the row at that tier, and they are recorded once, here.
                made, self.outcome.attempt_records = self.outcome.attempt_records, []
                await self.on_escalate(self.row, made)

    async def _walk_chain(self) -> RowOutcome | None:
        """The current tier's chain: an outcome, or None when the row escalates."""
        position = self._next_model(0)
        while position is not None:
            self.outcome.fallback_depth = position
            model = self.fleet.models[self.plan.chain[position]]
            # The chain's first model was looked up with the row's whole batch (the runner);
            # a fallback is looked up here, just before its request would be sent. A tier with
            # checks is never served from the cache: its answers must pass this run's checks.
            if position > 0 and self.cache is not None and not self.plan.verifier:
                cached = self.cache.get(model.name, self.plan.bodies[model.name], self.row.messages)
                if cached is not None:
                    return self._served(model, cached)
            outcome = await self._try_model(model)
            if outcome is not None:
                return outcome
            if self.escalating:
                return None
            position = self._next_model(position + 1)
        return self._stopped() or self._end(Ending.NO_MODEL_LEFT)

    # -- endings -------------------------------------------------------------------------------

    def _finish(self, status: str, error_type: str | None, message: str | None) -> RowOutcome:
        outcome = self.outcome
        outcome.status = status
        outcome.error_type = error_type
        outcome.error_message = message
        outcome.attempts = self.attempts
        outcome.finished_at = _now()
        return outcome

    def _end(self, ending: str) -> RowOutcome:
        """The failed outcome for a policy ending (built here once, for every path)."""
        if ending == Ending.ATTEMPTS_EXHAUSTED:
            return self._finish(
                Status.FAILED,
                ErrorType.ATTEMPTS_EXHAUSTED,
                f"the row's {self.retry.max_attempts_per_row} attempts ran out; "
                f"last: {self.last_message}",
            )
        if ending == Ending.NO_MODEL_LEFT:
            chain = " -> ".join(self.plan.chain)
            if self.last_type is None:
                return self._finish(
                    Status.FAILED,
                    ErrorType.NO_MODEL_AVAILABLE,
                    f"no model of the chain {chain} is available "
                    "(all answered 404 model not found)",
                )
            return self._finish(
                Status.FAILED,
                self.last_type,
                f"{self.last_message}; no model left in the chain {chain} "
                f"after {self.attempts} attempt(s)",
            )
        return self._finish(Status.FAILED, self.last_type, self.last_message)

    def _stopped(self) -> RowOutcome | None:
        """The outcome if the run aborted, is stopping, or is out of budget; else None."""
        fleet = self.fleet
        records = self.outcome.attempt_records
        last = (
            records[-1]
            if records and records[-1].action in (Action.RETRY, Action.FALLBACK)
            else None
        )
        tried = (
            f" after {self.attempts} attempt(s); last: {self.last_message}" if self.attempts else ""
        )
        if fleet.abort is not None:
            if last is not None:
                last.action = Action.ABORT
            if self.attempts == 0:
                return self._finish(
                    Status.SKIPPED_ABORTED, ErrorType.ABORTED, "not sent: the run aborted"
                )
            return self._finish(Status.FAILED, ErrorType.ABORTED, f"the run aborted{tried}")
        if fleet.stopping:
            if last is not None:
                last.action = Action.FAIL
            return self._finish(
                Status.SKIPPED_INTERRUPTED,
                ErrorType.INTERRUPTED,
                f"not sent: the run was stopped{tried}",
            )
        if fleet.budget.exhausted:
            if last is not None:
                last.action = Action.FAIL
            return self._finish(
                Status.SKIPPED_BUDGET,
                ErrorType.BUDGET,
                f"not sent: the budget cap was reached{tried and ' (' + tried.strip() + ')'}",
            )
        return None

    # -- the chain -------------------------------------------------------------------------------

    def _next_model(self, position: int) -> int | None:
        """The index of the first model from `position` on that this row may still call."""
        chain = self.plan.chain
        models = self.fleet.models
        needed = self.row.prompt_tokens + self.plan.max_tokens
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

    async def _try_model(self, model: ModelState) -> RowOutcome | None:
        """Attempt one model until the row ends (an outcome) or must move on (None)."""
        fleet = self.fleet
        tokens = self.row.prompt_tokens + self.plan.max_tokens
        retries = 0
        while True:
            stopped = self._stopped()
            if stopped is not None:
                return stopped
            if model.unavailable is not None:
                return None  # another row found it gone while this one waited
            if self.attempts >= self.retry.max_attempts_per_row:
                return self._end(Ending.ATTEMPTS_EXHAUSTED)
            # The first request to an endpoint, then to each model, goes alone: a bad key or a
            # retired model then costs one request, not a whole concurrency's worth.
            probes = (model.endpoint_probe, model.probe)
            held = [probe for probe in probes if not probe.open and await probe.enter()]
            try:
                sent = await self._send(model, tokens)
            finally:
                for probe in held:
                    probe.finish()
            if sent is None:
                continue  # not sent: the loop's checks say why
            reply, record, cost = sent
            error_type, message = self._read(model, reply, record, tokens, cost)
            if error_type is None:
                assert reply.completion is not None
                if self.plan.verifier:
                    return await self._verify(model, reply.completion, record)
                return self._succeed(model, reply.completion, record.latency_ms)
            self.last_type = error_type
            self.last_message = f"{message} [{model.name}]"
            if error_type == ErrorType.MODEL_NOT_FOUND:
                fleet.mark_unavailable(model, message)
            elif error_type == ErrorType.CONTEXT_LENGTH:
                self.context_blocked = True
            elif error_type == ErrorType.AUTH:
                fleet.abort_for_auth(model, reply.status_code)
            if is_retryable(error_type):
                retries += 1
            position = self.plan.chain.index(model.name)
            decision = decide(
                error_type,
                RowState(
                    attempts=self.attempts,
                    max_attempts=self.retry.max_attempts_per_row,
                    retries_here=retries,
                    max_retries_per_model=self.retry.max_retries_per_model,
                    has_next_model=self._next_model(position + 1) is not None,
                ),
            )
            record.action = decision.action
            if fleet.abort is not None and decision.action != Action.RETRY:
                record.action = Action.ABORT
                return self._end(Ending.ERROR)
            if decision.ending is not None:
                return self._end(decision.ending)
            if decision.action == Action.FALLBACK:
                return None
            await fleet.sleep(self._backoff(retries, reply))

    async def _send(
        self, model: ModelState, tokens: int, *, call: JudgeRequest | None = None
    ) -> tuple[Reply, AttemptRecord, float] | None:
        """One paced, budgeted HTTP attempt; None if it was not sent after the wait."""
        fleet = self.fleet
        limiter = model.limiter
        if not await limiter.acquire(tokens):
            return None  # the fleet is stopping
        try:
            # Checked after the wait: the run may have stopped or the model gone meanwhile.
            if fleet.abort is not None or fleet.stopping or model.unavailable is not None:
                limiter.sending()  # the place goes unused; keep the log's order
                limiter.settle(tokens, 0)
                return None
            row = self.row
            if call is not None:  # a judge's grading request, not the row's own
                cost = model.reservation(call.prompt_token_bound, call.reserved_output_tokens)
            else:
                cost = model.reservation(
                    row.prompt_token_bound
                    if row.prompt_token_bound is not None
                    else row.prompt_tokens,
                    self.plan.reserved_output_tokens[model.name],
                )
            if not fleet.budget.reserve(cost):
                limiter.sending()
                limiter.settle(tokens, 0)
                return None
            if call is not None:
                body = call.body
            else:
                body = dict(self.plan.bodies[model.name])
                body["messages"] = self.row.messages
            limiter.sending()
            started_at = _now()
            start = time.perf_counter()
            try:
                reply = await send_chat(model.client, body)
            except BaseException:
                fleet.budget.settle(cost, cost)
                raise
            fleet.attempts_sent += 1
        finally:
            limiter.release()
        self.attempts += 1
        record = AttemptRecord(
            tier=self.plan.tier,
            escalation_depth=self.outcome.escalation_depth,
            judge=call is not None,
            model=model.name,
            attempt=self.attempts,
            status_code=reply.status_code,
            error_type=reply.error_type,
            action=Action.OK,
            input_tokens=None,
            output_tokens=None,
            cached_tokens=None,
            reasoning_tokens=None,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            started_at=started_at,
        )
        self.outcome.attempt_records.append(record)
        return reply, record, cost

    def _read(
        self, model: ModelState, reply: Reply, record: AttemptRecord, tokens: int, cost: float
    ) -> tuple[str | None, str]:
        """Settle limits and budget for a reply; its error type (None: an answer) and message."""
        limiter = model.limiter
        budget = self.fleet.budget
        if reply.hint is not None:
            limiter.follow_headers(reply.hint)
        completion = reply.completion
        if completion is None:
            error_type = reply.error_type or ErrorType.MALFORMED_RESPONSE
            limiter.settle(tokens, tokens if error_type in _MAYBE_BILLED else 0)
            budget.settle(cost, cost if error_type in _MAYBE_BILLED else 0.0)
            if error_type == ErrorType.RATE_LIMITED:
                limiter.rate_limited(reply.retry_after_s)
            elif reply.status_code is not None:
                limiter.answered()
            return error_type, reply.message or error_type
        limiter.answered()
        if completion.has_usage:
            record.input_tokens = completion.input_tokens
            record.output_tokens = completion.output_tokens
            record.cached_tokens = completion.cached_tokens
            record.reasoning_tokens = completion.reasoning_tokens
            limiter.settle(tokens, self._charged_tokens(completion))
            completion.cost_usd = model.actual_cost(completion)
            budget.settle(cost, completion.cost_usd)
        else:
            budget.settle(cost, cost)
        if completion.finish_reason == "content_filter":
            error_type = ErrorType.CONTENT_FILTER
            message = f"HTTP {reply.status_code}: the answer was withheld (content_filter)"
        elif (
            self.plan.wants_json
            and not self.plan.verifier.checks_json
            and not _is_json(completion.content)
        ):
            # With a `json` check, the check judges the answer and a failure escalates instead.
            error_type = ErrorType.INVALID_JSON
            message = f"HTTP {reply.status_code}: JSON was asked for, the answer is not JSON"
        else:
            return None, ""
        record.error_type = error_type
        self.outcome.failed_input_tokens += completion.input_tokens
        self.outcome.failed_output_tokens += completion.output_tokens
        return error_type, message

    def _backoff(self, retries: int, reply: Reply) -> float:
        """Full-jitter exponential backoff; a retry-after (a 429's too) is honoured as a minimum."""
        retry = self.retry
        ceiling = min(retry.backoff_max_s, retry.backoff_initial_s * 2 ** (retries - 1))
        delay = random.uniform(0.0, ceiling)
        if reply.retry_after_s is not None:
            delay = max(delay, min(reply.retry_after_s, retry.backoff_max_s))
        return delay

    def _charged_tokens(self, completion: Completion) -> int:
        """The tokens the endpoint counts against TPM: the reported prompt plus max_tokens.

        Providers reserve `max_tokens` at request time (OpenAI does, and so does the simulator),
        so only the prompt estimate is corrected with usage, unless the output was larger.
        """
        return completion.input_tokens + max(completion.output_tokens, self.plan.max_tokens)

    # -- verify and escalate ----------------------------------------------------------------------

    def _escalation_target(self) -> str:
        """The next tier up the row's escalation path (from the row's own tier)."""
        return self.origin.escalation[self.outcome.escalation_depth - 1]

    def _can_escalate(self) -> bool:
        path = self.origin.escalation
        depth = self.outcome.escalation_depth
        return (
            depth < self.origin.max_escalations
            and depth < len(path)
            and path[depth] in self.plans
            and self.attempts < self.retry.max_attempts_per_row
        )

    async def _verify(
        self, model: ModelState, completion: Completion, record: AttemptRecord
    ) -> RowOutcome | None:
        """Run the tier's checks on an answer: the row succeeds, escalates (None) or fails."""
        verifier = self.plan.verifier
        failures = verifier.failures(completion.content, completion.finish_reason)
        if not failures and verifier.judge_rubric is not None:
            # The judge costs a call: it runs only on answers every free check passed.
            judged = await self._judge(model, completion)
            if judged is not None:
                failures = [judged]
        if not failures:
            record.verify = "passed"
            self.outcome.verified = True
            return self._succeed(model, completion, record.latency_ms)
        why = "; ".join(failures)
        record.verify = "failed"
        record.verify_failures = why
        # The rejected answer was paid for: it is a failed attempt, priced as one.
        record.error_type = ErrorType.VERIFICATION_FAILED
        self.outcome.failed_input_tokens += completion.input_tokens
        self.outcome.failed_output_tokens += completion.output_tokens
        self.outcome.verify_failures.append(f"{self.plan.tier}/{model.name}: {why}")
        self.last_type = ErrorType.VERIFICATION_FAILED
        self.last_message = rejection_message(why, model.name)
        if self._can_escalate():
            record.action = Action.ESCALATE
            self.escalating = True
            return None
        # None passed: the row fails, keeping the last answer and why it was refused.
        record.action = Action.FAIL
        self._keep_answer(model, completion, record.latency_ms)
        self.outcome.verified = False
        return self._finish(Status.FAILED, ErrorType.VERIFICATION_FAILED, self.last_message)

    async def _judge(self, graded: ModelState, completion: Completion) -> str | None:
        """Have the judge grade an answer; None when it passes, else why the check failed.

        The call is an attempt like any other (limits, retries, budget, the attempt log, marked
        `judge`). Whatever keeps the judge from grading is a failure of the check, not a pass.
        """
        judge = self.plan.judge
        assert judge is not None, "a judge check implies verify.judge (config)"
        fleet = self.fleet
        model = fleet.models[judge.model]
        call = judge.request(
            self.row.messages,
            completion.content or "",
            graded_model=graded.name,
            rubric=self.plan.verifier.judge_rubric,
        )
        tokens = call.prompt_token_bound + call.reserved_output_tokens
        retries = 0
        while True:
            if fleet.abort is not None or fleet.stopping or fleet.budget.exhausted:
                return "judge: not graded (the run stopped, or the budget cap was reached)"
            if model.unavailable is not None:
                return f"judge: not graded (the judge model {model.name} is unavailable)"
            if self.attempts >= self.retry.max_attempts_per_row:
                return "judge: not graded (the row's attempts ran out)"
            sent = await self._send(model, tokens, call=call)
            if sent is None:
                continue
            reply, record, cost = sent
            error_type, message = self._read(model, reply, record, tokens, cost)
            if error_type is None:
                assert reply.completion is not None
                return read_verdict(reply.completion.content, threshold=judge.threshold)
            if error_type == ErrorType.MODEL_NOT_FOUND:
                fleet.mark_unavailable(model, message)
            elif error_type == ErrorType.AUTH:
                fleet.abort_for_auth(model, reply.status_code)
            if is_retryable(error_type) and retries < self.retry.max_retries_per_model:
                retries += 1
                record.action = Action.RETRY
                await fleet.sleep(self._backoff(retries, reply))
                continue
            record.action = Action.FAIL
            return f"judge: the judge's call failed ({message} [{model.name}])"

    def _keep_answer(self, model: ModelState, completion: Completion, latency_ms: float) -> None:
        outcome = self.outcome
        outcome.model_used = model.name
        outcome.answered_tier = self.plan.tier
        outcome.content = completion.content
        outcome.finish_reason = completion.finish_reason
        outcome.latency_ms = latency_ms

    def _succeed(self, model: ModelState, completion: Completion, latency_ms: float) -> RowOutcome:
        self.outcome.answered_tier = self.plan.tier
        self.outcome.keep_answer(model.name, completion, latency_ms=latency_ms)
        self.fleet.count_answer(self.row, model, completion)
        self.outcome.cost_estimate_usd = completion.cost_usd
        if self.cache is not None:  # the policy accepted it: not filtered, JSON when asked
            # The row's key was made for its own tier's first model, when its batch was looked
            # up; any other request (a fallback, a tier climbed to) is keyed here.
            first = self.plan is self.origin and model.name == self.plan.chain[0]
            self.cache.store(
                model.name,
                self.plan.bodies[model.name],
                self.row.messages,
                completion,
                key=self.row.cache_key if first else None,
            )
        return self._finish(Status.OK, None, None)

    def _served(self, model: ModelState, cached: Answer) -> RowOutcome:
        """The row answered by the response cache: nothing sent for it on this model."""
        outcome = self.outcome
        outcome.answered_tier = self.plan.tier
        outcome.keep_answer(model.name, cached, latency_ms=None)
        outcome.cache_hit = True
        return self._finish(Status.OK, None, None)
