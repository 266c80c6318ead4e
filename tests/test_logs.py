"""Logs for machines: JSON lines with the run id, progress when not on a terminal, --quiet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import sample_rows

SLOW = {"default": {"latency_ms": 60}}
SLOW_MODELS = {
    "big": {"input_per_mtok": 5, "output_per_mtok": 25, "max_concurrency": 4},
    "mid": {"input_per_mtok": 3, "output_per_mtok": 15, "max_concurrency": 4},
    "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1, "max_concurrency": 4},
}


def run(job: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )


def test_json_logs_carry_run_id_and_progress_but_no_prompt_text(
    make_job: Callable[..., Path],
) -> None:
    rows = sample_rows(60)
    job = make_job(rows, simulator=SLOW, models=SLOW_MODELS, run={"progress_interval_s": 0.2})
    proc = run(job, "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(line) for line in proc.stderr.splitlines()]
    run_id = json.loads(Path("runs/t/run.json").read_text())["run_id"]
    assert entries and all(entry["run_id"] == run_id for entry in entries)
    progress = [e["msg"] for e in entries if e["msg"].startswith("progress:")]
    assert progress, "a progress line every progress_interval_s when not on a terminal"
    assert all("rows/s" in line and "eta" in line and "in flight" in line for line in progress)
    for row in rows:
        assert row["prompt"] not in proc.stderr


def test_quiet_keeps_only_warnings_and_the_final_summary(make_job: Callable[..., Path]) -> None:
    job = make_job(
        sample_rows(30), simulator=SLOW, models=SLOW_MODELS, run={"progress_interval_s": 0.2}
    )
    proc = run(job, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "exit 0" in proc.stdout
