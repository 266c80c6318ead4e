"""Every path that can end `batchroute run` exits with the code the README's table gives it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.exitcodes import ExitCode
from tests.conftest import sample_rows

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def documented(code: int) -> str:
    """The README's meaning of an exit code (its table row)."""
    match = re.search(rf"^\| {code} \| (.+?) \|", README, flags=re.MULTILINE)
    assert match, f"exit code {code} is not in the README's table"
    return match.group(1)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["run", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def test_ok(make_job: Callable[..., Path]) -> None:
    code, _, _ = run(str(make_job(sample_rows(10))))
    assert code == ExitCode.OK == 0 and "every row answered" in documented(code)


def test_some_rows_failed(make_job: Callable[..., Path]) -> None:
    rows = sample_rows(10)
    rows[2]["tier"] = "no-such-tier"
    code, _, _ = run(str(make_job(rows)))
    assert code == ExitCode.SOME_FAILED == 1 and "some rows failed" in documented(code)


def test_usage_error() -> None:
    code, _, _ = run("job.yaml", "--no-such-option")
    assert code == ExitCode.USAGE == 2 and "command line was wrong" in documented(code)


def test_budget_cap(make_job: Callable[..., Path]) -> None:
    code, out, _ = run(str(make_job(sample_rows(40))), "--max-cost", "0.000001")
    assert code == ExitCode.BUDGET == 3 and "budget cap" in documented(code)
    assert "stopped early: the budget cap was hit" in out


def test_refused_key_aborts(make_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BR_TEST_KEY", "sk-wrong")
    job = make_job(sample_rows(10), simulator={"require_api_key": "sk-right"})
    code, out, _ = run(str(job))
    assert code == ExitCode.ABORTED == 4 and "key was refused" in documented(code)
    assert "stopped early: the run aborted" in out


def test_missing_key_variable_is_configuration_not_abort(
    make_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 18 finding 4: an unset key variable used to exit 4 after creating a run dir."""
    monkeypatch.delenv("BR_TEST_KEY", raising=False)
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "BR_TEST_KEY"}
    job = make_job(sample_rows(5), endpoint=endpoint)
    code, _, err = run(str(job))
    assert code == ExitCode.BAD_INPUT == 6, err
    assert "BR_TEST_KEY" in err and "key variable" in documented(code)
    assert not (tmp_path / "runs").exists()


def test_bad_job(make_job: Callable[..., Path]) -> None:
    job = make_job(sample_rows(5))
    job.write_text(job.read_text().replace("baseline_model", "baseline_modle"))
    code, _, err = run(str(job))
    assert code == ExitCode.BAD_INPUT and "job file or input is wrong" in documented(code)
    assert "baseline_modle" in err


def test_unwritable_run_directory(make_job: Callable[..., Path], tmp_path: Path) -> None:
    """A run directory that cannot be made is exit 7 with its path, never a traceback."""
    job = make_job(sample_rows(5), output={"dir": str(tmp_path / "prompts.jsonl" / "run")})
    code, _, err = run(str(job))
    assert code == ExitCode.OUTPUT == 7 and "could not be written" in documented(code)
    assert "cannot create the run directory" in err


def test_interrupted_by_sigint_as_cron_sees_it(make_job: Callable[..., Path]) -> None:
    """A real process and a real signal: exit 5, a stopping warning and a run_finished event."""
    job = make_job(
        sample_rows(200),
        simulator={"default": {"latency_ms": 200}},
        models={
            "big": {"input_per_mtok": 5, "output_per_mtok": 25, "max_concurrency": 2},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15, "max_concurrency": 2},
            "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1, "max_concurrency": 2},
        },
        run={"grace_s": 1},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchroute", "run", str(job), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # run_started: the run is under way
    assert json.loads(first)["event"] == "run_started"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED == 5
    assert "interrupted" in documented(5)
    events = [json.loads(line) for line in err.splitlines()]
    assert any(e.get("reason") == "stopping" and "SIGINT" in e["message"] for e in events)
    assert events[-1]["event"] == "run_finished" and events[-1]["exit_code"] == 5
    assert "SIGINT" in events[-1]["stop_reason"]
    assert out == ""
    manifest = json.loads(Path("runs/t/run.json").read_text())
    assert manifest["exit_code"] == 5 and "SIGINT" in manifest["stop_reason"]


def test_missing_run_directory_for_report() -> None:
    result = CliRunner().invoke(main, ["report", "no/such/dir"])
    assert result.exit_code == ExitCode.OUTPUT and "read" in documented(7)


def test_every_model_unavailable_aborts(make_job: Callable[..., Path]) -> None:
    retired = {"not_found": True}
    job = make_job(
        sample_rows(10), simulator={"models": {"big": retired, "mid": retired, "small": retired}}
    )
    code, _, _ = run(str(job))
    assert code == ExitCode.ABORTED and "every model became unavailable" in documented(code)


def test_a_run_directory_held_by_a_live_process(make_job: Callable[..., Path]) -> None:
    from batchroute.store.lock import RunLock

    job = make_job(sample_rows(5))
    Path("runs/t").mkdir(parents=True)
    with RunLock(Path("runs/t"), run_id="holder"):
        code, _, err = run(str(job))
    assert code == ExitCode.BAD_INPUT and "another run holds the run directory" in documented(code)
    assert str(os.getpid()) in err


def test_submitted_collect_later(make_job: Callable[..., Path]) -> None:
    from batchroute.sim import EmbeddedSimulator
    from batchroute.sim.config import SimConfig

    rows = sample_rows(5)
    for row in rows:
        row["tier"] = "bulk"
    with EmbeddedSimulator(SimConfig.model_validate({"batch": {"completion_s": 60}})) as sim:
        job = make_job(
            rows,
            endpoint={"base_url": sim.base_url, "api_key_env": None},
            tiers={"standard": "mid", "bulk": {"model": "small", "mode": "batch"}},
        )
        code, _, _ = run(str(job), "--no-wait")
    assert code == ExitCode.SUBMITTED == 9 and "collect later" in documented(code)
