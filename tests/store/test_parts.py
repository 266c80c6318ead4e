"""Durable parts, and what earlier sessions settled."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from batchroute.errors import OutputError
from batchroute.schema import RESULT_SCHEMA, Status
from batchroute.store.parts import PartWriter, list_parts


def _records(keys: list[str], status: str, *, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row_index": list(range(start, start + len(keys))),
            "row_key": keys,
            "id": keys,
            "status": [status] * len(keys),
            "content": [f"answer {k}" for k in keys],
        }
    )


def test_store_flushes_a_part_every_n_rows(tmp_path: Path) -> None:
    store = PartWriter(tmp_path, session="s1", flush_rows=3)
    store.add(_records(["a", "b"], Status.OK))
    assert list_parts(tmp_path, "results") == []
    store.add(_records(["c"], Status.OK, start=2))
    assert [p.path.name for p in list_parts(tmp_path, "results")] == [
        "results-0001-s1-000001.parquet"
    ]
    store.add(_records(["d"], Status.OK, start=3))
    store.close()
    parts = list_parts(tmp_path, "results")
    assert [p.seq for p in parts] == [1, 2]
    frame = pl.read_parquet([p.path for p in parts])
    assert frame["row_key"].to_list() == ["a", "b", "c", "d"]
    assert frame.columns[: len(RESULT_SCHEMA)] == RESULT_SCHEMA.names()
    assert store.rows_written == 4


def test_close_writes_what_is_buffered_with_its_attempts(tmp_path: Path) -> None:
    store = PartWriter(tmp_path, session="s1")
    attempts = pl.DataFrame({"row_key": ["a"], "row_index": [0], "model": ["m"]})
    store.add(_records(["a"], Status.OK), attempts)
    assert list_parts(tmp_path, "results") == []
    with pytest.raises(ValueError, match="row_key"):
        store.add(_records(["b"], Status.OK).with_columns(pl.lit(None).alias("row_key")))
    store.close()
    assert len(list_parts(tmp_path, "results")) == 1
    assert pl.read_parquet(list_parts(tmp_path, "attempts")[0].path)["model"].to_list() == ["m"]
    assert "written: 1 rows in 2 parts, closed" in repr(store)


def test_completed_keys_reuse_ok_and_retry_failed_unless_told_not_to(tmp_path: Path) -> None:
    with PartWriter(tmp_path, session="s1") as first:
        first.add(_records(["ok1", "ok2"], Status.OK))
        first.add(_records(["bad"], Status.FAILED, start=2))
        first.add(_records(["cut"], Status.SKIPPED_INTERRUPTED, start=3))
        first.add(_records(["cap"], Status.SKIPPED_BUDGET, start=4))
    second = PartWriter(tmp_path, session="s2")
    assert second.ordinal == 2
    assert sorted(second.completed_keys().to_list()) == ["ok1", "ok2"]
    assert sorted(second.completed_keys(retry_failed=False).to_list()) == ["bad", "ok1", "ok2"]


def test_a_fresh_directory_has_no_completed_keys(tmp_path: Path) -> None:
    keys = PartWriter(tmp_path / "new", session="s1").completed_keys()
    assert keys.len() == 0 and keys.dtype == pl.String


def test_leftover_tmp_parts_are_ignored_and_cleaned_at_open(tmp_path: Path) -> None:
    with PartWriter(tmp_path, session="s1") as first:
        first.add(_records(["a"], Status.OK))
    leftover = tmp_path / "parts" / "results-0001-s1-000002.parquet.tmp"
    leftover.write_bytes(b"PAR1 half a part")  # what kill -9 mid-write leaves
    assert [p.seq for p in list_parts(tmp_path, "results")] == [1]
    second = PartWriter(tmp_path, session="s2")
    assert not leftover.exists()
    assert second.completed_keys().to_list() == ["a"]


def test_index_keeps_identity_and_declared_metadata_only(tmp_path: Path) -> None:
    store = PartWriter(tmp_path, session="s1", metadata_columns=["team", "absent"])
    frame = pl.DataFrame({"id": ["r0001"], "prompt": ["p"]}).with_columns(
        pl.lit(0, dtype=pl.Int64).alias("row_index"),
        pl.lit("k").alias("row_key"),
        pl.lit("data").alias("team"),
    )
    store.add_index(frame)
    store.close()
    index = pl.read_parquet(list_parts(tmp_path, "index")[0].path)
    assert index.columns == ["row_index", "row_key", "id", "line", "team"]
    assert index.row(0) == (0, "k", "r0001", None, "data")
    with pytest.raises(RuntimeError, match="closed"):
        store.add_index(frame)


def test_damaged_part_is_an_output_error_saying_what_to_do(tmp_path: Path) -> None:
    with PartWriter(tmp_path, session="s1") as first:
        first.add(_records(["a"], Status.OK))
    list_parts(tmp_path, "results")[0].path.write_bytes(b"not parquet at all")
    with pytest.raises(OutputError, match="move the damaged part"):
        PartWriter(tmp_path, session="s2").completed_keys()


def test_session_id_must_be_safe_in_a_file_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="safe in a file name"):
        PartWriter(tmp_path, session="../escape")


class _Killed(BaseException):
    """Stands in for kill -9 at one instant of a flush."""


def _kill(*args: object) -> None:
    raise _Killed


def test_crash_after_results_commit_keeps_their_staged_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PartWriter(tmp_path, session="s1", flush_rows=1)
    attempts = pl.DataFrame({"row_key": ["a"], "row_index": [0], "model": ["m"]})
    monkeypatch.setattr(PartWriter, "_commit_staged", _kill)
    with pytest.raises(_Killed):
        store.add(_records(["a"], Status.OK), attempts)
    monkeypatch.undo()
    assert list_parts(tmp_path, "attempts") == []  # staged only, as a .tmp
    resumed = PartWriter(tmp_path, session="s2")
    assert resumed.completed_keys().to_list() == ["a"]
    recovered = list_parts(tmp_path, "attempts")
    assert [p.path.name for p in recovered] == ["attempts-0001-s1-000001.parquet"]
    assert pl.read_parquet(recovered[0].path)["model"].to_list() == ["m"]


def test_crash_before_results_commit_discards_the_staged_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PartWriter(tmp_path, session="s1", flush_rows=1)
    attempts = pl.DataFrame({"row_key": ["a"], "row_index": [0], "model": ["m"]})
    monkeypatch.setattr(PartWriter, "_write_part", _kill)
    with pytest.raises(_Killed):
        store.add(_records(["a"], Status.OK), attempts)
    monkeypatch.undo()
    resumed = PartWriter(tmp_path, session="s2")
    assert resumed.completed_keys().to_list() == []  # the row is sent again...
    assert list_parts(tmp_path, "attempts") == []  # ...and its lost attempt is not counted
    assert list((tmp_path / "parts").iterdir()) == []


def test_index_waits_for_the_next_flush(tmp_path: Path) -> None:
    store = PartWriter(tmp_path, session="s1", flush_rows=1)
    store.add_index(pl.DataFrame({"row_index": [0], "row_key": ["a"]}))
    assert list_parts(tmp_path, "index") == []  # no file I/O on the event loop's thread
    store.add(_records(["a"], Status.OK))
    assert len(list_parts(tmp_path, "index")) == 1
