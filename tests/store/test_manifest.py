"""run.json: round trip, resume history, atomic writes, and damaged manifests."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path

import pytest

from batchroute.errors import OutputError
from batchroute.exitcodes import ExitCode
from batchroute.store.manifest import RunManifest, new_run_id, read_manifest, write_manifest

T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def _session(
    previous: RunManifest | None, run_id: str, start: datetime, **fields: object
) -> RunManifest:
    return RunManifest.for_session(
        previous,
        job_path="jobs/nightly.yaml",
        job_sha256="ab" * 32,
        run_id=run_id,
        started_at=start,
        price_source="job",
        price_sha256="cd" * 32,
        pid=4242,
        **fields,  # type: ignore[arg-type]
    )


def test_round_trip_keeps_every_field_exactly(tmp_path: Path) -> None:
    manifest = _session(
        None,
        "r1",
        T0,
        finished_at=T0 + timedelta(minutes=5),
        counts={"ok": 98, "failed": 2},
        total_cost_usd=Decimal("12.345678901234"),
        exit_code=ExitCode.SOME_FAILED,
        budget_hit=False,
        sent_rows=100,
    )
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    raw = json.loads((tmp_path / "run.json").read_text())
    assert raw["total_cost_usd"] == "12.345678901234"  # money as a decimal string
    assert raw["exit_status"] == "some_failed" and raw["exit_code"] == 1
    assert raw["batchroute_version"] == version("batchroute")
    assert raw["job_sha256"] == "ab" * 32 and raw["price_sha256"] == "cd" * 32


def test_resume_history_has_one_entry_per_session(tmp_path: Path) -> None:
    started = _session(None, "r1", T0)
    write_manifest(tmp_path, started)  # the first session crashes here: never ended
    previous = read_manifest(tmp_path)
    t1 = T0 + timedelta(hours=1)
    resuming = _session(previous, "r2", t1, reused_rows=60)
    ended = _session(
        previous,
        "r2",
        t1,
        finished_at=t1 + timedelta(minutes=2),
        exit_code=ExitCode.OK,
        counts={"ok": 100},
        sent_rows=40,
        reused_rows=60,
    )
    assert [s.run_id for s in resuming.sessions] == ["r1", "r2"]
    write_manifest(tmp_path, ended)
    final = read_manifest(tmp_path)
    assert final is not None
    assert [s.run_id for s in final.sessions] == ["r1", "r2"]  # r2 replaced, not repeated
    crashed, resumed = final.sessions
    assert crashed.ended_at is None and crashed.exit_status is None
    assert (resumed.sent_rows, resumed.reused_rows, resumed.exit_status) == (40, 60, "ok")
    assert final.run_id == "r2"
    assert final.started_at == T0  # the run began with its first session
    assert final.finished_at == t1 + timedelta(minutes=2)


def test_warnings_are_kept_per_session_and_gathered_once_for_the_run(tmp_path: Path) -> None:
    gone = "model small is gone for this run (404)"
    over = "over the forecast: spend $2 passed the forecast $1 by $1"
    first = _session(None, "r1", T0, warnings=(gone,))
    write_manifest(tmp_path, first)
    second = _session(read_manifest(tmp_path), "r2", T0 + timedelta(hours=1), warnings=(gone, over))
    write_manifest(tmp_path, second)
    final = read_manifest(tmp_path)
    assert final is not None
    assert [s.warnings for s in final.sessions] == [(gone,), (gone, over)]
    assert final.warnings == (gone, over)
    assert json.loads((tmp_path / "run.json").read_text())["warnings"] == [gone, over]


def test_failed_write_leaves_the_old_manifest_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_manifest(tmp_path, _session(None, "r1", T0))

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OutputError, match="No space left"):
        write_manifest(tmp_path, _session(None, "r2", T0))
    monkeypatch.undo()
    manifest = read_manifest(tmp_path)
    assert manifest is not None and manifest.run_id == "r1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_missing_manifest_reads_as_none(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None


@pytest.mark.parametrize("text", ['{"run_id": ', '{"run_id": "r1"}', "[]"])
def test_damaged_manifest_is_an_output_error_naming_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(OutputError) as caught:
        read_manifest(tmp_path)
    assert str(tmp_path / "run.json") in str(caught.value)
    assert "--fresh" in str(caught.value)
    assert caught.value.exit_code == 7


def test_manifest_from_a_newer_version_with_extra_keys_still_reads(tmp_path: Path) -> None:
    write_manifest(tmp_path, _session(None, "r1", T0))
    data = json.loads((tmp_path / "run.json").read_text())
    data["added_later"] = {"x": 1}
    (tmp_path / "run.json").write_text(json.dumps(data))
    manifest = read_manifest(tmp_path)
    assert manifest is not None and manifest.run_id == "r1"


def test_run_ids_sort_by_time_and_are_safe_in_file_names() -> None:
    early = new_run_id(now=T0)
    late = new_run_id(now=T0 + timedelta(seconds=1))
    assert re.fullmatch(r"20261127T030000Z-[0-9a-f]{6}", early)
    assert early < late
    assert new_run_id(now=T0) != early  # random suffix
