"""Resuming through the real runner: which run resumes, what a reused row keeps, torn journals.

Each run goes through the CLI in-process to the embedded simulator over loopback.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from batchroute.cli import main
from batchroute.errors import OutputError
from batchroute.store.journal import encode_index, encode_rows
from batchroute.store.lock import RunLock
from tests.conftest import sample_rows

JobFactory = Callable[..., Path]


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _manifest(run_dir: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(run_dir, "run.json").read_text())
    return data


def test_reused_rows_take_line_index_and_metadata_from_the_current_input(
    make_job: JobFactory,
) -> None:
    """Issue 14: reorder the input and edit a metadata column; only the answer is reused."""
    rows = sample_rows(30)
    job = make_job(rows)
    assert run_cli("run", str(job))[0] == 0
    first = pl.read_parquet("runs/t/results.parquet")
    edited = [{**row, "team": f"ops-{i}"} for i, row in enumerate(reversed(rows))]
    make_job(edited)
    code, _, err = run_cli("run", str(job))
    assert code == 0, err
    assert _manifest("runs/t")["sessions"][-1]["sent_rows"] == 0  # every answer reused
    again = pl.read_parquet("runs/t/results.parquet")
    assert again["id"].to_list() == [row["id"] for row in edited]
    assert again["row_index"].to_list() == list(range(30))
    assert again["line"].to_list() == list(range(1, 31))
    assert again["team"].to_list() == [f"ops-{i}" for i in range(30)]
    answers = dict(zip(first["id"], first["content"], strict=True))
    assert again["content"].to_list() == [answers[row["id"]] for row in edited]


def _crashed_journal_from(run_dir: Path, *, keep_whole: int) -> int:
    """Turn a finished run back into a crashed one: its parts become one session's journal of
    ten-row commits, the last record torn mid-write; return the rows in whole records."""
    parts = run_dir / "parts"
    read = {
        kind: pl.concat(pl.read_parquet(p) for p in sorted(parts.glob(f"{kind}-*.parquet")))
        for kind in ("index", "results", "attempts")
    }
    for path in parts.iterdir():
        path.unlink()
    records = [encode_index(read["index"])]
    results = read["results"].sort("row_index")
    for start in range(0, results.height, 10):
        chunk = results.slice(start, 10)
        keys = chunk["row_key"].implode()
        records.append(encode_rows(chunk, read["attempts"].filter(pl.col("row_key").is_in(keys))))
    records = records[: 1 + keep_whole // 10 + 1]
    data = b"".join(records)
    (parts / "journal-0001-crashed.log").write_bytes(data[: len(data) - len(records[-1]) // 2])
    for name in ("run.json", "results.parquet", "attempts.parquet"):
        (run_dir / name).unlink()
    return keep_whole


def test_a_torn_journal_tail_is_dropped_and_its_rows_sent_again(make_job: JobFactory) -> None:
    job = make_job(sample_rows(40))
    assert run_cli("run", str(job))[0] == 0
    whole = _crashed_journal_from(Path("runs/t"), keep_whole=20)
    code, _, err = run_cli("run", str(job), "--no-cache")  # the torn rows are really sent
    assert code == 0, err
    resumed = _manifest("runs/t")["sessions"][-1]
    assert (resumed["reused_rows"], resumed["sent_rows"]) == (whole, 40 - whole)
    results = pl.read_parquet("runs/t/results.parquet")
    assert results["id"].to_list() == [f"r{i:04d}" for i in range(40)]
    assert (results["status"] == "ok").all()
    assert not list(Path("runs/t/parts").glob("journal-*"))


_UNSET_KEY = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "BR_UNSET_KEY_14"}


def test_a_run_that_fails_before_sending_leaves_no_directory(make_job: JobFactory) -> None:
    job = make_job(sample_rows(5), endpoint=_UNSET_KEY)
    code, _, err = run_cli("run", str(job))
    assert code == 6 and "BR_UNSET_KEY_14" in err
    assert not Path("runs/t").exists()


def _with_a_bad_last_line(job: Path) -> None:
    """Break the input's last line: the reader meets it only once the run has started."""
    data = job.parent / "prompts.jsonl"
    data.write_text(data.read_text() + "{not json\n")


