"""The `engine:` job key and `--engine`, without a Ray cluster."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchroute.config import load_job
from batchroute.engines.local import RunOptions, run_job
from batchroute.errors import EngineUnavailableError, JobError
from batchroute.exitcodes import ExitCode
from batchroute.progress import Progress
from tests.conftest import sample_rows

JobFactory = Callable[..., Path]


def test_engine_defaults_to_local(make_job: JobFactory) -> None:
    engine = load_job(make_job(sample_rows(2))).config.engine
    assert (engine.kind, engine.address, engine.workers) == ("local", None, None)


def test_engine_key_is_validated(make_job: JobFactory) -> None:
    job = load_job(
        make_job(sample_rows(2), engine={"kind": "ray", "address": "auto", "workers": 4})
    )
    assert job.config.engine.kind == "ray" and job.config.engine.workers == 4
    for bad in ({"kind": "spark"}, {"kind": "ray", "workers": 0}, {"kind": "ray", "nodes": 2}):
        with pytest.raises(JobError, match="engine"):
            load_job(make_job(sample_rows(2), engine=bad))


def test_missing_ray_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, make_job: JobFactory
) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    job = load_job(make_job(sample_rows(3)))
    with pytest.raises(EngineUnavailableError, match=r"pip install 'batchroute\[ray\]'") as info:
        run_job(job, RunOptions(engine="ray"), progress=Progress(live=False, enabled=False))
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert not Path("runs").exists(), "nothing is written"
