"""The response cache wired into runs, end to end: the real AsyncOpenAI client over loopback to
a standalone simulator process, whose request counts (`/sim/stats`) say what was paid for.

Every test's cache file is its own (conftest points XDG_CACHE_HOME at a temporary directory).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

import batchroute
from batchroute.cache.runs import RunCache
from batchroute.exitcodes import ExitCode
from batchroute.sim import SimConfig, SimulatorProcess
from tests.conftest import job_dict, sample_rows

ROWS = 40


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(SimConfig()) as sim:
        yield sim


@pytest.fixture
def sim(simulator: SimulatorProcess) -> SimulatorProcess:
    simulator.reset()
    return simulator


def sent(sim: SimulatorProcess) -> int:
    """Chat-completion requests the server has seen since the test began."""
    total: int = sim.stats()["total"]
    return total


def write_job(
    directory: Path, sim: SimulatorProcess, rows: list[dict[str, Any]], **overrides: Any
) -> Path:
    overrides.setdefault("request", {"max_tokens": 1024})  # room to finish: `stop`, not `length`
    data = directory / "prompts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    job = job_dict(
        data,
        endpoint={"base_url": sim.base_url, "api_key_env": None, "timeout_s": 10},
        **overrides,
    )
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def stored(cache_file: Path) -> int:
    """Answers in the cache file, read as another process would."""
    with sqlite3.connect(cache_file) as connection:
        count: int = connection.execute("SELECT count(*) FROM responses").fetchone()[0]
    return count


def results(result: batchroute.RunResult) -> pl.DataFrame:
    return result.results().collect()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_fresh_run_directory_pays_only_for_new_rows(
    workdir: Path, sim: SimulatorProcess, _private_response_cache: Path
) -> None:
    """Yesterday's file plus today's new rows: only the new rows are sent and paid for."""
    yesterday = sample_rows(ROWS)
    job = write_job(workdir, sim, yesterday)
    first = batchroute.run(job)
    assert first.ok and sent(sim) == ROWS
    assert stored(_private_response_cache) == ROWS
    paid = results(first).select("id", "model_used", "cost_usd", "input_tokens", "content")
    assert not results(first)["cache_hit"].any()

    today = yesterday + [
        {"id": f"new{i}", "prompt": f"A prompt first seen today, number {i}.", "team": "data"}
        for i in range(7)
    ]
    write_job(workdir, sim, today)
    second = batchroute.run(job, fresh=True)
    assert second.ok, second.message
    assert sent(sim) == ROWS + 7  # the 7 new rows only
    assert second.run_dir != first.run_dir
    assert (second.cached_rows, second.sent_rows, first.cached_rows) == (ROWS, 7, 0)
    rows = results(second)
    assert rows.height == ROWS + 7
    hits, misses = rows.filter(pl.col("cache_hit")), rows.filter(~pl.col("cache_hit"))
    assert hits.height == ROWS and misses["id"].str.starts_with("new").all()
    assert (hits["status"] == "ok").all() and (hits["attempts"] == 0).all()
    assert (hits["cost_usd"] == 0).all() and (misses["cache_saved_usd"] == 0).all()
    # a hit is the answer paid for yesterday, and keeps its list cost for finance
    same = hits.join(paid, on="id", suffix="_paid")
    assert same["content"].to_list() == same["content_paid"].to_list()
    assert same["model_used"].to_list() == same["model_used_paid"].to_list()
    assert same["cache_saved_usd"].to_list() == same["cost_usd_paid"].to_list()
    attempts = pl.read_parquet(second.run_dir / "attempts.parquet")
    assert attempts.height == 7 and attempts["row_key"].is_in(misses["row_key"].implode()).all()
    # money: new spend is the misses alone, the saving is yesterday's spend, totals add up
    assert second.cost_usd == misses["cost_usd"].sum() > 0
    savings = pl.read_parquet(second.run_dir / "savings.parquet").row(0, named=True)
    assert savings["cache_hits"] == ROWS
    assert savings["cache_hit_rate"] == pytest.approx(ROWS / (ROWS + 7))
    assert savings["cache_saved_usd"] == paid["cost_usd"].sum() == first.cost_usd
    assert savings["actual_cost_usd"] == rows["cost_usd"].sum()
    baseline_cost = savings["baseline_cost_usd"]
    listed = savings["total_cost_usd"] + savings["cache_saved_usd"]
    assert savings["savings_vs_baseline_usd"] == baseline_cost - listed
    manifest = json.loads((second.run_dir / "run.json").read_text())
    assert manifest["cache_hits"] == ROWS
    assert Decimal(manifest["cache_saved_usd"]) == first.cost_usd
    assert manifest["sessions"][-1]["cached_rows"] == ROWS
    assert manifest["sessions"][-1]["sent_rows"] == 7
    # the reports say it: the printed summary and the HTML page
    shown = subprocess.run(
        [sys.executable, "-m", "batchroute", "report", str(second.run_dir), "--html", "r.html"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"Response cache: {ROWS} answers" in " ".join(shown.stdout.split())
    assert f"Response cache: {ROWS} answers" in Path("r.html").read_text()


def test_a_sent_row_is_keyed_once_and_its_answer_found_by_that_key(
    workdir: Path, sim: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key made for a row's lookup travels with it and its answer is stored under it: one
    hash a row (issue 15), and a later run's lookup, which hashes afresh, finds every answer."""
    made: list[bytes] = []
    key = RunCache.key

    def counted(self: RunCache, model: str, body: Any, messages: Any) -> bytes:
        made.append(key(self, model, body, messages))
        return made[-1]

    monkeypatch.setattr(RunCache, "key", counted)
    job = write_job(workdir, sim, sample_rows(ROWS))
    assert batchroute.run(job).ok and sent(sim) == ROWS
    assert len(made) == ROWS  # the lookups'; the stores reused them
    again = batchroute.run(job, fresh=True)
    assert sent(sim) == ROWS and again.cached_rows == ROWS
    assert len(made) == 2 * ROWS


