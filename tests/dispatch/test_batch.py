"""Batch mode end to end: the real AsyncOpenAI client, over loopback, against the simulator's
`/v1/files` and `/v1/batches`, through `batchroute run` — every ending, a kill, and --no-wait."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.config import load_job
from batchroute.dispatch.batch import SPOOL_DIR, BatchRunner
from batchroute.dispatch.batchfiles import request_lines, split_files
from batchroute.exitcodes import ExitCode
from batchroute.pricing.budget import Budget
from batchroute.pricing.prices import resolve_prices
from batchroute.sim import EmbeddedSimulator
from batchroute.sim.config import SimConfig
from batchroute.store.batchledger import BatchLedger
from tests.conftest import sample_rows

FAST_BATCH = {"poll_initial_s": 0.05, "poll_max_s": 0.2}


def batch_job(**overrides: Any) -> dict[str, Any]:
    """Overrides for `make_job`: the bulk tier in batch mode, on a fast simulated clock."""
    sim = overrides.pop("sim_batch", {})
    job: dict[str, Any] = {
        "tiers": {
            "complex": "big",
            "standard": "mid",
            "structured": {
                "model": "mid",
                "request": {"params": {"response_format": {"type": "json_object"}}},
            },
            "bulk": {"model": "small", "mode": "batch"},
        },
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25, "fallback": "mid"},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15, "fallback": "big"},
            "small": {
                "input_per_mtok": 0.27,
                "output_per_mtok": 1.1,
                "batch_discount": 0.5,
                "fallback": "mid",
            },
        },
        "batch": {**FAST_BATCH, **overrides.pop("batch", {})},
        "simulator": {"seed": 3, "batch": {"completion_s": 0.1, **sim}},
    }
    job.update(overrides)
    return job


def bulk_rows(count: int, *, online: int = 0) -> list[dict[str, Any]]:
    rows = sample_rows(count + online)
    for row in rows[:count]:
        row["tier"] = "bulk"
    for row in rows[count:]:
        row["tier"] = "standard"
    return rows


def run(*args: str) -> int:
    result = CliRunner().invoke(main, ["run", *args, "--quiet"])
    assert "Traceback" not in result.output, result.output
    return result.exit_code


def results(tmp_path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    run_dir = tmp_path / "runs" / "t"
    return (
        pl.read_parquet(run_dir / "results.parquet"),
        pl.read_parquet(run_dir / "attempts.parquet"),
    )


def test_batch_tier_answered_at_the_batch_price(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = make_job(bulk_rows(12, online=4), **batch_job())
    assert run(str(job)) == ExitCode.OK
    res, attempts = results(tmp_path)
    assert res.height == 16 and (res["status"] == "ok").all()
    bulk = res.filter(pl.col("tier") == "bulk")
    assert bulk["batch"].all() and not res.filter(pl.col("tier") != "bulk")["batch"].any()
    # half price, exactly: (input × 0.135 + output × 0.55) / 1M
    expected = (
        bulk["input_tokens"].cast(pl.Decimal(38, 12)) * Decimal("0.135")
        + bulk["output_tokens"].cast(pl.Decimal(38, 12)) * Decimal("0.55")
    ) / 1_000_000
    assert bulk["cost_usd"].to_list() == expected.to_list()
    assert attempts.filter(pl.col("batch")).height == 12
    savings = pl.read_parquet(tmp_path / "runs" / "t" / "savings.parquet")
    online_cost = (
        bulk["input_tokens"].cast(pl.Decimal(38, 12)) * Decimal("0.27")
        + bulk["output_tokens"].cast(pl.Decimal(38, 12)) * Decimal("1.1")
    ).sum() / 1_000_000
    assert savings["batch_saving_usd"][0] == online_cost - bulk["cost_usd"].sum()
    assert savings["batch_rows"][0] == 12


def test_the_terminal_report_shows_batch_modes_saving(make_job: Callable[..., Path]) -> None:
    result = CliRunner().invoke(main, ["run", str(make_job(bulk_rows(4), **batch_job()))])
    assert result.exit_code == ExitCode.OK
    assert "Batch mode: 4 rows answered through the Batch API saved $" in result.stdout


def test_answers_map_back_by_custom_id_not_line_order(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    """The simulator shuffles output lines; each row still gets the answer to its own prompt."""
    rows = bulk_rows(20)
    job = make_job(rows, **batch_job())
    assert run(str(job)) == ExitCode.OK
    batched = results(tmp_path)[0].select("id", "content")
    online = make_job(rows, **batch_job(tiers={"standard": "small", "bulk": "small"}))
    assert run(str(online), "--fresh") == ExitCode.OK
    runs = sorted((tmp_path / "runs").glob("t*"), key=lambda p: p.stat().st_mtime)
    answered = pl.read_parquet(runs[-1] / "results.parquet").select("id", "content")
    assert batched.sort("id").equals(answered.sort("id"))


def test_retryable_line_errors_are_resubmitted(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = make_job(bulk_rows(30), **batch_job(sim_batch={"line_error_rate": 0.3}))
    assert run(str(job)) == ExitCode.OK
    res, attempts = results(tmp_path)
    assert (res["status"] == "ok").all() and res["batch"].all()
    retried = attempts.filter(pl.col("error_type") == "server_error")
    assert retried.height > 0 and (retried["action"] == "retry").all()
    assert res.filter(pl.col("attempts") > 1).height == retried["row_key"].n_unique()


def test_non_retryable_line_errors_fail_the_row_naming_the_line(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    sim = {"line_error_rate": 1.0, "line_error_status": 400}
    job = make_job(bulk_rows(5), **batch_job(sim_batch=sim))
    assert run(str(job)) == ExitCode.SOME_FAILED
    res, _ = results(tmp_path)
    assert (res["status"] == "failed").all() and (res["error_type"] == "bad_request").all()
    assert res["error_message"].str.contains(r"HTTP 400: batch batch_\w+ line \d").all()


def test_expired_batch_keeps_answers_and_resubmits_the_rest(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = make_job(bulk_rows(10), **batch_job(sim_batch={"endings": ["expired"]}))
    assert run(str(job)) == ExitCode.OK
    res, attempts = results(tmp_path)
    assert (res["status"] == "ok").all() and res["batch"].all()
    unanswered = attempts.filter(pl.col("error_type") == "unanswered")
    assert unanswered.height == 5  # done_fraction 0.5 of 10 lines
    assert res.filter(pl.col("attempts") == 2).height == 5
    ledger = BatchLedger(tmp_path / "runs" / "t").all()
    assert [s.status for s in ledger] == ["expired", "completed"]
    assert [len(s.row_keys) for s in ledger] == [10, 5]


def test_cancelled_past_the_resubmit_limit_goes_online(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = make_job(
        bulk_rows(10),
        **batch_job(sim_batch={"endings": ["cancelled", "cancelled"]}, batch={"max_resubmits": 1}),
    )
    assert run(str(job)) == ExitCode.OK
    res, attempts = results(tmp_path)
    assert (res["status"] == "ok").all()
    online = res.filter(~pl.col("batch"))
    assert online.height == 3  # 5 left by the first batch, 2 of them by the second
    assert (online["attempts"] == 3).all()
    history = attempts.filter(pl.col("row_key") == online["row_key"][0]).sort("attempt")
    assert history["batch"].to_list() == [True, True, False]
    assert history["action"].to_list() == ["retry", "fallback", "ok"]


def test_past_the_deadline_unanswered_rows_go_online(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = make_job(
        bulk_rows(10),
        **batch_job(sim_batch={"endings": ["expired"]}, batch={"deadline_h": 1e-9}),
    )
    assert run(str(job)) == ExitCode.OK
    res, _ = results(tmp_path)
    assert (res["status"] == "ok").all() and res.filter(~pl.col("batch")).height == 5


def test_failed_batch_names_the_line(make_job: Callable[..., Path], tmp_path: Path) -> None:
    job = make_job(bulk_rows(4), **batch_job(sim_batch={"endings": ["failed"]}))
    assert run(str(job)) == ExitCode.SOME_FAILED
    res, _ = results(tmp_path)
    assert (res["status"] == "failed").all()
    messages = res["error_message"].to_list()
    assert sum("at line 1, this row's" in m for m in messages) == 1
    assert all("failed validation at line 1" in m or "line 1, this row's" in m for m in messages)


def test_every_line_failed_has_no_output_file_and_does_not_crash(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    sim = {"endings": ["all_lines_failed"], "line_error_status": 400}
    job = make_job(bulk_rows(6), **batch_job(sim_batch=sim))
    assert run(str(job)) == ExitCode.SOME_FAILED
    res, _ = results(tmp_path)
    assert res.height == 6 and (res["error_type"] == "bad_request").all()


def test_no_wait_with_the_embedded_simulator_is_a_clear_error(
    make_job: Callable[..., Path],
) -> None:
    result = CliRunner().invoke(
        main, ["run", str(make_job(bulk_rows(3), **batch_job())), "--no-wait"]
    )
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "batchroute sim" in result.output and "Traceback" not in result.output


# -- against a simulator that outlives the run, as a provider does ----------------------------


@pytest.fixture
def provider() -> Iterator[EmbeddedSimulator]:
    config = SimConfig.model_validate({"seed": 5, "batch": {"completion_s": 1.5}})
    with EmbeddedSimulator(config) as sim:
        yield sim


@pytest.fixture
def sim_counts() -> Callable[[Path], dict[str, Any]]:
    def counts(base_url: Any) -> dict[str, Any]:
        url = str(base_url).removesuffix("/v1") + "/sim/batch-stats"
        with urllib.request.urlopen(url) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    return counts


def provider_job(make_job: Callable[..., Path], provider: EmbeddedSimulator, rows: int) -> Path:
    endpoint = {"base_url": provider.base_url, "api_key_env": None, "timeout_s": 10}
    return make_job(bulk_rows(rows, online=3), **batch_job(endpoint=endpoint))


def test_no_wait_submits_then_a_later_run_collects(
    make_job: Callable[..., Path],
    tmp_path: Path,
    provider: EmbeddedSimulator,
    sim_counts: Callable[[Any], dict[str, Any]],
) -> None:
    job = provider_job(make_job, provider, 8)
    assert run(str(job), "--no-wait") == ExitCode.SUBMITTED
    run_dir = tmp_path / "runs" / "t"
    assert not (run_dir / "results.parquet").exists()
    assert [s.state for s in BatchLedger(run_dir).all()] == ["open"]
    assert run(str(job)) == ExitCode.OK  # may poll a while: the batch takes 1.5 s
    res, _ = results(tmp_path)
    assert res.height == 11 and (res["status"] == "ok").all()
    assert res.filter(pl.col("batch")).height == 8
    assert sim_counts(provider.base_url) == {
        "batches_created": 1,
        "requests_submitted": 8,
        "custom_ids_submitted_more_than_once": 0,
    }


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_while_waiting_the_rerun_resubmits_nothing(
    make_job: Callable[..., Path],
    tmp_path: Path,
    provider: EmbeddedSimulator,
    sim_counts: Callable[[Any], dict[str, Any]],
    how: signal.Signals,
) -> None:
    """SIGKILL: a crash while waiting. SIGTERM: a clean stop (exit 5, the batch rows are
    skipped_interrupted). Either way the rerun polls the same batch."""
    job = provider_job(make_job, provider, 8)
    process = subprocess.Popen(
        [sys.executable, "-m", "batchroute", "run", str(job), "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    ledger = BatchLedger(tmp_path / "runs" / "t")
    deadline = time.monotonic() + 60
    while not any(s.state == "open" for s in ledger.all()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(how)
    code = process.wait()
    if how == signal.SIGTERM:
        assert code == ExitCode.INTERRUPTED
        stopped = pl.read_parquet(tmp_path / "runs" / "t" / "results.parquet")
        assert stopped.filter(pl.col("tier") == "bulk")["status"].unique().to_list() == [
            "skipped_interrupted"
        ]
        waiting = stopped.filter(pl.col("tier") == "bulk")["error_message"]
        assert waiting.str.contains("rerun the same command to collect it").all()
    assert sim_counts(provider.base_url)["batches_created"] == 1
    assert run(str(job)) == ExitCode.OK
    res, _ = results(tmp_path)
    assert res.height == 11 and (res["status"] == "ok").all()
    assert sim_counts(provider.base_url) == {
        "batches_created": 1,
        "requests_submitted": 8,
        "custom_ids_submitted_more_than_once": 0,
    }


# -- input files ---------------------------------------------------------------------------------


def test_request_lines_are_the_online_body_with_the_row_key_as_custom_id() -> None:
    rows = pl.DataFrame(
        {
            "row_key": ["k1", "k2"],
            "messages": [
                [{"role": "user", "content": 'say "hi"'}],
                [{"role": "user", "content": "é"}],
            ],
        }
    )
    body = {"model": "m", "max_tokens": 5, "response_format": {"type": "json_object"}}
    lines = [json.loads(line) for line in request_lines(rows, body)]
    assert lines[0] == {
        "custom_id": "k1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {**body, "messages": [{"role": "user", "content": 'say "hi"'}]},
    }
    assert lines[1]["body"]["messages"][0]["content"] == "é"


def test_files_split_at_the_request_byte_and_token_limits() -> None:
    lines = pl.Series(["x" * 99] * 1000)  # 100 bytes a line with its newline
    tokens = pl.Series([10] * 1000)
    by_count = split_files(lines, tokens, max_requests=300)
    assert by_count.value_counts()["count"].max() == 300
    by_bytes = split_files(lines, tokens, max_bytes=1_050)
    sizes = pl.DataFrame({"file": by_bytes}).group_by("file").len()["len"]
    assert sizes.max() * 100 <= 1_050 and sizes.sum() == 1000
    by_tokens = split_files(lines, tokens, max_tokens=95)
    assert pl.DataFrame({"f": by_tokens}).group_by("f").len()["len"].max() * 10 <= 95


def test_plan_forecasts_batch_tiers_at_batch_prices(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    rows = bulk_rows(10, online=2)
    online = CliRunner().invoke(main, ["plan", str(make_job(rows)), "--out", "online"])
    batched = CliRunner().invoke(main, ["plan", str(make_job(rows, **batch_job())), "--out", "b"])
    assert online.exit_code == batched.exit_code == 0, batched.output
    by_tier = {
        name: pl.read_parquet(tmp_path / name / "plan.parquet").filter(pl.col("tier") == "bulk")
        for name in ("online", "b")
    }
    assert by_tier["b"]["forecast_cost_usd"][0] * 2 == by_tier["online"]["forecast_cost_usd"][0]


def test_the_budget_reserves_before_submitting(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    """A cap below one file's worst case at batch prices submits nothing."""
    job = make_job(bulk_rows(10, online=0), **batch_job(budget={"max_cost_usd": 0.0000001}))
    assert run(str(job)) == ExitCode.BUDGET
    res, _ = results(tmp_path)
    assert (res["status"] == "skipped_budget").all()
    assert BatchLedger(tmp_path / "runs" / "t").all() == []


