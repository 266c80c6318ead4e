"""A crash in the middle of an escalation: the row resumes at the tier it reached.

The cheap model's answers are always cut short (`truncate_rate: 1`), so every bulk row fails
`not_truncated` and climbs to standard. The first session crashes on its Nth request to the
standard model (an exception thrown out of the request, like a process dying mid-request); the
second resumes. Every request goes through the real AsyncOpenAI client over loopback to the
embedded simulator; the test wraps `send_chat` only to see which model was asked for which row.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.dispatch import walk
from batchroute.dispatch.client import Reply
from tests.conftest import sample_rows

JobFactory = Callable[..., Path]

ROWS = 12
CRASH_AT = 6
"""The first session dies sending its 6th request to the standard model."""
ALWAYS_CUT: dict[str, Any] = {"seed": 3, "models": {"small": {"truncate_rate": 1.0}}}
VERIFY: dict[str, Any] = {"default": ["not_truncated"], "max_escalations": 2}
COMPARED = [
    "id",
    "status",
    "model_used",
    "content",
    "verified",
    "verify_failures",
    "escalated_from",
    "escalation_depth",
    "answered_tier",
    "attempts",
    "fallback_depth",
    "input_tokens",
    "output_tokens",
    "failed_input_tokens",
    "failed_output_tokens",
    "cost_usd",
    "failed_cost_usd",
    "error_type",
]


class _Crash(BaseException):
    """The process dies: nothing after it runs as a normal exit would."""


def _row_of(body: Mapping[str, Any]) -> int:
    return _case(body["messages"][-1]["content"])


def _case(text: str) -> int:
    match = re.search(r"\(case (\d+)\)", text)
    assert match, text
    return int(match.group(1))


def _record_requests(
    monkeypatch: pytest.MonkeyPatch, *, crash_at: int | None
) -> list[tuple[str, int]]:
    """Every request's (model, row) from here on; with `crash_at`, die on that request to mid."""
    sent: list[tuple[str, int]] = []
    real = walk.send_chat

    async def observed(client: Any, body: Mapping[str, Any]) -> Reply:
        sent.append((body["model"], _row_of(body)))
        if crash_at is not None and sum(model == "mid" for model, _ in sent) == crash_at:
            raise _Crash
        return await real(client, body)

    monkeypatch.setattr(walk, "send_chat", observed)
    return sent


def _job(make_job: JobFactory) -> Path:
    rows = [{**row, "tier": "bulk"} for row in sample_rows(ROWS)]
    return make_job(
        rows,
        simulator=ALWAYS_CUT,
        verify=VERIFY,
        request={"max_tokens": 200},
        run={"max_in_flight": 4},
    )


def _run(*args: str) -> int:
    result = CliRunner().invoke(main, ["run", *args, "--no-cache"], catch_exceptions=False)
    return result.exit_code


