"""`batchroute sim` and the simulator config file it reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.errors import JobError
from batchroute.sim import SimConfig, load_sim_config

GOOD = """\
seed: 3
require_api_key: ${SIM_TEST_KEY:-local-key}
default: {latency_ms: 0}
models:
  bulk-model: {not_found: true}
  gpt-5.5: {rpm: 600, faults: {server_error: 0.1}}
"""


def test_load_sim_config_reads_a_simulator_file(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(GOOD)
    config = load_sim_config(path)
    assert config.seed == 3 and config.require_api_key == "local-key"
    assert config.for_model("bulk-model").not_found
    assert config.for_model("gpt-5.5").faults.server_error == 0.1


def test_load_sim_config_takes_a_job_files_simulator_section(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: x\ninput: {path: in.jsonl}\nsimulator:\n  seed: 11\n")
    assert load_sim_config(path) == SimConfig(seed=11)


def test_load_sim_config_names_the_file_and_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  gpt-5.5: {faults: {hang: 2.5}}\n")
    with pytest.raises(JobError) as caught:
        load_sim_config(path)
    assert str(path) in str(caught.value)
    assert "models.gpt-5.5.faults.hang" in str(caught.value)
    path.write_text("simulator:\n  modles: {}\n")
    with pytest.raises(JobError, match=r"simulator\.modles: is not a simulator setting"):
        load_sim_config(path)


def test_sim_command_with_a_bad_config_exits_6_with_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("default: {rpm: -5}\n")
    result = CliRunner().invoke(main, ["sim", "--config", str(path)])
    assert result.exit_code == 6
    assert "default.rpm" in result.output and str(path) in result.output
    assert "Traceback" not in result.output


def test_sim_command_serves_until_sigterm_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(GOOD)
    env = {**os.environ, "SIM_TEST_KEY": "cli-key"}
    process = subprocess.Popen(
        [sys.executable, "-m", "batchroute", "sim", "--port", "0", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        request = urllib.request.Request(
            base_url + "/models", headers={"Authorization": "Bearer cli-key"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            ids = [m["id"] for m in json.loads(response.read())["data"]]
        assert ids == ["gpt-5.5"]
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert stderr == ""
