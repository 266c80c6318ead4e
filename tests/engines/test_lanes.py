"""The runner under slow models and signals: per-tier lanes, and nothing sent after SIGTERM.

End to end through `batchroute run`, the real AsyncOpenAI client and a simulator in a background
thread, whose server-side counts say what was sent. No assertion reads a duration.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.config import load_job
from batchroute.engines.local import RunOptions, run_job
from batchroute.engines.workers import WorkerPool
from batchroute.exitcodes import ExitCode
from batchroute.progress import Progress
from batchroute.sim import EmbeddedSimulator, SimConfig

JobFactory = Callable[..., Path]


def _rows(tiers: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i:03d}", "prompt": f"Explain item {i} briefly.", "team": "data", "tier": tier}
        for i, tier in enumerate(tiers)
    ]


def _models(**extra: dict[str, Any]) -> dict[str, Any]:
    models: dict[str, Any] = {
        "big": {"input_per_mtok": 5, "output_per_mtok": 25, "fallback": "mid"},
        "mid": {"input_per_mtok": 3, "output_per_mtok": 15, "fallback": "big"},
        "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1, "fallback": "mid"},
    }
    for name, settings in extra.items():
        models[name] = {**models[name], **settings}
    return models


def _run(job: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", str(job)], catch_exceptions=False)
    return result.exit_code, result.stderr


def test_a_slow_tier_does_not_starve_another(make_job: JobFactory) -> None:
    """The complex tier's model allows one request every two seconds; its rows come first in
    the file. Every standard row is still sent before the complex tier's second request."""
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(
            _rows(["complex"] * 3 + ["standard"] * 6),
            endpoint={"base_url": sim.base_url, "api_key_env": None, "timeout_s": 10},
            models=_models(big={"rpm": 30, "max_concurrency": 2}),
            run={"max_in_flight": 2},
        )
        code, err = _run(job)
    assert code == ExitCode.OK, err
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    results = pl.read_parquet("runs/t/results.parquet").select("row_index", "tier")
    attempts = attempts.join(results, on="row_index")
    complex_starts = attempts.filter(pl.col("tier") == "complex")["started_at"].sort()
    standard_starts = attempts.filter(pl.col("tier") == "standard")["started_at"]
    assert standard_starts.len() == 6 and complex_starts.len() == 3
    assert standard_starts.max() < complex_starts[1]


def test_sigterm_sends_nothing_more_even_for_rows_waiting_on_a_limiter(
    make_job: JobFactory,
) -> None:
    """Rows waiting on a slow limiter when SIGTERM arrives are skipped, not sent in the grace."""
    seen_at_signal: list[int] = []
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(
            _rows(["standard"] * 8),
            endpoint={"base_url": sim.base_url, "api_key_env": None, "timeout_s": 10},
            models=_models(mid={"rpm": 30}),
            run={"grace_s": 5},
        )
        done = threading.Event()

        def signal_after_first_request() -> None:
            while not done.is_set():
                total = int(sim.stats()["total"])
                if total >= 1:
                    seen_at_signal.append(total)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                done.wait(0.005)

        killer = threading.Thread(target=signal_after_first_request)
        killer.start()
        try:
            code, err = _run(job)
        finally:
            done.set()
            killer.join()
        sent = int(sim.stats()["total"])
    assert code == ExitCode.INTERRUPTED, err
    assert seen_at_signal == [1]
    assert sent == 1, "nothing left after the signal"
    results = pl.read_parquet("runs/t/results.parquet")
    counts = dict(results["status"].value_counts().iter_rows())
    assert counts == {"ok": 1, "skipped_interrupted": 7}


def test_a_retired_model_is_loud_on_stderr_and_in_the_summary(make_job: JobFactory) -> None:
    job = make_job(
        _rows(["bulk"] * 4 + ["standard"] * 4), simulator={"models": {"small": {"not_found": True}}}
    )
    code, err = _run(job)
    assert code == ExitCode.OK, err
    assert "model small is gone for this run" in err
    assert "bulk" in err
    summary = run_job(
        load_job(job), RunOptions(fresh=True), progress=Progress(live=False, enabled=False)
    )
    assert any("small is gone for this run" in warning for warning in summary.warnings)


def test_the_run_starts_only_the_senders_its_lanes_can_use(
    make_job: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row is sent holding a slot of its lane, so the lanes' capacities bound the senders
    busy at once: no more are started (issue 15), and every row is still sent."""
    sizes: list[int] = []
    init = WorkerPool.__init__

    def recording(self: WorkerPool[Any], size: int, handle: Any) -> None:
        sizes.append(size)
        init(self, size, handle)

    monkeypatch.setattr(WorkerPool, "__init__", recording)
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(
            _rows(["complex", "standard", "structured", "bulk"] * 5),
            endpoint={"base_url": sim.base_url, "api_key_env": None, "timeout_s": 10},
            models=_models(big={"max_concurrency": 2}, mid={"max_concurrency": 3}),
            run={"max_in_flight": 100},
        )
        code, err = _run(job)
    assert code == ExitCode.OK, err
    # complex: big (2); standard and structured: mid (3 each); bulk: small (the default 64,
    # held to a fair share of max_in_flight among four tiers: 25)
    assert sizes == [2 + 3 + 3 + 25]
    assert pl.read_parquet("runs/t/results.parquet")["status"].to_list() == ["ok"] * 20
