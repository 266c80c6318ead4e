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


def test_an_unreachable_cluster_is_a_clear_error(make_job: JobFactory) -> None:
    ray = pytest.importorskip("ray", reason="needs ray to get as far as connecting")
    import socket

    if ray.is_initialized():
        pytest.skip("this process is already connected to a cluster, which the run would use")

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = load_job(make_job(sample_rows(3)))
    options = RunOptions(engine="ray", address=f"127.0.0.1:{port}")
    with pytest.raises(EngineUnavailableError, match="cannot reach the Ray cluster") as info:
        run_job(job, options, progress=Progress(live=False, enabled=False))
    assert info.value.exit_code == ExitCode.BAD_INPUT
