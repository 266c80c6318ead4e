"""The `judge` check: a model grades an answer against a rubric, replying with strict JSON.

The judge's request is built here (`JudgePlan.request`) and its reply read here (`read_verdict`);
the call itself goes through the walk like any other attempt (`walk.RowWalk._judge`), so the
judge model's limits, retries, budget and attempt log apply, with the attempt marked `judge`.

The reply must be one JSON object with a numeric `score` from 0 to 1 (other keys, such as a
`reason`, are kept for the failure message). Anything else (prose, a bool score, a score out of
range, a truncated object) is a judge failure, never a pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchroute.dispatch.params import adapt_body
from batchroute.pricing.budget import reserved_output_tokens
from batchroute.pricing.tokens import message_token_bound

if TYPE_CHECKING:
    from batchroute.config import JobConfig

__all__ = ["JudgePlan", "JudgeRequest", "read_verdict"]


@dataclass(frozen=True, slots=True)
class JudgeRequest:
    """One grading request: its body (messages included) and what the budget reserves for."""

    body: dict[str, Any]
    prompt_token_bound: int
    reserved_output_tokens: int


@dataclass(frozen=True, slots=True)
class JudgePlan:
    """The job's judge, resolved once per run."""

    model: str
    body: dict[str, Any]
    """The request body without messages, as the judge model accepts it."""
    prompt: str
    rubric: str
    threshold: float
    reserved_output_tokens: int

    @classmethod
    def of(cls, config: JobConfig) -> JudgePlan | None:
        judge = config.verify.judge
        if judge is None:
            return None
        fields = {"max_tokens": judge.max_tokens, "response_format": {"type": "json_object"}}
        body, _ = adapt_body(config.api_model(judge.model), fields)
        body = {"model": config.api_model(judge.model), **body}
        window = config.models[judge.model].context_window
        return cls(
            model=judge.model,
            body=body,
            prompt=judge.prompt,
            rubric=judge.rubric,
            threshold=judge.threshold,
            reserved_output_tokens=reserved_output_tokens(body, context_window=window),
        )

    def request(
        self,
        messages: Sequence[Mapping[str, Any]],
        answer: str,
        *,
        graded_model: str,
        rubric: str | None = None,
    ) -> JudgeRequest:
        """The grading request for one answer to one row's messages."""
        asked = "\n".join(f"[{m.get('role', 'user')}] {m.get('content', '')}" for m in messages)
        text = (
            self.prompt.replace("{rubric}", rubric or self.rubric)
            .replace("{request}", asked)
            .replace("{model}", graded_model)
            .replace("{answer}", answer)
        )
        judge_messages = [{"role": "user", "content": text}]
        return JudgeRequest(
            body={**self.body, "messages": judge_messages},
            prompt_token_bound=message_token_bound(judge_messages),
            reserved_output_tokens=self.reserved_output_tokens,
        )


def read_verdict(content: str | None, *, threshold: float) -> str | None:
    """None when the judge's reply passes the answer; else why the `judge` check failed."""
    if content is None:
        return "judge: the judge's reply has no content"
    try:
        verdict = json.loads(content)
    except ValueError:
        return f"judge: the judge's reply is not the JSON asked for ({content[:80]!r})"
    score = verdict.get("score") if isinstance(verdict, dict) else None
    if (
        not isinstance(score, int | float)
        or isinstance(score, bool)
        or not math.isfinite(score)
        or not 0 <= score <= 1
    ):
        return f"judge: the judge's reply has no score from 0 to 1 ({content[:80]!r})"
    if score >= threshold:
        return None
    reason = verdict.get("reason")
    why = f": {reason[:160]}" if isinstance(reason, str) and reason else ""
    return f"judge: scored {score:g}, below the threshold {threshold:g}{why}"
