"""The run directory: template resolution, which run a rerun resumes, and atomic files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchroute.config import Job, parse_job
from batchroute.errors import JobError
from batchroute.exitcodes import ExitCode
from batchroute.store.manifest import RunManifest, write_manifest
from batchroute.store.rundir import (
    atomic_file,
    find_runs,
    remove_tmp_files,
    resolve_run_dir,
    select_run_dir,
)

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


def _run(path: Path, *, started: datetime, exit_code: ExitCode | None, sessions: int = 1) -> Path:
    """A run directory whose manifest says when its last session started and how it ended."""
    path.mkdir(parents=True)
    manifest = None
    for n in range(sessions):
        begun = started - timedelta(hours=sessions - 1 - n)
        last = n == sessions - 1
        manifest = RunManifest.for_session(
            manifest,
            job_path="job.yaml",
            job_sha256="0" * 64,
            run_id=f"s{n}",
            started_at=begun.astimezone(UTC),
            finished_at=None if last and exit_code is None else begun.astimezone(UTC),
            exit_code=exit_code if last else ExitCode.INTERRUPTED,
        )
    assert manifest is not None
    write_manifest(path, manifest)
    return path


def test_pinned_dir_is_used_even_when_a_fresh_sibling_is_newer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, monkeypatch, "runs/{name}")
    base = _run(tmp_path / "runs" / "tests", started=NOW, exit_code=None)
    _run(tmp_path / "runs" / "tests.2", started=NOW + timedelta(minutes=5), exit_code=None)
    (tmp_path / "runs" / "tests.10" / "parts").mkdir(parents=True)
    choice = select_run_dir(job, now=NOW)
    assert choice.path == base and choice.resumes
    assert "output.dir" in choice.reason
    assert resolve_run_dir(job, fresh=True, now=NOW) == tmp_path / "runs" / "tests.11"


def test_rerun_after_midnight_resumes_the_run_interrupted_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, monkeypatch, "runs/{name}/{date}")
    evening = datetime(2026, 12, 5, 23, 50).astimezone()
    crashed = _run(tmp_path / "runs" / "tests" / "2026-12-05", started=evening, exit_code=None)
    after_midnight = datetime(2026, 12, 6, 0, 10).astimezone()
    choice = select_run_dir(job, now=after_midnight)
    assert choice.path == crashed and choice.resumes
    assert "unfinished" in choice.reason
    fresh = select_run_dir(job, fresh=True, now=after_midnight)
    assert fresh.path == tmp_path / "runs" / "tests" / "2026-12-06" and not fresh.resumes


def test_a_finished_run_is_not_resumed_on_a_later_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, monkeypatch, "runs/{name}/{date}")
    _run(tmp_path / "runs" / "tests" / "2026-12-05", started=NOW, exit_code=ExitCode.SOME_FAILED)
    choice = select_run_dir(job, now=datetime(2026, 12, 6, 3, 0))
    assert choice.path == tmp_path / "runs" / "tests" / "2026-12-06" and not choice.resumes


def test_a_fresh_run_made_meanwhile_does_not_capture_the_plain_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: `--fresh --limit 1` beside a locked run made `.2`; the rerun must resume the
    first run, which is the unfinished one."""
    job = _job(tmp_path, monkeypatch, "runs/{name}/{date}")
    day = tmp_path / "runs" / "tests" / "2026-11-27"
    first = _run(day, started=NOW, exit_code=ExitCode.INTERRUPTED, sessions=2)
    _run(day.with_name("2026-11-27.2"), started=NOW + timedelta(minutes=1), exit_code=ExitCode.OK)
    assert select_run_dir(job, now=NOW + timedelta(minutes=2)).path == first
    # and --fresh while `first` is unfinished still goes to a new sibling, never into it
    assert resolve_run_dir(job, fresh=True, now=NOW) == day.with_name("2026-11-27.3")


def test_the_newest_of_several_unfinished_runs_is_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, monkeypatch, "runs/{name}/{date}")
    root = tmp_path / "runs" / "tests"
    _run(root / "2026-11-20", started=NOW - timedelta(days=7), exit_code=ExitCode.BUDGET)
    newer = _run(root / "2026-11-25", started=NOW - timedelta(days=2), exit_code=ExitCode.ABORTED)
    _run(root / "2026-11-26", started=NOW - timedelta(days=1), exit_code=ExitCode.OK)
    assert select_run_dir(job, now=NOW).path == newer
    assert [run.path.name for run in find_runs(job)] == ["2026-11-20", "2026-11-25", "2026-11-26"]
    assert [run.finished for run in find_runs(job)] == [False, False, True]


def test_run_dir_option_names_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, monkeypatch, "runs/{name}/{date}")
    _run(tmp_path / "runs" / "tests" / "2026-11-26", started=NOW, exit_code=None)
    choice = select_run_dir(job, run_dir=Path("elsewhere/x"), now=NOW)
    assert choice.path == tmp_path / "elsewhere" / "x" and not choice.resumes


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
