"""The run directory: template resolution, --fresh siblings, and atomic files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from batchroute.config import Job, parse_job
from batchroute.errors import JobError
from batchroute.store.rundir import atomic_file, holds_run, remove_tmp_files, resolve_run_dir

NOW = datetime(2026, 11, 27, 3, 15, 0)


def _job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str) -> Job:
    monkeypatch.chdir(tmp_path)
    data = {
        "name": "tests",
        "input": {"path": "prompts.jsonl"},
        "tiers": {"standard": "m"},
        "models": {"m": {"input_per_mtok": 1, "output_per_mtok": 2}},
        "output": {"dir": template},
    }
    path = tmp_path / "job.yaml"
    return Job(parse_job(data, path=path), path=path, text_sha256="0" * 64)


def test_template_fields_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, monkeypatch, "runs/{name}/{date}-{time}")
    run_dir = resolve_run_dir(job, now=NOW)
    assert run_dir == tmp_path / "runs" / "tests" / "2026-11-27-031500"
    assert not run_dir.exists()  # created by the runner only once the input is valid


def test_absolute_template_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(tmp_path, monkeypatch, str(tmp_path / "elsewhere" / "{name}"))
    assert resolve_run_dir(job, now=NOW) == tmp_path / "elsewhere" / "tests"


@pytest.mark.parametrize("template", ["runs/{nmae}", "runs/{name.__class__}", "runs/{name"])
def test_bad_template_is_a_job_error_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    job = _job(tmp_path, monkeypatch, template)
    with pytest.raises(JobError, match="output.dir") as caught:
        resolve_run_dir(job, now=NOW)
    assert str(tmp_path / "job.yaml") in str(caught.value)


def test_rerun_resolves_to_the_same_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, monkeypatch, "runs/{name}")
    first = resolve_run_dir(job, now=NOW)
    (first / "parts").mkdir(parents=True)
    assert resolve_run_dir(job, now=NOW) == first


def test_fresh_picks_the_next_sibling_only_when_a_run_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, monkeypatch, "runs/{name}")
    base = tmp_path / "runs" / "tests"
    assert resolve_run_dir(job, fresh=True, now=NOW) == base
    base.mkdir(parents=True)
    assert resolve_run_dir(job, fresh=True, now=NOW) == base  # an empty dir holds no run
    (base / "run.json").write_text("{}")
    second = resolve_run_dir(job, fresh=True, now=NOW)
    assert second == tmp_path / "runs" / "tests.2"
    (second / ".lock").parent.mkdir()
    (second / ".lock").write_text("")
    assert resolve_run_dir(job, fresh=True, now=NOW) == tmp_path / "runs" / "tests.3"


def test_plain_rerun_resumes_the_latest_fresh_sibling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, monkeypatch, "runs/{name}")
    for name in ("tests", "tests.2", "tests.10"):
        (tmp_path / "runs" / name / "parts").mkdir(parents=True)
    (tmp_path / "runs" / "tests.11").mkdir()  # empty: not a run
    (tmp_path / "runs" / "tests-old.5" / "parts").mkdir(parents=True)  # another name
    assert resolve_run_dir(job, now=NOW) == tmp_path / "runs" / "tests.10"
    assert holds_run(tmp_path / "runs" / "tests.10")
    assert not holds_run(tmp_path / "runs" / "tests.11")


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]  # the tmp is gone too
    with atomic_file(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"


def test_remove_tmp_files_deletes_only_leftovers(tmp_path: Path) -> None:
    (tmp_path / "a.parquet.tmp").write_bytes(b"partial")
    (tmp_path / "a.parquet").write_bytes(b"whole")
    assert remove_tmp_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.parquet"]
    assert remove_tmp_files(tmp_path / "missing") == 0
