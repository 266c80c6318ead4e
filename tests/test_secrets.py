"""API keys never appear in logs, errors, outputs or reports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import sample_rows

KEY = "sk-test-Zq81SECRETkeyVALUE0042"


def _everything_written(root: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file())


def _run(job: Path, env_key: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "BR_TEST_KEY": env_key}
    return subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job), "--log-format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("sent_key", [KEY, KEY + "-wrong"])
def test_key_never_leaks_into_logs_errors_or_files(
    make_job: Callable[..., Path], tmp_path: Path, sent_key: str
) -> None:
    """A right key (with faults on the way) and a refused key both leave no trace of it."""
    faults = {"server_error": 0.2, "malformed": 0.1, "retry_after_s": 0.05}
    simulator = {"require_api_key": KEY, "default": {"faults": faults}}
    job = make_job(sample_rows(30), simulator=simulator)
    proc = _run(job, sent_key)
    if sent_key == KEY:
        assert proc.returncode in (0, 1), proc.stderr
    else:
        assert proc.returncode == 4, proc.stderr  # aborted: the key was refused
        assert "BR_TEST_KEY" in proc.stderr  # the message names the variable to fix
    written = _everything_written(tmp_path / "runs")
    assert written  # the run wrote results and reports either way
    for secret in {KEY, sent_key}:
        # the job file itself names the simulator's expected key; everything else must not
        assert secret not in proc.stdout
        assert secret not in proc.stderr
        assert secret.encode() not in written
