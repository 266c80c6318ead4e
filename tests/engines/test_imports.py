"""What a local run imports before its first request (issue 15: start-up CPU)."""

from __future__ import annotations

import subprocess
import sys

NOT_ON_A_LOCAL_RUN = (
    "ray",  # the Ray engine: only `engine.kind: ray`
    "batchroute.engines.ray",
    "jsonschema",  # only a job with a `json_schema` check
    "sklearn",  # only `batchroute train`
    "aiohttp.web",  # the simulator's server: only a job whose endpoint is the simulator
    "batchroute.sim.server",
)


def test_a_local_run_imports_no_engine_or_check_it_does_not_use() -> None:
    """The modules the `run` command and the local engine load leave these out."""
    code = (
        "import sys, batchroute.cli.run, batchroute.engines.local\n"
        f"print(','.join(m for m in {NOT_ON_A_LOCAL_RUN!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""