def test_one_changed_parameter_misses(workdir: Path, sim: SimulatorProcess) -> None:
    job = write_job(workdir, sim, sample_rows(ROWS))
    assert batchroute.run(job).ok
    structured = results(batchroute.run(job, fresh=True)).filter(pl.col("tier") == "structured")
    assert sent(sim) == ROWS and structured.height > 0
    # one new parameter on one tier: exactly that tier's rows are sent again
    params = {"response_format": {"type": "json_object"}, "seed": 7}
    write_job(
        workdir,
        sim,
        sample_rows(ROWS),
        tiers={
            "complex": "big",
            "standard": "mid",
            "structured": {"model": "mid", "request": {"params": params}},
            "bulk": "small",
        },
    )
    rerun = results(batchroute.run(job, fresh=True))
    assert sent(sim) == ROWS + structured.height
    missed = rerun.filter(~pl.col("cache_hit"))
    assert sorted(missed["id"]) == sorted(structured["id"])


def test_truncated_answers_are_not_stored(
    workdir: Path, sim: SimulatorProcess, _private_response_cache: Path
) -> None:
    job = write_job(workdir, sim, sample_rows(ROWS), request={"max_tokens": 2})
    first = batchroute.run(job)
    answered = results(first).filter(pl.col("status") == "ok")
    assert answered.height and (answered["finish_reason"] == "length").all()
    assert stored(_private_response_cache) == 0
    paid = sent(sim)  # JSON cut short is not JSON: the structured rows fail over, too
    assert paid >= ROWS
    again = batchroute.run(job, fresh=True)
    assert sent(sim) == 2 * paid
    assert not results(again)["cache_hit"].any()