def test_a_row_caught_mid_escalation_resumes_at_the_tier_it_reached(
    make_job: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(make_job)
    whole_dir = Path("runs/whole")
    with monkeypatch.context() as patch:
        _record_requests(patch, crash_at=None)
        assert _run(str(job), "--run-dir", str(whole_dir)) == 0
    whole = pl.read_parquet(whole_dir / "results.parquet")
    assert (whole["escalation_depth"] == 1).all() and whole["verified"].all()

    with monkeypatch.context() as patch:
        first = _record_requests(patch, crash_at=CRASH_AT)
        with pytest.raises(BaseException) as crash:  # _Crash, or a task group holding it
            _run(str(job))
        if isinstance(crash.value, BaseExceptionGroup):
            assert crash.group_contains(_Crash)
        else:
            assert crash.type is _Crash
    # a row's standard request leaves only once its climb is durable
    climbed = {row for model, row in first if model == "mid"}
    assert len(climbed) == CRASH_AT
    with monkeypatch.context() as patch:
        second = _record_requests(patch, crash_at=None)
        assert _run(str(job)) == 0

    asked_small = [row for model, row in first + second if model == "small"]
    assert set(asked_small) == set(range(ROWS))
    for row in climbed:  # a climb made durable is never started again from the rejected tier
        assert asked_small.count(row) == 1, row
    again_small = {row for model, row in second if model == "small"} & {r for _, r in first}
    assert len(again_small) <= 4, "only the rows in flight at the crash are asked again"
    resumed = {row for model, row in second if model == "mid"} & climbed
    assert resumed, "some rows were caught mid-escalation and resumed at standard"

    again = pl.read_parquet("runs/t/results.parquet")
    assert again.select(COMPARED).equals(whole.select(COMPARED))
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    whole_attempts = pl.read_parquet(whole_dir / "attempts.parquet")
    rejected = attempts.filter(pl.col("verify") == "failed")
    assert rejected.height == ROWS  # each rejected answer recorded (and so costed) once
    assert sorted(attempts["attempt"].to_list()) == sorted(whole_attempts["attempt"].to_list())
    spend = again["cost_usd"].sum() + again["failed_cost_usd"].sum()
    assert spend == attempts["cost_usd"].sum() == whole_attempts["cost_usd"].sum()
    savings = pl.read_parquet("runs/t/savings.parquet").row(0, named=True)
    whole_savings = pl.read_parquet(whole_dir / "savings.parquet").row(0, named=True)
    for figure in (
        "total_cost_usd",
        "failed_cost_usd",
        "verify_rejected_cost_usd",
        "escalation_cost_usd",
        "escalated_rows",
    ):
        assert savings[figure] == whole_savings[figure], figure


SLOW_MID_MS = 1500


def asked(model: str, log: list[dict[str, str | None]]) -> list[int]:
    """The rows a model was asked, in order, from the simulator's request log."""
    return [_case(str(request["prompt"])) for request in log if request["model"] == model]


@pytest.mark.slow
def test_kill_9_mid_escalation_neither_re_asks_the_rejected_tier_nor_re_buys_a_verified_answer(
    tmp_path: Path,
) -> None:
    """kill -9 of a real `batchroute run` while rows wait on the standard tier, then a rerun.

    The simulator's own request log says which model was asked for which row: the killed
    session's climbs resume at standard (small is never asked again for them), rows whose
    verified answer was durable are not asked at all, and the results and cost report equal an
    uninterrupted run's. Only the standard requests in flight at the kill are bought twice.
    """
    from batchroute.sim import SimConfig, SimulatorProcess
    from tests.test_cron import Cron, wait_until

    config = SimConfig.model_validate(
        {
            "seed": 3,
            "log_requests": True,
            "models": {"small": {"truncate_rate": 1.0}, "mid": {"latency_ms": SLOW_MID_MS}},
        }
    )
    rows = [{**row, "tier": "bulk"} for row in sample_rows(ROWS)]
    with SimulatorProcess(config) as server:
        cron = Cron(tmp_path, server.base_url)
        # 16 slots shared by 4 tiers: 4 bulk rows at a time, so they climb in waves of 4
        cron.write_job(rows, max_in_flight=16, verify=VERIFY, request={"max_tokens": 200})
        code, _, err = cron.run("--no-cache", "--run-dir", "runs/whole")
        assert code == 0, err
        server.reset()

        def mid_requests() -> int:
            return len(asked("mid", server.requests()))

        first = cron.start("--no-cache")
        wait_until(lambda: mid_requests() >= 8, proc=first)  # the second wave waits on mid
        time.sleep(0.3)  # the first wave's answers (1.5 s before) are durable by now
        first.send_signal(signal.SIGKILL)
        assert cron.finish(first)[0] == -signal.SIGKILL
        killed = server.requests()
        code, _, err = cron.run("--no-cache")
        assert code == 0, err
        resumed = server.requests()[len(killed) :]

    climbed = set(asked("mid", killed))
    assert len(climbed) >= 8
    small = asked("small", killed + resumed)
    for row in climbed:
        assert small.count(row) == 1, f"row {row}: the rejected tier was asked again"
    untouched = set(range(ROWS)) - set(asked("mid", resumed)) - set(asked("small", resumed))
    assert len(untouched) >= 4, "the first wave's verified answers were not bought again"
    assert untouched <= climbed
    bought_twice = set(asked("mid", killed)) & set(asked("mid", resumed))
    assert len(bought_twice) <= 4, "only the standard requests in flight at the kill"
    session = cron.manifest()["sessions"][-1]
    assert session["reused_rows"] == len(untouched)

    whole = cron.results(Path("runs/whole"))
    again = cron.results()
    assert again.select(COMPARED).equals(whole.select(COMPARED))
    run_dir, whole_dir = tmp_path / "runs/t", tmp_path / "runs/whole"
    attempts = pl.read_parquet(run_dir / "attempts.parquet")
    assert attempts.filter(pl.col("verify") == "failed").height == ROWS
    savings = pl.read_parquet(run_dir / "savings.parquet").row(0, named=True)
    whole_savings = pl.read_parquet(whole_dir / "savings.parquet").row(0, named=True)
    for figure in ("total_cost_usd", "failed_cost_usd", "verify_rejected_cost_usd"):
        assert savings[figure] == whole_savings[figure], figure
    assert savings["total_cost_usd"] == attempts["cost_usd"].sum()
