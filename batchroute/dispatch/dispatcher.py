"""The dispatcher: a run's one door to the models, `dispatch(row) -> RowOutcome`.

It joins the three parts of this package: the fleet of models and what rows share (`fleet.py`),
each row's way through its chain (`walk.py`), and the failure taxonomy the walk follows
(`policy.py`, one short table). What a known model accepts is `params.py`'s; pacing is
`limits.py`'s; the SDK edge is `client.py`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from batchroute.config import Job, JobConfig
from batchroute.dispatch.fleet import Fleet, ModelState
from batchroute.dispatch.limits import ModelLimiter
from batchroute.dispatch.policy import Action
from batchroute.dispatch.rows import (
    AttemptRecord,
    EscalationHook,
    EscalationProgress,
    RowOutcome,
    RowRequest,
)
from batchroute.dispatch.walk import AnswerCache, RowWalk, TierPlan, plan_tiers
from batchroute.errors import RunAbortedError
from batchroute.pricing.budget import Budget
from batchroute.pricing.prices import PriceTable

__all__ = ["Action", "AttemptRecord", "Dispatcher", "RowOutcome", "RowRequest"]


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
        cache: AnswerCache | None = None,
        resumed: Mapping[str, EscalationProgress] | None = None,
        on_escalate: EscalationHook | None = None,
    ) -> None:
        """`resumed`: by row key, the climbs an earlier session made durable; `on_escalate`:
        makes a climbing row's attempts durable (see `walk.RowWalk`). Without the hook a climb
        is made durable only with the row's outcome."""
        self.config = job.config if isinstance(job, Job) else job
        self.resumed: Mapping[str, EscalationProgress] = resumed or {}
        self.on_escalate = on_escalate
        self.cache = cache
        """The response cache: fallbacks are looked up in it, accepted answers stored."""
        self.prices = prices
        self.budget = budget if budget is not None else Budget(None)
        self.fleet = Fleet(
            self.config, prices=prices, budget=self.budget, base_urls=dict(base_urls or {})
        )
        self.rows_done = 0
        self._plans: dict[str, TierPlan] = plan_tiers(self.config)

    def __repr__(self) -> str:
        return (
            f"<Dispatcher {self.config.name!r} [rows done: {self.rows_done}] "
            f"{self.fleet!r} {self.budget!r}>"
        )

    @property
    def abort(self) -> RunAbortedError | None:
        """Set when the run cannot go on; later rows come back skipped_aborted at once."""
        return self.fleet.abort

    @property
    def warnings(self) -> list[str]:
        """What the operator must hear: a model gone for the run, spend past the forecast."""
        return self.fleet.warnings

    @property
    def models(self) -> dict[str, ModelState]:
        return self.fleet.models

    @property
    def limiters(self) -> dict[str, ModelLimiter]:
        return self.fleet.limiters

    @property
    def attempts_sent(self) -> int:
        return self.fleet.attempts_sent

    def stop(self) -> None:
        """No new request leaves; rows not yet sent come back skipped_interrupted."""
        self.fleet.stop()

    async def __aenter__(self) -> Dispatcher:
        self.fleet.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.fleet.close()

    async def dispatch(self, row: RowRequest, *, durable_climb: bool = True) -> RowOutcome:
        """Answer one row by walking its tier's chain; never raises for a row-level problem.

        `durable_climb=False`: the caller holds earlier attempts of the row (the Batch API's) that
        the row's outcome must carry, so its climb is made durable only with that outcome.
        """
        durable_climb = durable_climb and self.on_escalate is not None
        # A tier the job does not map goes where unmatched rows go (`standard` is required).
        plan = self._plans.get(row.tier) or self._plans["standard"]
        try:
            return await RowWalk(
                self.fleet,
                plan,
                row,
                self.cache,
                plans=self._plans,
                resume=self.resumed.get(row.row_key) if durable_climb and self.resumed else None,
                on_escalate=self.on_escalate if durable_climb else None,
            ).run()
        finally:
            self.rows_done += 1
