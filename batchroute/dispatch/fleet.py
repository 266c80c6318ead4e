"""The fleet: every model a run may call, with its client, limiter, probe and run-wide state.

The fleet is what rows share. It opens one AsyncOpenAI client per endpoint and one limiter per
model, knows which models are gone for the run, whether the run aborted or is stopping, and what
the operator must be told (`warnings`). A row's own way through its chain is `walk.py`'s; the
walk uses only the public side of this module, and nothing here knows of walks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import anyio
import openai

from batchroute.config import EndpointConfig, JobConfig
from batchroute.dispatch.client import Completion, make_client, resolve_api_key
from batchroute.dispatch.limits import ModelLimiter
from batchroute.dispatch.rows import RowRequest
from batchroute.errors import RunAbortedError
from batchroute.pricing.budget import Budget
from batchroute.pricing.costs import FloatRates
from batchroute.pricing.forecast import is_overrun, tier_output_tokens
from batchroute.pricing.prices import PriceTable

__all__ = ["PROBE_WAIT_S", "Fleet", "ModelState", "Probe"]

PROBE_WAIT_S: Final = 5.0
"""How long other rows wait for an endpoint's first answer before sending anyway."""
OVERRUN_MIN_ROWS: Final = 20
"""Answered rows before the overrun is judged (a few early rows prove nothing)."""

logger = logging.getLogger("batchroute")


class Probe:
    """Holds an endpoint's (or a model's) other rows until its first request is answered.

    An invalid key or a retired model then costs one request, not a whole concurrency's worth.
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
        """The first request was answered: let everyone through."""
        self.open = True
        self._event.set()


@dataclass(slots=True)
class ModelState:
    """Everything dispatch needs about one model, resolved once when the fleet opens."""

    name: str
    api_model: str
    endpoint: str
    limiter: ModelLimiter
    context_window: int | None
    client: openai.AsyncOpenAI
    endpoint_probe: Probe
    rates: FloatRates | None
    """The model's price in fast form, for the budget; None when it has no price."""
    probe: Probe = field(default_factory=Probe)
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
        """The cost of an answer from its reported usage (0 for an unpriced model)."""
        if self.rates is None:
            return 0.0
        return self.rates.usage_usd(
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cached_tokens=completion.cached_tokens,
            reasoning_tokens=completion.reasoning_tokens,
        )