def test_no_cache_and_refresh_cache(
    workdir: Path, sim: SimulatorProcess, _private_response_cache: Path
) -> None:
    job = write_job(workdir, sim, sample_rows(ROWS))
    assert batchroute.run(job, no_cache=True).ok
    assert sent(sim) == ROWS
    assert not _private_response_cache.exists()  # --no-cache does not even open the file
    assert batchroute.run(job, fresh=True).ok
    assert sent(sim) == 2 * ROWS and stored(_private_response_cache) == ROWS
    before = _private_response_cache.stat().st_mtime_ns, stored(_private_response_cache)

    off = batchroute.run(job, fresh=True, no_cache=True)
    assert sent(sim) == 3 * ROWS and not results(off)["cache_hit"].any()
    assert (_private_response_cache.stat().st_mtime_ns, stored(_private_response_cache)) == before

    with sqlite3.connect(_private_response_cache) as connection:
        connection.execute("UPDATE responses SET answer = json_set(answer, '$.content', 'old')")
    refreshed = batchroute.run(job, fresh=True, refresh_cache=True)
    assert sent(sim) == 4 * ROWS and not results(refreshed)["cache_hit"].any()
    served = results(batchroute.run(job, fresh=True))
    assert sent(sim) == 4 * ROWS and served["cache_hit"].all()
    # the fresh answers replaced the old ones
    assert served["content"].to_list() == results(refreshed)["content"].to_list()
    assert "old" not in served["content"].to_list()


def test_the_command_line_flags(workdir: Path, sim: SimulatorProcess) -> None:
    job = write_job(workdir, sim, sample_rows(10))
    both = subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job), "--no-cache", "--refresh-cache"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert both.returncode == 2 and "exclude each other" in both.stderr
    for flags, expected in (((), 10), (("--fresh", "--refresh-cache"), 20), (("--fresh",), 20)):
        done = subprocess.run(
            [sys.executable, "-m", "batchroute", "run", str(job), "--quiet", *flags],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert sent(sim) == expected, flags
    flagged = subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job), "--fresh", "--no-cache", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert flagged.returncode == 0, flagged.stderr
    assert sent(sim) == 30


