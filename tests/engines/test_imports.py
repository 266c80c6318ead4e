"""What a local run imports before its first request (issue 15: start-up CPU)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import sample_rows

NOT_ON_A_LOCAL_RUN = (
    "ray",  # the Ray engine: only `engine.kind: ray`
    "batchroute.engines.ray",
    "jsonschema",  # only a job with a `json_schema` check
    "sklearn",  # only `batchroute train`
    "aiohttp.web",  # the simulator's server: only a job whose endpoint is the simulator
    "batchroute.sim.server",
    "batchroute.dispatch.batch",  # the Batch API runner: only batch-mode tiers or --no-wait
    "rich.live",  # the live progress view: only when a terminal shows it
    "rich.progress",
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


NOT_IN_A_RUN = ("pyarrow",)  # results, attempts and reports are written through polars


def test_a_whole_local_run_imports_no_pyarrow(
    make_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run from a JSONL input to its reports never loads pyarrow (a twelfth of a second)."""
    monkeypatch.setenv("BR_TEST_KEY", "sk-test")
    job = make_job(sample_rows(30), output={"dir": "runs/{name}", "checkpoint_rows": 7})
    code = (
        "import sys\n"
        "from batchroute.cli import main\n"
        "try:\n"
        f"    main(['run', {str(job)!r}, '--quiet'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        f"print('loaded:' + ','.join(m for m in {NOT_IN_A_RUN!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "loaded:\n" in done.stdout, done.stdout
    assert (job.parent / "runs" / "t" / "results.parquet").is_file()


def test_the_console_script_freezes_what_a_command_imports() -> None:
    """`entry`'s process leaves the objects its imports built out of every collection (issue 15),
    instead of in the young generation, for a first collection that would walk them all."""
    code = (
        "import gc, click\n"
        "import batchroute.cli as cli\n"
        "cli._freeze_imports = True  # as entry() sets it\n"
        "cli.main.get_command(click.Context(cli.main), 'run')\n"
        "print(gc.get_freeze_count())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(done.stdout) > 100_000


def test_an_in_process_caller_keeps_its_collector_as_it_was() -> None:
    import gc

    import click

    from batchroute.cli import main

    frozen, enabled = gc.get_freeze_count(), gc.isenabled()
    main.get_command(click.Context(main), "validate")
    assert (gc.get_freeze_count(), gc.isenabled()) == (frozen, enabled)