def test_a_batch_running_past_the_deadline_is_cancelled_and_the_rest_goes_online(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = make_job(
        bulk_rows(10),
        **batch_job(sim_batch={"completion_s": 600}, batch={"deadline_h": 1e-9}),
    )
    assert run(str(job)) == ExitCode.OK
    res, _ = results(tmp_path)
    assert (res["status"] == "ok").all()
    assert res["batch"].sum() == 5 and res.filter(~pl.col("batch")).height == 5
    assert [s.status for s in BatchLedger(tmp_path / "runs" / "t").all()] == ["cancelled"]


def test_a_crash_between_create_and_record_finds_the_batch_by_its_file(
    make_job: Callable[..., Path],
    tmp_path: Path,
    provider: EmbeddedSimulator,
    sim_counts: Callable[[Any], dict[str, Any]],
) -> None:
    """The ledger said `uploaded` when the process died: the batch exists all the same."""
    job = provider_job(make_job, provider, 6)
    assert run(str(job), "--no-wait") == ExitCode.SUBMITTED
    ledger = BatchLedger(tmp_path / "runs" / "t")
    (record,) = ledger.all()
    record.state, record.batch_id = "uploaded", None
    ledger.record(record)
    assert run(str(job)) == ExitCode.OK
    assert sim_counts(provider.base_url)["batches_created"] == 1
    assert results(tmp_path)[0].filter(pl.col("batch")).height == 6


def test_held_rows_are_spooled_not_kept_in_memory(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    """Holding N batch rows keeps a few dozen bytes a row in memory, not their messages."""
    job = load_job(make_job(**batch_job()))
    runner = BatchRunner(job, run_dir=tmp_path / "run", prices=resolve_prices(job), budget=Budget())
    context_columns = ("id", "row_index", "row_key", "tier")
    prompt = "x" * 4_000
    batches, per_batch = 20, 500

    def input_batch(number: int) -> pl.DataFrame:
        start = number * per_batch
        return pl.DataFrame(
            {
                "id": [f"r{i}" for i in range(start, start + per_batch)],
                "row_index": range(start, start + per_batch),
                "row_key": [f"k{i:07d}" for i in range(start, start + per_batch)],
                "tier": ["bulk"] * per_batch,
                "messages": [[{"role": "user", "content": prompt}]] * per_batch,
                "prompt_tokens": [1_000] * per_batch,
                "prompt_token_bound": [1_000] * per_batch,
            }
        )

    async def hold_all() -> None:
        for number in range(batches):
            await runner.hold(input_batch(number), context_columns)

    anyio.run(hold_all)
    rows = batches * per_batch
    assert runner.held_bytes() < 100 * rows  # the messages alone are 4,000 bytes a row
    spooled = sorted((tmp_path / "run" / SPOOL_DIR).glob("*.arrow"))
    assert len(spooled) == batches
    back = runner._read(["k0009999", "k0000000"])
    assert back["row_key"].to_list() == ["k0009999", "k0000000"]
    assert back["messages"][0][0]["content"] == prompt


def test_rows_sent_online_after_the_batch_api_climb_with_their_attempts_numbered_once(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    """A row the Batch API left for the online path may fail its checks and climb a tier; its
    attempts stay one sequence: the Batch API's first, then the online ones, none twice."""
    overrides = batch_job(sim_batch={"endings": ["expired"]}, batch={"deadline_h": 1e-9})
    overrides["simulator"]["models"] = {"small": {"truncate_rate": 1.0}}
    overrides["verify"] = {"default": ["not_truncated"]}
    job = make_job(bulk_rows(10), **overrides)
    run(str(job))
    res, attempts = results(tmp_path)
    climbed = res.filter(~pl.col("batch") & (pl.col("escalation_depth") > 0))
    assert climbed.height > 0
    numbers = attempts.group_by("row_key").agg(pl.col("attempt").sort(), pl.len())
    for key, attempt, count in numbers.iter_rows():
        assert attempt == list(range(1, count + 1)), key
    per_row = dict(numbers.select("row_key", "len").iter_rows())
    for key, made in res.select("row_key", "attempts").iter_rows():
        assert per_row.get(key, 0) == made, key
