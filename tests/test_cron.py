"""Unattended runs as cron makes them: `python -m batchroute run JOB.yaml` in a real subprocess.

Every test talks to one standalone simulator process with per-request latency, so its request
counts (`GET /sim/stats`) span every batchroute process a test starts: they show what was paid
for, whatever happened to the client. The simulator reports `max_tokens` completion tokens, so
each row's actual cost equals its forecast and its budget reservation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from batchroute.config import load_job
from batchroute.engines.forecast import forecast_job
from batchroute.exitcodes import ExitCode
from batchroute.pricing.forecast import forecast_totals
from batchroute.pricing.prices import resolve_prices
from batchroute.sim import SimConfig, SimulatorProcess
from tests.conftest import job_dict, sample_rows

LATENCY_MS = 150
SLOW_IN_FLIGHT = 16
"""The in-flight cap of runs a test stops midway: 200 rows take about 2 s."""
FAST_IN_FLIGHT = 64
"""The in-flight cap of runs a test only needs finished: 200 rows take about 0.5 s."""
ROWS = 200
RUN_DIR = Path("runs/t")


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    """One simulator process for the module; each test starts from zeroed counts."""
    config = SimConfig.model_validate(
        {"default": {"latency_ms": LATENCY_MS, "completion_tokens": "max_tokens"}}
    )
    with SimulatorProcess(config) as sim:
        yield sim


@pytest.fixture
def sim(simulator: SimulatorProcess) -> SimulatorProcess:
    simulator.reset()
    return simulator


@dataclass
class Cron:
    """Writes a job in a temporary directory and runs batchroute on it the way cron would."""

    directory: Path
    base_url: str

    def write_job(
        self, rows: list[dict[str, Any]], *, max_in_flight: int, **overrides: Any
    ) -> Path:
        data = self.directory / "prompts.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        job = job_dict(
            data,
            endpoint={"base_url": self.base_url, "api_key_env": None, "timeout_s": 10},
            run={"max_in_flight": max_in_flight, "grace_s": 5},
            **overrides,
        )
        path = self.directory / "job.yaml"
        path.write_text(yaml.safe_dump(job, sort_keys=False))
        return path

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start `batchroute run job.yaml ARGS` with its output going to files (no pipe stalls)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
        number = len(list(self.directory.glob("out-*.txt")))
        with (
            open(self.directory / f"out-{number}.txt", "w") as out,
            open(self.directory / f"err-{number}.txt", "w") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-m", "batchroute", "run", "job.yaml", *args],
                cwd=self.directory,
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )
        proc.number = number  # type: ignore[attr-defined]
        return proc

    def finish(self, proc: subprocess.Popen[str]) -> tuple[int, str, str]:
        """Wait for a run; return its exit code, stdout and stderr."""
        code = proc.wait(timeout=90)
        number = proc.number  # type: ignore[attr-defined]
        out = (self.directory / f"out-{number}.txt").read_text()
        err = (self.directory / f"err-{number}.txt").read_text()
        return code, out, err

    def run(self, *args: str) -> tuple[int, str, str]:
        return self.finish(self.start(*args))

    def results(self, run_dir: Path = RUN_DIR) -> pl.DataFrame:
        return pl.read_parquet(self.directory / run_dir / "results.parquet")

    def manifest(self, run_dir: Path = RUN_DIR) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.directory / run_dir / "run.json").read_text())
        return data


@pytest.fixture
def cron(tmp_path: Path, sim: SimulatorProcess) -> Cron:
    return Cron(tmp_path, sim.base_url)


def wait_until(condition: Callable[[], bool], *, proc: subprocess.Popen[str]) -> None:
    """Poll `condition` until it holds; fail if the run ends first or it never does."""
    deadline = time.monotonic() + 60
    while not condition():
        assert proc.poll() is None, "the run ended before the moment the test waits for"
        assert time.monotonic() < deadline, "the run never reached the moment the test waits for"
        time.sleep(0.02)


def sent(sim: SimulatorProcess) -> int:
    """Chat-completion requests the server has answered (or seen die) since the test began."""
    total: int = sim.stats()["total"]
    return total


def ids(count: int) -> list[str]:
    return [f"r{i:04d}" for i in range(count)]


KILL_ROWS = 400
KILL_CONCURRENCY = 16
KILL_LATENCY_MS = 300
COMMIT_INTERVAL_MS = 25


def good_answers(sim: SimulatorProcess) -> int:
    """Chat completions the server answered with a 200: what was paid for."""
    requests: dict[str, dict[str, int]] = sim.stats()["requests"]
    return sum(outcomes.get("200", 0) for outcomes in requests.values())


@pytest.mark.slow
def test_kill_9_at_half_rebuys_only_what_was_in_flight(tmp_path: Path) -> None:
    """Issue 14: 400 rows, 16 at a time, 300 ms each; kill -9 at 200 answers, then rerun.

    Each answer is journaled within a commit interval, so the rerun re-buys at most the 16
    requests in flight at the kill plus the answers of the last commit interval. Answers come in
    waves of 16 (300 ms each): on an idle machine exactly one wave (16) is re-bought, the one
    the server had just answered when the kill came. On a loaded machine the client lags its
    responses, so part of the wave before is not yet durable either: 19 to 31 were seen with a
    load of 5 on 2 cores. The assertion allows three waves (48), which still fails the old
    checkpointing by far: it re-bought 201 here, the issue 227.
    """
    config = SimConfig.model_validate(
        {"default": {"latency_ms": KILL_LATENCY_MS, "completion_tokens": "max_tokens"}}
    )
    with SimulatorProcess(config) as server:
        cron = Cron(tmp_path, server.base_url)
        job = cron.write_job(
            sample_rows(KILL_ROWS),
            max_in_flight=512,
            output={"dir": "runs/{name}", "commit_interval_ms": COMMIT_INTERVAL_MS},
        )
        spec = yaml.safe_load(job.read_text())
        spec["tiers"] = dict.fromkeys(spec["tiers"], "mid")  # one model, 16 at a time
        spec["models"]["mid"] |= {"max_concurrency": KILL_CONCURRENCY, "fallback": None}
        job.write_text(yaml.safe_dump(spec, sort_keys=False))

        first = cron.start()
        wait_until(lambda: good_answers(server) >= KILL_ROWS // 2, proc=first)
        first.send_signal(signal.SIGKILL)
        assert cron.finish(first)[0] == -signal.SIGKILL
        assert list((tmp_path / RUN_DIR / "parts").glob("journal-*.log"))  # not yet compacted
        code, _, err = cron.run()
        assert code == ExitCode.OK, err
        results = cron.results()
        assert results["id"].to_list() == ids(KILL_ROWS)  # every row, once, in input order
        assert (results["status"] == "ok").all()
        rebought = good_answers(server) - KILL_ROWS
        print(f"kill -9 at half: {rebought} answers bought twice")  # noqa: T201 (the report)
        assert 0 <= rebought <= 3 * KILL_CONCURRENCY
        crashed, resumed = cron.manifest()["sessions"]
        assert crashed["ended_at"] is None  # the killed session never wrote its end
        assert resumed["reused_rows"] + resumed["sent_rows"] == KILL_ROWS
        assert resumed["reused_rows"] >= KILL_ROWS // 2 - 3 * KILL_CONCURRENCY
        assert not list((tmp_path / RUN_DIR).rglob("*.tmp"))
        assert not list((tmp_path / RUN_DIR / "parts").glob("journal-*"))  # compacted


def test_sigterm_stops_cleanly_then_rerun_sends_only_unanswered_rows(
    cron: Cron, sim: SimulatorProcess
) -> None:
    cron.write_job(sample_rows(ROWS), max_in_flight=SLOW_IN_FLIGHT)
    first = cron.start()
    wait_until(lambda: sent(sim) >= ROWS // 3, proc=first)
    first.send_signal(signal.SIGTERM)
    code, out, err = cron.finish(first)
    assert code == ExitCode.INTERRUPTED, err
    assert "SIGTERM" in err + out

    results = cron.results()
    assert results["id"].to_list() == ids(ROWS)
    counts = results["status"].value_counts()
    by_status = dict(zip(counts["status"], counts["count"], strict=True))
    assert set(by_status) == {"ok", "skipped_interrupted"}
    # in-flight requests finished within the grace period, and nothing was sent after the signal
    assert sent(sim) == by_status["ok"]
    for report in ("cost_report", "tier_distribution", "savings"):
        assert (cron.directory / RUN_DIR / f"{report}.parquet").is_file(), report
    manifest = cron.manifest()
    assert manifest["exit_status"] == "interrupted"
    assert manifest["exit_code"] == ExitCode.INTERRUPTED
    assert manifest["finished_at"] is not None
    assert manifest["counts"]["skipped_interrupted"] == by_status["skipped_interrupted"]

    paid_before = sent(sim)
    code, _, err = cron.run()
    assert code == ExitCode.OK, err
    assert (cron.results()["status"] == "ok").all()
    assert sent(sim) - paid_before == by_status["skipped_interrupted"]
    assert cron.manifest()["sessions"][-1]["reused_rows"] == by_status["ok"]


def test_second_signal_stops_at_once_leaving_only_complete_files(
    cron: Cron, sim: SimulatorProcess
) -> None:
    cron.write_job(sample_rows(ROWS), max_in_flight=SLOW_IN_FLIGHT)
    first = cron.start()
    wait_until(lambda: sent(sim) >= ROWS // 3, proc=first)
    first.send_signal(signal.SIGTERM)
    time.sleep(0.02)  # well inside the 150 ms the requests in flight take
    first.send_signal(signal.SIGTERM)
    code, out, err = cron.finish(first)
    assert code == ExitCode.INTERRUPTED, err
    assert "received again" in err
    run_dir = cron.directory / RUN_DIR
    assert not list(run_dir.rglob("*.tmp"))
    manifest = cron.manifest()
    assert manifest["exit_code"] == ExitCode.INTERRUPTED
    assert manifest["finished_at"] is not None

    paid_before = sent(sim)
    code, _, err = cron.run()
    assert code == ExitCode.OK, err
    results = cron.results()
    assert results["id"].to_list() == ids(ROWS)
    assert (results["status"] == "ok").all()
    assert sent(sim) <= ROWS + SLOW_IN_FLIGHT
    assert sent(sim) - paid_before == cron.manifest()["sessions"][-1]["sent_rows"]


def test_budget_cap_at_40_percent_of_forecast_stops_the_run(
    cron: Cron, sim: SimulatorProcess
) -> None:
    job_path = cron.write_job(sample_rows(ROWS), max_in_flight=FAST_IN_FLIGHT)
    job = load_job(job_path)
    forecast = forecast_totals(forecast_job(job, resolve_prices(job)).frame()).cost_usd
    assert forecast is not None
    cap = (forecast * Decimal("0.4")).quantize(Decimal("0.000001"))

    code, out, err = cron.run("--max-cost", str(cap))
    assert code == ExitCode.BUDGET, err
    results = cron.results()
    assert results["id"].to_list() == ids(ROWS)
    ok = results.filter(pl.col("status") == "ok")
    skipped = results.filter(pl.col("status") == "skipped_budget")
    assert ok.height + skipped.height == ROWS
    assert skipped.height > 0
    assert (skipped["error_type"] == "budget").all()
    assert sent(sim) == ok.height  # a row refused by the budget never reached the server
    spend = results.select(pl.sum("cost_usd") + pl.sum("failed_cost_usd")).item()
    largest_reservation = ok["cost_usd"].max()  # actual == reserved: completions are max_tokens
    assert isinstance(spend, Decimal)
    assert isinstance(largest_reservation, Decimal)
    assert spend <= cap + FAST_IN_FLIGHT * largest_reservation
    assert spend >= cap / 2  # the cap, not something else, stopped the run
    savings = pl.read_parquet(cron.directory / RUN_DIR / "savings.parquet")
    assert savings["budget_hit"].item() is True
    assert cron.manifest()["budget_hit"] is True
    assert "budget cap was hit" in out


def test_second_concurrent_run_is_refused_naming_the_pid(cron: Cron, sim: SimulatorProcess) -> None:
    cron.write_job(sample_rows(ROWS), max_in_flight=2)  # about 15 s: it outlives the second
    first = cron.start()
    wait_until(lambda: sent(sim) > 0, proc=first)
    code, out, err = cron.run()
    assert first.poll() is None, "the first run ended before the second one tried the lock"
    assert code == ExitCode.BAD_INPUT
    assert str(first.pid) in err
    assert "Traceback" not in err + out
    first.send_signal(signal.SIGTERM)
    code, _, err = cron.finish(first)
    assert code == ExitCode.INTERRUPTED, err
    manifest = cron.manifest()
    assert [session["pid"] for session in manifest["sessions"]] == [first.pid]
    assert manifest["exit_code"] == ExitCode.INTERRUPTED  # the refused run wrote nothing here


def test_lock_left_by_killed_process_is_taken_over_with_a_warning(
    cron: Cron, sim: SimulatorProcess
) -> None:
    cron.write_job(sample_rows(40), max_in_flight=FAST_IN_FLIGHT)
    run_dir = cron.directory / RUN_DIR
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from batchroute.store.lock import RunLock; "
            f"RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    holder.stdout.close()
    assert (run_dir / ".lock").exists()  # kill -9 left the lock file behind

    code, _, err = cron.run()
    assert code == ExitCode.OK, err
    assert f"took over a lock left by process {holder.pid}" in err
    assert cron.results().height == 40
    assert not (run_dir / ".lock").exists()


def test_edits_to_input_or_job_resend_only_the_rows_they_affect(
    cron: Cron, sim: SimulatorProcess
) -> None:
    """An edited prompt re-buys its row; a tier moved to another model re-buys that tier."""
    job_path = cron.write_job(sample_rows(ROWS), max_in_flight=FAST_IN_FLIGHT)
    assert cron.run()[0] == ExitCode.OK
    before = cron.results()
    assert sent(sim) == ROWS

    rows = sample_rows(ROWS)
    rows[7]["prompt"] = "What is the capital of New Zealand?"
    (cron.directory / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = cron.run()
    assert code == ExitCode.OK, err
    assert sent(sim) == ROWS + 1
    edited = cron.results()
    assert edited.filter(before["row_key"] != edited["row_key"])["id"].to_list() == ["r0007"]
    unchanged = pl.col("id") != "r0007"
    assert edited.filter(unchanged)["content"].to_list() == (
        before.filter(unchanged)["content"].to_list()
    )
    assert cron.manifest()["sessions"][-1]["sent_rows"] == 1

    job = yaml.safe_load(job_path.read_text())
    job["models"]["tiny"] = {"input_per_mtok": 0.1, "output_per_mtok": 0.4}
    job["tiers"]["bulk"] = "tiny"
    job_path.write_text(yaml.safe_dump(job, sort_keys=False))
    code, _, err = cron.run()
    assert code == ExitCode.OK, err
    moved = cron.results()
    bulk = pl.col("tier") == "bulk"
    bulk_rows = edited.filter(bulk).height
    assert bulk_rows > 0
    assert sent(sim) == ROWS + 1 + bulk_rows
    assert sim.stats()["requests"]["tiny"] == {"200": bulk_rows}  # only to the new model
    assert moved.filter(bulk)["model_used"].unique().to_list() == ["tiny"]
    assert moved.filter(~bulk)["row_key"].to_list() == edited.filter(~bulk)["row_key"].to_list()
    assert moved.filter(~bulk)["content"].to_list() == edited.filter(~bulk)["content"].to_list()
    assert (moved["status"] == "ok").all()


def test_fresh_starts_a_new_run_directory(cron: Cron, sim: SimulatorProcess) -> None:
    cron.write_job(sample_rows(40), max_in_flight=FAST_IN_FLIGHT)
    assert cron.run()[0] == ExitCode.OK
    first_manifest = cron.manifest()
    code, _, err = cron.run("--fresh", "--no-cache")
    assert code == ExitCode.OK, err
    assert sent(sim) == 80  # nothing was reused (the response cache is off)
    fresh_dir = Path("runs/t.2")
    assert cron.results(fresh_dir)["id"].to_list() == ids(40)
    assert len(cron.manifest(fresh_dir)["sessions"]) == 1
    assert cron.manifest() == first_manifest  # the old run was left alone
    assert cron.run()[0] == ExitCode.OK  # output.dir is pinned: a plain rerun resumes it
    assert sent(sim) == 80
    assert len(cron.manifest()["sessions"]) == 2
    assert len(cron.manifest(fresh_dir)["sessions"]) == 1