def test_a_run_that_fails_after_creating_its_directory_removes_it(
    make_job: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that dies before any row settles leaves no directory behind for `runs`."""

    class _FailingLock(RunLock):
        def __enter__(self) -> RunLock:
            assert Path("runs/t").is_dir()  # the failure comes after the directory exists
            raise OutputError("the lock file cannot be written", path=Path("runs/t/.lock"))

    monkeypatch.setattr("batchroute.engines.startup.RunLock", _FailingLock)
    job = make_job(sample_rows(5))
    code, _, err = run_cli("run", str(job))
    assert code == 7 and "lock file" in err
    assert not Path("runs/t").exists()


def test_a_resume_that_fails_before_sending_leaves_the_run_as_it_was(
    make_job: JobFactory,
) -> None:
    job = make_job(sample_rows(5))
    assert run_cli("run", str(job))[0] == 0
    before = Path("runs/t/run.json").read_text()
    make_job(sample_rows(5), endpoint=_UNSET_KEY)
    assert run_cli("run", str(job))[0] == 6
    _with_a_bad_last_line(make_job(sample_rows(5)))
    assert run_cli("run", str(job))[0] == 6
    assert Path("runs/t/run.json").read_text() == before
    assert run_cli("report", "runs/t")[0] == 0


def test_fresh_beside_a_locked_run_does_not_capture_the_plain_rerun(
    make_job: JobFactory,
) -> None:
    """Issue 14: `--fresh --limit 1` while the first run held its lock; the rerun resumes the
    first run, the unfinished one, not the newer fresh one."""
    job = make_job(sample_rows(20), output={"dir": "runs/{name}/{date}"})
    assert run_cli("run", str(job), "--limit", "12")[0] == 0
    (first,) = Path("runs/t").iterdir()
    manifest = _manifest(str(first))
    manifest |= {"finished_at": None, "exit_code": None, "exit_status": None}
    (first / "run.json").write_text(json.dumps(manifest))  # as if it had crashed
    with RunLock(first, run_id="holder"):
        code, _, err = run_cli("run", str(job), "--fresh", "--limit", "1")
        assert code == 0, err
    fresh = first.with_name(first.name + ".2")
    assert _manifest(str(fresh))["counts"]["ok"] == 1
    code, _, err = run_cli("run", str(job))
    assert code == 0, err
    resumed = _manifest(str(first))["sessions"][-1]
    assert (resumed["reused_rows"], resumed["sent_rows"]) == (12, 8)
    code, out, _ = run_cli("runs", str(job))
    assert code == 0, out
    assert f"{first.name}.2" in out and "ok" in out and f"resumes {first}" in out


def test_run_dir_option_resumes_that_directory(make_job: JobFactory) -> None:
    job = make_job(sample_rows(10))
    assert run_cli("run", str(job), "--run-dir", "elsewhere")[0] == 0
    assert not Path("runs").exists()
    assert run_cli("run", str(job), "--run-dir", "elsewhere")[0] == 0
    manifest = _manifest("elsewhere")
    assert manifest["sessions"][-1]["reused_rows"] == 10
    assert re.fullmatch(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}", manifest["run_id"])  # new_run_id
    code, _, err = run_cli("run", str(job), "--run-dir", "elsewhere", "--fresh")
    assert code == 2 and "exclude" in err
    assert os.path.isdir("elsewhere/parts")


def test_a_changed_request_re_buys_the_rows_it_changes(make_job: JobFactory) -> None:
    """The runner keys rows with their tier's context: what decides an answer, not just the row."""
    rows = sample_rows(20)
    job = make_job(rows)
    assert run_cli("run", str(job))[0] == 0
    first = pl.read_parquet("runs/t/results.parquet")
    make_job(rows, request={"max_tokens": 64, "temperature": 0.5})
    code, _, err = run_cli("run", str(job))
    assert code == 0, err
    assert _manifest("runs/t")["sessions"][-1]["sent_rows"] == 20
    again = pl.read_parquet("runs/t/results.parquet")
    assert not set(again["row_key"]) & set(first["row_key"])


def test_runs_lists_every_run_below_a_folder_with_its_status(make_job: JobFactory) -> None:
    job = make_job(sample_rows(6))
    assert run_cli("run", str(job))[0] == 0
    assert run_cli("run", str(job), "--fresh", "--limit", "2")[0] == 0
    manifest = _manifest("runs/t.2") | {"finished_at": None, "exit_code": None}
    Path("runs/t.2/run.json").write_text(json.dumps(manifest))  # as if it had crashed
    code, out, _ = run_cli("runs")
    assert code == 0, out
    lines = [line for line in out.splitlines() if "runs/t" in line]
    assert len(lines) == 2
    assert "ok" in lines[0] and "6" in lines[0]
    assert "crashed" in lines[1]