def test_two_concurrent_runs_share_the_cache(
    workdir: Path, sim: SimulatorProcess, _private_response_cache: Path
) -> None:
    """Two `batchroute run` processes at once on one cache file, with overlapping rows."""
    rows = sample_rows(200)
    procs = []
    for name, part in (("a", rows[:150]), ("b", rows[50:])):
        directory = workdir / name
        directory.mkdir()
        write_job(directory, sim, part, run={"max_in_flight": 16})
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "batchroute", "run", "job.yaml", "--quiet"],
                cwd=directory,
                env=dict(os.environ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == ExitCode.OK, err
    first_pass = sent(sim)
    assert 200 <= first_pass <= 300  # overlap may be served from the cache, never lost
    with sqlite3.connect(_private_response_cache) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert stored(_private_response_cache) == 200
    # every answer either process paid for now serves a third run
    write_job(workdir, sim, rows)
    third = batchroute.run(workdir / "job.yaml")
    assert third.ok and sent(sim) == first_pass
    assert results(third)["cache_hit"].all()


def test_an_unusable_cache_file_stops_the_run_before_any_request(
    workdir: Path, sim: SimulatorProcess
) -> None:
    bad = workdir / "cache.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    job = write_job(workdir, sim, sample_rows(10), cache={"path": str(bad)})
    done = subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == ExitCode.OUTPUT, done.stderr
    assert "response cache" in done.stderr and "Traceback" not in done.stderr
    assert sent(sim) == 0
    assert batchroute.run(job, no_cache=True).ok  # the way out the error names
    assert Decimal(0) < batchroute.run(job, fresh=True, no_cache=True).cost_usd


def test_a_fallback_answer_is_cached_under_the_model_that_gave_it(workdir: Path) -> None:
    """The bulk model is gone: its rows fall back to `mid`, and a rerun is served `mid`'s answer
    at `mid`'s position and price, never filed under the model that did not answer."""
    config = SimConfig.model_validate({"models": {"small": {"not_found": True}}})
    with SimulatorProcess(config) as gone:
        job = write_job(workdir, gone, sample_rows(ROWS))
        first = results(batchroute.run(job))
        bulk = first.filter(pl.col("tier") == "bulk")
        assert bulk.height and (bulk["model_used"] == "mid").all()
        paid = sent(gone)
        rerun = results(batchroute.run(job, fresh=True))
        # the first model is asked first, as every run does: one 404 finds it gone again; each
        # bulk row's fallback request is then looked up, just before it would be sent
        assert sent(gone) == paid + 1
        assert gone.stats()["requests"]["small"] == {"404": 2}
        assert rerun["cache_hit"].all()
    served = rerun.filter(pl.col("tier") == "bulk").join(bulk, on="id", suffix="_paid")
    assert (served["model_used"] == "mid").all() and (served["fallback_depth"] == 1).all()
    assert served["cache_saved_usd"].to_list() == served["cost_usd_paid"].to_list()
    assert (served["cost_usd"] == 0).all() and served["attempts"].sum() == 1  # the 404


def test_hits_take_no_budget(workdir: Path, sim: SimulatorProcess) -> None:
    """Under a cap too small for one request, cached rows are still answered: a hit reserves
    nothing; only the new rows are stopped by the budget."""
    rows = sample_rows(ROWS)
    job = write_job(workdir, sim, rows)
    assert batchroute.run(job).ok
    extra = [
        {"id": f"new{i}", "prompt": f"Never asked before, {i}.", "team": "x"} for i in range(5)
    ]
    write_job(workdir, sim, rows + extra, budget={"max_cost_usd": 0.000001})
    capped = batchroute.run(job, fresh=True)
    assert sent(sim) == ROWS  # nothing new was affordable, and nothing cached needed budget
    counts = results(capped).group_by("status", "cache_hit").len().sort("status")
    assert counts.rows() == [("ok", True, ROWS), ("skipped_budget", False, 5)]
    assert capped.exit_code == ExitCode.BUDGET


def test_a_stored_fallback_answer_never_stands_in_for_the_first_model(workdir: Path) -> None:
    """Yesterday the bulk model failed and `mid` answered; today it is back: it is asked."""
    outage = {"server_error": 1.0, "active_until_s": 3.0}
    config = SimConfig.model_validate({"models": {"small": {"faults": outage}}})
    with SimulatorProcess(config) as flaky:
        job = write_job(
            workdir,
            flaky,
            sample_rows(ROWS),
            retry={"max_retries_per_model": 0, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        )
        flaky.reset()  # the outage starts now, for 3 s
        first = results(batchroute.run(job))
        bulk = first.filter(pl.col("tier") == "bulk")
        assert bulk.height and (bulk["model_used"] == "mid").all()
        time.sleep(3.2)  # the outage is over
        asked = flaky.stats()["requests"]["small"].get("200", 0)
        rerun = results(batchroute.run(job, fresh=True))
        answered = flaky.stats()["requests"]["small"].get("200", 0) - asked
    served = rerun.filter(pl.col("tier") == "bulk")
    assert answered == bulk.height  # each bulk row's first request was sent again
    assert (served["model_used"] == "small").all() and not served["cache_hit"].any()
    assert rerun.filter(pl.col("tier") != "bulk")["cache_hit"].all()


def test_filtered_answers_are_not_stored(workdir: Path, _private_response_cache: Path) -> None:
    """Every bulk answer is withheld (content_filter): `mid` answers instead. The filtered
    requests are asked again next time; only the accepted answers are served."""
    config = SimConfig.model_validate({"models": {"small": {"faults": {"content_filter": 1.0}}}})
    with SimulatorProcess(config) as filtering:
        job = write_job(workdir, filtering, sample_rows(ROWS), retry={"max_retries_per_model": 0})
        first = results(batchroute.run(job))
        bulk = first.filter(pl.col("tier") == "bulk")
        assert bulk.height and (bulk["model_used"] == "mid").all()
        assert stored(_private_response_cache) == ROWS  # one accepted answer per row
        rerun = results(batchroute.run(job, fresh=True))
        asked = filtering.stats()["requests"]["small"]
    assert asked == {"200": 2 * bulk.height}  # sent again: nothing filtered was kept
    assert rerun["cache_hit"].all()
    served = rerun.filter(pl.col("tier") == "bulk")
    assert (served["model_used"] == "mid").all() and (served["attempts"] == 1).all()
