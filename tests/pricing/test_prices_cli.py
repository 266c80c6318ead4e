"""`batchroute prices`: the resolved table with each price's source and date, and --diff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from batchroute.cli import main

DATA = Path(__file__).parent.parent / "data"
JOB = (
    "name: t\ninput: {path: in.jsonl}\n"
    "tiers: {standard: deepseek-chat, complex: mine}\n"
    "models:\n  mine: {input_per_mtok: 2, output_per_mtok: 8}\n"
)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["prices", *args], env={"COLUMNS": "160"})
    return result.exit_code, result.output


def test_prices_lists_the_shipped_table_with_its_date() -> None:
    code, out = invoke()
    assert code == 0, out
    assert "all from batchroute default table 2026-11-01" in out
    assert "claude-opus-4-7" in out and "deepseek-chat" in out


def test_prices_of_a_job_name_each_price_source(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    code, out = invoke("--job", str(job))
    assert code == 0, out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "job file" in lines["mine"]
    assert "batchroute default table 2026-11-01" in lines["deepseek-chat"]
    assert "1.1" in lines["deepseek-chat"]


def test_prices_diff_against_a_litellm_map(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    code, out = invoke("--job", str(job), "--diff", str(DATA / "litellm_small.json"))
    assert code == 0, out
    diff = out[out.index("Against") :]
    assert "(LiteLLM format)" in " ".join(diff.split())
    deepseek = [line for line in diff.splitlines() if line.strip().startswith("deepseek-chat")]
    assert any("context_window" in line and "65,536" in line for line in deepseek)
    assert any("mine" in line and "not in the file" in line for line in diff.splitlines())


def test_prices_diff_agrees_with_the_table_it_came_from(tmp_path: Path) -> None:
    same = tmp_path / "same.json"
    per_token = {
        "deepseek-chat": {
            "input_cost_per_token": 0.27e-6,
            "output_cost_per_token": 1.1e-6,
            "cache_read_input_token_cost": 0.07e-6,
            "max_input_tokens": 128000,
        },
        "mine": {"input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6},
    }
    same.write_text(json.dumps(per_token))
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    done = subprocess.run(
        [sys.executable, "-m", "batchroute", "prices", "--job", str(job), "--diff", str(same)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "160"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "agrees with every price above" in done.stdout


def test_prices_of_a_job_with_an_unpriced_model_is_a_clear_error(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: t\ninput: {path: in.jsonl}\ntiers: {standard: nowhere-priced}\n")
    code, out = invoke("--job", str(job))
    assert code != 0
    assert "models.nowhere-priced: no price for 'nowhere-priced'" in out
    assert "Traceback" not in out
