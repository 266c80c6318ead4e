"""The small commands an operator reaches for: --version, init, run --dry-run, failures, report
with no directory, and output that survives a pipe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from batchroute import __version__
from batchroute.cli import main
from batchroute.report.terminal import format_usd
from tests.conftest import sample_rows

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_init_writes_a_commented_job_that_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    monkeypatch.chdir(tmp_path)
    source = ROOT / "sample_data" / f"prompts.{suffix}"
    data = tmp_path / f"prompts.{suffix}"
    data.write_bytes(source.read_bytes())
    result = invoke("init", str(data), "--out", "job.yaml")
    assert result.exit_code == 0, result.output
    text = Path("job.yaml").read_text()
    assert text.count("#") > 10  # commented
    assert 'id_column: "id"' in text and 'prompt_column: "prompt"' in text
    assert 'metadata_columns: ["team", "source"]' in text
    assert 'tier_hint_column: "tier"' in text
    checked = invoke("validate", "job.yaml")
    assert checked.exit_code == 0, checked.output
    assert "ok: every row can be sent" in checked.stdout
    again = invoke("init", str(data), "--out", "job.yaml")
    assert again.exit_code == 7 and "--force" in again.stderr


def test_init_picks_the_longest_text_column_when_none_is_named_prompt(tmp_path: Path) -> None:
    data = tmp_path / "p.csv"
    data.write_text("key,body,team\na,Write unit tests for the parser module please,x\n")
    out = tmp_path / "j.yaml"
    assert invoke("init", str(data), "--out", str(out)).exit_code == 0
    text = out.read_text()
    assert 'id_column: "key"' in text and 'prompt_column: "body"' in text


def test_run_dry_run_validates_and_plans_but_sends_and_writes_nothing(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = make_job(sample_rows(20))
    result = invoke("run", str(job), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "ok: every row can be sent" in result.stdout and "Forecast" in result.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "plan.parquet").exists()


def _plan_numbers(text: str) -> list[str]:
    return re.findall(r"\$[0-9][0-9,]*\.[0-9]+", text)


def test_piped_plan_round_trips_its_numbers(make_job: Callable[..., Path], tmp_path: Path) -> None:
    """Through a real pipe: no header or dollar figure is cut, and tsv/json are exact."""
    job = make_job(sample_rows(200), models=_long_model_names())
    text = subprocess.run(
        [sys.executable, "-m", "batchroute", "plan", str(job)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert not (tmp_path / "plan.parquet").exists(), "plan writes nothing unless --out"
    tsv = invoke("plan", str(job), "--format", "tsv").stdout
    plan = pl.read_csv(tsv.encode(), separator="\t", infer_schema_length=0)
    for column in ("baseline", "forecast", "in tok", "out tok"):
        assert column in text
    for row in plan.iter_rows(named=True):
        assert row["model"] in text  # never wrapped across lines
        for column in ("forecast_cost_usd", "baseline_cost_usd"):
            assert format_usd(Decimal(row[column])) in _plan_numbers(text)
    document = json.loads(invoke("plan", str(job), "--format", "json").stdout)
    exact = sum(Decimal(row["forecast_cost_usd"]) for row in document["plan"])
    assert Decimal(document["totals"]["forecast_cost_usd"]) == exact
    assert exact == sum(Decimal(v) for v in plan["forecast_cost_usd"])
    assert format_usd(exact) in _plan_numbers(text)
    out = invoke("plan", str(job), "--out", "somewhere")
    assert out.exit_code == 0 and (tmp_path / "somewhere" / "plan.parquet").is_file()


def _long_model_names() -> dict[str, Any]:
    """Model names long enough that an 80-column table would have to wrap them."""
    return {
        "big": {"input_per_mtok": 5.1234, "output_per_mtok": 25.98765, "fallback": "mid"},
        "mid": {"input_per_mtok": 3.3333, "output_per_mtok": 15.7777, "fallback": "big"},
        "small": {"input_per_mtok": 0.2711, "output_per_mtok": 1.1093, "fallback": "mid"},
    }


def test_failures_lists_failed_rows_with_reasons(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    rows = sample_rows(12)
    rows[3]["tier"] = "no-such-tier"  # fails without being sent, with its reason
    job = make_job(rows)
    assert invoke("run", str(job)).exit_code == 1
    result = invoke("failures", "runs/t")
    assert result.exit_code == 0, result.output
    assert "r0003" in result.stdout and "1 rows without an answer" in result.stdout
    document = json.loads(invoke("failures", "runs/t", "--format", "json").stdout)
    (row,) = document["rows"]
    assert row["id"] == "r0003" and row["status"] == "failed" and row["error_message"]
    missing = invoke("failures", str(tmp_path / "nowhere"))
    assert missing.exit_code == 7 and "results.parquet" in missing.stderr


def test_report_without_a_directory_takes_the_jobs_latest_run(
    make_job: Callable[..., Path],
) -> None:
    job = make_job(sample_rows(8))
    assert invoke("run", str(job)).exit_code == 0
    assert invoke("run", str(job), "--fresh", "--limit", "3").exit_code == 0
    result = invoke("report", "--job", str(job))
    assert result.exit_code == 0, result.output
    assert "runs/t.2" in result.stdout
    document = json.loads(invoke("report", "--job", str(job), "--format", "json").stdout)
    assert document["savings"][0]["rows"] == 3
    assert invoke("report").exit_code == 2


def test_shell_completion_is_served_by_click(tmp_path: Path) -> None:
    env = {"_BATCHROUTE_COMPLETE": "bash_source"}
    result = subprocess.run(
        [sys.executable, "-c", "from batchroute.cli import main; main(prog_name='batchroute')"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
        timeout=60,
        check=False,
    )
    assert "_batchroute_completion" in result.stdout


_PRINT_BLAS_THREADS = """
import atexit, os, sys
from threadpoolctl import threadpool_info
atexit.register(lambda: print("blas threads", [p["num_threads"] for p in threadpool_info()
                                               if p["user_api"] == "blas"]))
sys.argv = ["batchroute", "run", "--help"]  # `run`'s imports bring numpy in
import batchroute.cli
batchroute.cli.entry()
"""


@pytest.mark.parametrize(("user_setting", "threads"), [(None, "[1]"), ("2", "[2]")])
def test_the_command_line_keeps_numpys_blas_to_one_thread(
    user_setting: str | None, threads: str
) -> None:
    """OpenBLAS starts a thread per core on import, at a CPU cost a run never earns back; the
    command line asks for one, and a user's own setting wins."""
    pytest.importorskip("threadpoolctl")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
    }
    if user_setting is not None:
        env["OPENBLAS_NUM_THREADS"] = user_setting
    result = subprocess.run(
        [sys.executable, "-c", _PRINT_BLAS_THREADS],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert f"blas threads {threads}" in result.stdout, result.stdout + result.stderr
