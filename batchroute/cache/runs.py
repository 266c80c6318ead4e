"""The response cache as a run uses it: keys from the bodies the walk sends, a lookup per batch,
and a store once the policy has accepted an answer.

A row's key for a model is `request_key(endpoint, body)` where body is exactly what the walk
sends that model (`dispatch.walk.plan_tiers`' per-model body plus the row's messages), and the
endpoint is the *configured* base URL; for the embedded simulator, `simulator:<hash of the job's
simulator section>`, since the same prompt gets another answer from a simulator set up otherwise
and its loopback port changes every run.

Before a batch is queued, the key of each row's first request (its chain's first model) is
looked up in one `get_many`. A hit is an answer already paid for: the row settles at once, with
no slot, limiter or budget reservation, and costs nothing new (`cache_saved_usd` keeps its list
cost). A row that falls back looks its fallback's request up in the walk, just before it would
be sent (`get`): a stored answer there ends the row the same way, at that `fallback_depth`.
The chain's order is kept: a fallback's stored answer never stands in for the first model's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from batchroute.cache.answers import CachedAnswer
from batchroute.cache.keys import request_key
from batchroute.cache.store import ResponseCache, cache_settings
from batchroute.config import Job, JobConfig
from batchroute.dispatch.client import Completion
from batchroute.dispatch.rows import RowOutcome
from batchroute.dispatch.walk import TierPlan, plan_tiers
from batchroute.schema import Status

__all__ = ["Hit", "Responses", "RunCache", "endpoint_keys"]

Hit = tuple[int, str, CachedAnswer]
"""A row's cached answer: the position of its model in the chain, the model, the answer."""


class Responses(Protocol):
    """Where a run's answers are kept: the file (`ResponseCache`) or, in a Ray worker, the
    driver node's `CacheHost` (`cluster.RemoteResponses`)."""

    read: bool
    write: bool

    def open(self) -> None: ...
    def close(self) -> None: ...
    def get(self, key: bytes) -> CachedAnswer | None: ...
    def get_many(self, keys: Sequence[bytes]) -> list[CachedAnswer | None]: ...
    def put(self, key: bytes, answer: CachedAnswer) -> bool: ...


def endpoint_keys(config: JobConfig) -> dict[str, str]:
    """Per model, the endpoint part of its cache keys (see the module's docstring)."""
    simulator: str | None = None
    keys: dict[str, str] = {}
    for model in config.models:
        endpoint = config.endpoint_for(model)
        if endpoint.is_simulator:
            if simulator is None:
                dumped = json.dumps(
                    config.simulator.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
                )
                digest = hashlib.blake2b(dumped.encode("utf-8"), digest_size=16).hexdigest()
                simulator = f"{endpoint.base_url}:{digest}"
            keys[model] = simulator
        else:
            keys[model] = endpoint.base_url
    return keys


class RunCache:
    """One run's view of the response cache: what to look up for a row, and what to store."""

    def __init__(
        self,
        cache: Responses,
        *,
        plans: Mapping[str, TierPlan],
        endpoints: Mapping[str, str],
    ) -> None:
        self.cache = cache
        self.plans = dict(plans)
        self.endpoints = dict(endpoints)

    @classmethod
    def for_job(
        cls,
        job: Job,
        *,
        no_cache: bool = False,
        refresh_cache: bool = False,
        lookup_only: bool = False,
    ) -> RunCache | None:
        """The run's cache as the job and the command line set it; None when it is off.

        `lookup_only` (`plan`): it never writes, not even a new file; None if there is none.
        """
        settings = cache_settings(job.config.cache, no_cache=no_cache, refresh_cache=refresh_cache)
        if lookup_only:
            settings = settings.model_copy(update={"write": False})
        cache = ResponseCache.from_config(settings, base_dir=Path(job.base_dir))
        if not cache.is_active or (lookup_only and not cache.path.is_file()):
            return None
        return cls(cache, plans=plan_tiers(job.config), endpoints=endpoint_keys(job.config))

    @property
    def reads(self) -> bool:
        return self.cache.read

    def open(self) -> None:
        """Open the file: a file that cannot be used stops the run here, before any request."""
        self.cache.open()

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> RunCache:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _plan(self, tier: str) -> TierPlan:
        # As the dispatcher does: a tier the job does not map goes where unmatched rows go.
        return self.plans.get(tier) or self.plans["standard"]

    def key(self, model: str, body: Mapping[str, Any], messages: Any) -> bytes:
        """The key of the request the walk sends `model`: its body with the row's messages."""
        request = dict(body)
        request["messages"] = messages
        return request_key(self.endpoints[model], request)

    def lookup(self, tiers: Sequence[str], messages: Sequence[Any]) -> list[Hit | None]:
        """Per row, the cached answer of its chain's first model, or None; one `get_many`.

        Only the first model: it is the request the walk sends first. A fallback's answer is
        looked up by the walk (`get`), only when the row does fall back. A tier with checks
        (`verify`) is never served from the cache: its answers must pass this run's checks.
        """
        return self.lookup_keyed(tiers, messages)[0]

    def lookup_keyed(
        self, tiers: Sequence[str], messages: Sequence[Any]
    ) -> tuple[list[Hit | None], list[bytes]]:
        """`lookup`, with each row's key for its chain's first model: a row that is sent
        carries it (`RowRequest.cache_key`), so its answer is stored without hashing again."""
        keys: list[bytes] = []
        plans: list[TierPlan] = []
        for tier, row_messages in zip(tiers, messages, strict=True):
            plan = self._plan(tier)
            plans.append(plan)
            first = plan.chain[0]
            keys.append(self.key(first, plan.bodies[first], row_messages))
        answers = self.cache.get_many(keys)
        hits: list[Hit | None] = [
            None if answer is None or plan.verifier else (0, plan.chain[0], answer)
            for plan, answer in zip(plans, answers, strict=True)
        ]
        return hits, keys

    def get(self, model: str, body: Mapping[str, Any], messages: Any) -> CachedAnswer | None:
        """The stored answer to the request the walk is about to send `model`, or None."""
        if not self.cache.read:
            return None
        return self.cache.get(self.key(model, body, messages))

    def store(
        self,
        model: str,
        body: Mapping[str, Any],
        messages: Any,
        completion: Completion,
        *,
        key: bytes | None = None,
    ) -> None:
        """Keep an answer the policy accepted; `put` itself refuses a truncated or filtered one.

        An answer without reported usage is not kept: a hit's list cost comes from its usage.
        `key`: this request's key when the caller has it already (`lookup_keyed`).
        """
        if not self.cache.write or not completion.has_usage or completion.content is None:
            return
        self.cache.put(
            key if key is not None else self.key(model, body, messages),
            CachedAnswer(
                content=completion.content,
                finish_reason=completion.finish_reason or "",
                model=str(body.get("model", model)),
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                cached_tokens=completion.cached_tokens,
                reasoning_tokens=completion.reasoning_tokens,
            ),
        )

    def outcome(self, tier: str, hit: Hit) -> RowOutcome:
        """The result of a row the cache answered: ok, no attempt, nothing new paid."""
        position, model, answer = hit
        now = datetime.now(UTC)
        return RowOutcome(
            status=Status.OK,
            model_requested=self._plan(tier).chain[0],
            model_used=model,
            attempts=0,
            fallback_depth=position,
            content=answer.content,
            finish_reason=answer.finish_reason,
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            cached_tokens=answer.cached_tokens,
            reasoning_tokens=answer.reasoning_tokens,
            started_at=now,
            finished_at=now,
            cache_hit=True,
        )