class Fleet:
    """The models of one run and what they share; open it inside the running event loop."""

    def __init__(
        self,
        config: JobConfig,
        *,
        prices: PriceTable,
        budget: Budget,
        base_urls: Mapping[str, str],
    ) -> None:
        self.config = config
        self.prices = prices
        self.budget = budget
        self.base_urls = dict(base_urls)
        self.models: dict[str, ModelState] = {}
        self.limiters: dict[str, ModelLimiter] = {}
        self.abort: RunAbortedError | None = None
        """Set when the run cannot go on; later rows come back skipped_aborted at once."""
        self.stopping = False
        """Set by `stop`: no new request leaves."""
        self.warnings: list[str] = []
        """What the operator must hear about: a model gone for the run, spend past the forecast."""
        self.attempts_sent = 0
        self.forecast_usd = 0.0
        """What the forecast (plan.parquet) priced the answered rows at: each on its tier's
        model, with its estimated prompt and the tier's expected output tokens."""
        self.spent_usd = 0.0
        """What the answered rows cost, on the models that answered them."""
        self._answered = 0
        self._fallback_answers = 0
        self._forecast_rates: dict[str, tuple[str, FloatRates | None, int]] = {}
        for tier in config.tiers:
            model = config.tier(tier).model
            price = prices.get(model)
            rates = FloatRates.of(price) if price is not None else None
            self._forecast_rates[tier] = (model, rates, tier_output_tokens(config, tier))
        self._overrun_warned = False
        self._stopped = anyio.Event()
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._reachable: tuple[str, ...] = tuple(
            dict.fromkeys(m for tier in config.tiers for m in config.chain(tier))
        )

    def __repr__(self) -> str:
        cooling = [name for name, limiter in self.limiters.items() if limiter.is_cooling()]
        unavailable = [name for name, model in self.models.items() if model.unavailable]
        in_flight = sum(limiter.in_flight for limiter in self.limiters.values())
        return (
            f"<Fleet [attempts: {self.attempts_sent}, in flight: {in_flight}, "
            f"cooling: {cooling}, unavailable: {unavailable}, aborted: {self.abort is not None}, "
            f"stopping: {self.stopping}, warnings: {len(self.warnings)}]>"
        )

    def open(self) -> None:
        """Create the clients and limiters (inside the running loop)."""
        config = self.config
        endpoints: dict[str, EndpointConfig] = {}
        for name in config.models:
            endpoints[config.models[name].endpoint or "endpoint"] = config.endpoint_for(name)
        # Every key is resolved before any client exists, so a missing one leaks nothing.
        api_keys = {
            key: resolve_api_key(endpoint, name=key if key == "endpoint" else f"endpoints.{key}")
            for key, endpoint in endpoints.items()
        }
        probes: dict[str, Probe] = {}
        for key, endpoint in endpoints.items():
            base_url = self.base_urls.get(endpoint.base_url, endpoint.base_url)
            if endpoint.is_simulator and base_url == endpoint.base_url:
                raise ValueError(
                    "base_url 'simulator' needs the running simulator's URL in base_urls"
                )
            concurrency = sum(
                m.max_concurrency
                for m in config.models.values()
                if (m.endpoint or "endpoint") == key
            )
            self._clients[key] = make_client(
                endpoint, base_url=base_url, api_key=api_keys[key], max_connections=concurrency + 16
            )
            probes[key] = Probe()
        for name, model_cfg in config.models.items():
            price = self.prices.get(name)
            limiter = ModelLimiter(
                name,
                rpm=model_cfg.rpm,
                tpm=model_cfg.tpm,
                max_concurrency=model_cfg.max_concurrency,
            )
            self.limiters[name] = limiter
            key = model_cfg.endpoint or "endpoint"
            window = model_cfg.context_window
            if window is None and price is not None:
                window = price.context_window
            self.models[name] = ModelState(
                name=name,
                api_model=config.api_model(name),
                endpoint=key,
                limiter=limiter,
                context_window=window,
                client=self._clients[key],
                endpoint_probe=probes[key],
                rates=FloatRates.of(price) if price is not None else None,
            )

    async def close(self) -> None:
        """Close every client (shielded: it runs while the run is being cancelled too)."""
        with anyio.CancelScope(shield=True):
            for client in self._clients.values():
                await client.close()

    def stop(self) -> None:
        """No new request leaves: rows waiting on a limiter or a backoff give up at once."""
        if self.stopping:
            return
        self.stopping = True
        self._stopped.set()
        for limiter in self.limiters.values():
            limiter.close()

    async def sleep(self, seconds: float) -> None:
        """Sleep, unless the fleet stops first."""
        with anyio.move_on_after(seconds):
            await self._stopped.wait()

    def mark_unavailable(self, model: ModelState, reason: str) -> None:
        """A model answered 404: skip it for the rest of the run, warn, abort if none is left."""
        if model.unavailable is not None:
            return
        model.unavailable = reason
        config = self.config
        tiers = [tier for tier in config.tiers if model.name in config.chain(tier)]
        self._warn(
            f"model {model.name} is gone for this run ({reason}); rows of the tier(s) "
            f"{', '.join(tiers)} that would use it fall back along their chains"
        )
        if self.abort is None and all(self.models[m].unavailable for m in self._reachable):
            names = ", ".join(self._reachable)
            self.abort = RunAbortedError(
                f"every model of this job is unavailable ({names} answered 404 model not found); "
                "check the model names (models.*.api_model) and the endpoint's base_url",
                model=model.name,
                status_code=404,
            )

    def abort_for_auth(self, model: ModelState, status_code: int | None) -> None:
        """A 401/403: the key is wrong or lacks access; the run stops."""
        if self.abort is not None:
            return
        endpoint = self.config.endpoint_for(model.name)
        variable = endpoint.api_key_env or "(no key variable)"
        what = "refused the API key" if status_code == 401 else "denied permission"
        self.abort = RunAbortedError(
            f"the endpoint for {model.name} {what} (HTTP {status_code}); check the key in "
            f"the environment variable {variable} and its access to this model",
            model=model.name,
            status_code=status_code,
        )

    def count_answer(self, row: RowRequest, used: ModelState, completion: Completion) -> None:
        """Add an answered row's spend and forecast; warn once if spend overruns the forecast.

        The row's forecast is its share of plan.parquet's (`pricing.forecast`): its tier's model
        priced on its estimated prompt and the tier's expected output tokens, so the running
        comparison is the same one the report makes at the end, row by row.
        """
        tier = row.tier if row.tier in self._forecast_rates else "standard"
        requested, rates, output_tokens = self._forecast_rates[tier]
        if rates is not None:
            self.forecast_usd += rates.usage_usd(
                input_tokens=row.prompt_tokens, output_tokens=output_tokens
            )
        cost = completion.cost_usd
        self.spent_usd += used.actual_cost(completion) if cost is None else cost
        self._answered += 1
        if used.name != requested:
            self._fallback_answers += 1
        threshold = self.config.run.warn_overrun_pct
        if (
            self._overrun_warned
            or self._answered < OVERRUN_MIN_ROWS
            or not is_overrun(self.spent_usd, self.forecast_usd, threshold_pct=threshold)
        ):
            return
        self._overrun_warned = True
        share = 100 * self.spent_usd / self.forecast_usd
        self._warn(
            f"spend is running past the forecast: the {self._answered} rows answered so far "
            f"cost ${self.spent_usd:.4f}, {share:.0f}% of their forecast "
            f"${self.forecast_usd:.4f}; {self._fallback_answers} of them were answered by a "
            f"fallback model (run.warn_overrun_pct: {threshold:g})"
        )

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning("%s", message)
