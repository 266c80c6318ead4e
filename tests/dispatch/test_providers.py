"""Providers as they really behave (issue 15): 429s, signals, strict parameters, retired models.

Through the real AsyncOpenAI client over loopback, to a scripted server or the simulator. No
assertion reads a duration: orderings and server-side counts say what happened.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from batchroute.dispatch import Dispatcher, RowOutcome
from batchroute.dispatch.params import check_job
from batchroute.pricing.prices import resolve_prices
from batchroute.schema import ErrorType, Status
from batchroute.sim import LocalSimulator, SimConfig
from tests.dispatch.test_dispatcher import (
    OK,
    ScriptedServer,
    Spec,
    _answer,
    always,
    make_job,
    row,
    scripted,
)


def test_a_stray_429_delays_only_its_own_row() -> None:
    """One 429 with a long retry-after: the other rows go on; the model never pauses."""
    job = make_job(models={"a": {"max_concurrency": 4}, "b": {}})

    def script(n: int) -> Spec:
        if n == 2:
            return (
                429,
                {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
                {"retry-after-ms": "1500"},
            )
        return OK

    async def main() -> tuple[list[RowOutcome], Dispatcher]:
        async with ScriptedServer({"a": script}) as server:
            dispatcher = Dispatcher(
                job, prices=resolve_prices(job), base_urls={"simulator": server.base_url}
            )
            outcomes: list[RowOutcome] = []
            async with dispatcher:
                outcomes.append(await dispatcher.dispatch(row(0)))  # opens the model's probe

                async def one(i: int) -> None:
                    outcomes.append(await dispatcher.dispatch(row(i)))

                async with anyio.create_task_group() as group:
                    for i in range(1, 13):
                        group.start_soon(one, i)
            return outcomes, dispatcher

    outcomes, dispatcher = anyio.run(main)
    assert [o.status for o in outcomes] == [Status.OK] * 13
    limited = [o for o in outcomes if o.attempts == 2]
    assert len(limited) == 1
    retry_at = limited[0].attempt_records[1].started_at
    others = [o.attempt_records[0].started_at for o in outcomes if o.attempts == 1]
    assert max(others) < retry_at, "every other row was sent before the limited row's retry"
    limiter = dispatcher.limiters["a"]
    assert limiter.pauses == 0
    assert limiter.rate_limited_count == 1


def test_a_stopped_dispatcher_sends_nothing_more() -> None:
    """Rows waiting on the limiter come back skipped_interrupted; the server saw only one."""
    job = make_job(models={"a": {"rpm": 30, "fallback": "b"}, "b": {}})

    async def main() -> tuple[list[RowOutcome], int]:
        async with ScriptedServer({"a": always(OK)}) as server:
            dispatcher = Dispatcher(
                job, prices=resolve_prices(job), base_urls={"simulator": server.base_url}
            )
            outcomes: list[RowOutcome] = []
            answered = anyio.Event()
            async with dispatcher:

                async def one(i: int) -> None:
                    outcomes.append(await dispatcher.dispatch(row(i)))
                    answered.set()

                async with anyio.create_task_group() as group:
                    for i in range(6):
                        group.start_soon(one, i)
                    await answered.wait()
                    dispatcher.stop()
            return outcomes, sum(server.counts.values())

    outcomes, sent = anyio.run(main)
    statuses = sorted(o.status for o in outcomes)
    assert statuses == [Status.OK] + [Status.SKIPPED_INTERRUPTED] * 5
    assert sent == 1
    skipped = [o for o in outcomes if o.status == Status.SKIPPED_INTERRUPTED]
    assert all(o.attempts == 0 and o.error_type == ErrorType.INTERRUPTED for o in skipped)


def test_max_tokens_is_sent_as_the_field_a_reasoning_model_wants() -> None:
    job = make_job(
        models={"gpt-5-mini": {"fallback": "plain"}, "plain": {}},
        tiers={"standard": "gpt-5-mini"},
        request={"max_tokens": 77, "temperature": 0},
    )
    outcomes, _, server = scripted({}, job, [row(0)])
    assert outcomes[0].status == Status.OK
    body = server.bodies[0]
    assert body["max_completion_tokens"] == 77
    assert "max_tokens" not in body and "temperature" not in body
    notes = check_job(job.config)
    assert any("max_completion_tokens" in note for note in notes)
    assert any("temperature" in note and "gpt-5-mini" in note for note in notes)
    assert not any("plain" in note for note in notes)
    assert len(notes) == 2  # one note per change, naming the tiers it applies to


def test_a_strict_simulator_answers_a_reasoning_model_job_unchanged() -> None:
    """temperature 0 and max_tokens for gpt-5-mini: the simulator would refuse them, so the rows
    succeed only because batchroute translates."""
    job = make_job(
        models={"gpt-5-mini": {}, "o3": {}},
        tiers={"standard": "gpt-5-mini", "complex": "o3"},
        request={"max_tokens": 64, "temperature": 0},
    )

    async def main() -> list[RowOutcome]:
        async with LocalSimulator(SimConfig()) as sim:
            dispatcher = Dispatcher(
                job, prices=resolve_prices(job), base_urls={"simulator": sim.base_url}
            )
            async with dispatcher:
                return [
                    await dispatcher.dispatch(row(i, tier=t))
                    for i, t in enumerate(["standard", "complex"])
                ]

    assert [o.status for o in anyio.run(main)] == [Status.OK, Status.OK]


def test_error_message_carries_the_providers_message() -> None:
    said = "Invalid 'messages[0].content': string too long. Expected at most 10 characters."
    spec: Spec = (
        400,
        {
            "error": {
                "message": said,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "string_above_max_length",
            }
        },
        {},
    )
    outcomes, _, _ = scripted({"a": always(spec)}, make_job(), [row(0)])
    outcome = outcomes[0]
    assert outcome.error_type == ErrorType.BAD_REQUEST
    assert outcome.error_message is not None
    assert said in outcome.error_message
    assert "string_above_max_length" in outcome.error_message
    assert "param messages" in outcome.error_message


def test_a_retired_model_warns_and_so_does_the_costly_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = make_job(
        models={
            "cheap": {"input_per_mtok": 0.1, "output_per_mtok": 0.2, "fallback": "dear"},
            "dear": {"input_per_mtok": 10, "output_per_mtok": 20},
        },
        tiers={"standard": "cheap", "bulk": "cheap"},
    )
    gone: Spec = (
        404,
        {"error": {"message": "The model `cheap` does not exist", "code": "model_not_found"}},
        {},
    )
    scripts: Mapping[str, Any] = {"cheap": always(gone)}
    with caplog.at_level(logging.WARNING, logger="batchroute"):
        outcomes, dispatcher, _ = scripted(scripts, job, [row(i) for i in range(30)])
    assert all(o.status == Status.OK and o.model_used == "dear" for o in outcomes)
    warnings = dispatcher.warnings
    assert len(warnings) == 2
    assert "cheap is gone for this run" in warnings[0]
    assert "standard, bulk" in warnings[0]
    assert "spend is running past the forecast" in warnings[1]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == warnings


def _usage(prompt_tokens: int, completion_tokens: int) -> Spec:
    answer = _answer()
    answer["usage"] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return (200, answer, {})


def test_answers_far_longer_than_forecast_warn_without_any_fallback() -> None:
    """The overrun is judged against the forecast (expected output), not the tier's own model."""
    job = make_job(models={"a": {}}, tiers={"standard": "a"})
    outcomes, dispatcher, _ = scripted(
        {"a": always(_usage(10, 2000))}, job, [row(i) for i in range(25)]
    )
    assert all(o.status == Status.OK and o.model_used == "a" for o in outcomes)
    (warning,) = dispatcher.warnings
    assert "spend is running past the forecast" in warning
    assert "0 of them were answered by a fallback model" in warning
    fleet = dispatcher.fleet
    # each row forecast at its prompt estimate plus the 64 tokens of output it may use
    forecast = sum(1e-6 * row(i).prompt_tokens + 2e-6 * 64 for i in range(25))
    assert fleet.forecast_usd == pytest.approx(forecast)
    assert fleet.spent_usd == pytest.approx(25 * (1e-6 * 10 + 2e-6 * 2000))


def test_a_dearer_fallback_within_the_forecast_does_not_warn() -> None:
    """Short answers on a dearer fallback still cost less than the forecast: no alarm."""
    job = make_job(
        models={"a": {"fallback": "b"}, "b": {"input_per_mtok": 3, "output_per_mtok": 6}},
        tiers={"standard": "a"},
    )
    gone: Spec = (404, {"error": {"message": "no such model", "code": "model_not_found"}}, {})
    outcomes, dispatcher, _ = scripted(
        {"a": always(gone), "b": always(_usage(10, 5))}, job, [row(i) for i in range(25)]
    )
    assert all(o.status == Status.OK and o.model_used == "b" for o in outcomes)
    assert len(dispatcher.warnings) == 1 and "a is gone for this run" in dispatcher.warnings[0]
    assert dispatcher.fleet.spent_usd < dispatcher.fleet.forecast_usd
