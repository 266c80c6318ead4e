"""The journal: group commits that survive a crash, a torn tail dropped, compaction to parts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import polars as pl
import pytest

from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA, Status
from batchroute.store.journal import (
    INDEX,
    ROWS,
    Journal,
    compact_journal,
    decode_rows,
    read_journal,
    recover_journals,
)
from batchroute.store.parts import completed_keys, list_parts, next_ordinal


def _results(keys: list[str], *, status: str = Status.OK) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row_index": [int(k[1:]) for k in keys],
            "row_key": keys,
            "id": keys,
            "status": [status] * len(keys),
            "content": [f"answer {k}" for k in keys],
            "team": ["data"] * len(keys),
        }
    ).select(
        *(
            pl.col(n).cast(t)
            if n in ("row_index", "row_key", "id", "status", "content")
            else pl.lit(None, t).alias(n)
            for n, t in RESULT_SCHEMA.items()
        ),
        "team",
    )


def _attempts(keys: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": keys,
            "row_index": [int(k[1:]) for k in keys],
            "row_key": keys,
            "attempt": [1] * len(keys),
        }
    ).select(
        pl.col(n).cast(t)
        if n in ("id", "row_index", "row_key", "attempt")
        else pl.lit(None, t).alias(n)
        for n, t in ATTEMPT_SCHEMA.items()
    )


def _keys(start: int, stop: int) -> list[str]:
    return [f"k{i:03d}" for i in range(start, stop)]


def _journal_of_three_commits(run_dir: Path) -> Path:
    """A crashed session's journal: three commits of ten rows, never compacted."""
    journal = Journal(run_dir, session="s1", metadata_columns=["team"])
    index = pl.DataFrame({"row_index": range(30), "row_key": _keys(0, 30), "id": _keys(0, 30)})
    journal.add_index(index.with_columns(pl.lit("data").alias("team")))
    for start in (0, 10, 20):
        keys = _keys(start, start + 10)
        journal.commit(_results(keys), _attempts(keys))
    journal.close(compact=False)
    return journal.path


def test_each_commit_is_durable_and_reads_back_exactly(tmp_path: Path) -> None:
    path = _journal_of_three_commits(tmp_path)
    records = list(read_journal(path))
    assert [kind for kind, _ in records] == [INDEX, ROWS, ROWS, ROWS]
    results, attempts = decode_rows(records[2][1])
    assert results.equals(_results(_keys(10, 20)))
    assert attempts.equals(_attempts(_keys(10, 20)))


def test_a_crashed_sessions_journal_is_compacted_when_the_next_one_opens(tmp_path: Path) -> None:
    path = _journal_of_three_commits(tmp_path)
    assert completed_keys(tmp_path).len() == 0  # journals are not parts until compacted
    following = Journal(tmp_path, session="s2")
    assert not path.exists()
    assert following.ordinal == 2  # the crashed session keeps number 1
    assert sorted(completed_keys(tmp_path).to_list()) == _keys(0, 30)
    index = pl.read_parquet(list_parts(tmp_path, "index")[0].path)
    assert index.columns == ["row_index", "row_key", "id", "line", "team"]
    attempts = pl.concat(pl.read_parquet(p.path) for p in list_parts(tmp_path, "attempts"))
    assert attempts.height == 30
    following.close()


def test_compaction_is_idempotent_after_a_crash_during_it(tmp_path: Path) -> None:
    path = _journal_of_three_commits(tmp_path)
    copy = path.read_bytes()
    recover_journals(tmp_path)
    parts = sorted(p.name for p in (tmp_path / "parts").iterdir())
    path.write_bytes(copy)  # as if killed after the parts, before the journal was deleted
    recover_journals(tmp_path)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == parts
    assert completed_keys(tmp_path).len() == 30


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_torn_tail_is_dropped_and_its_rows_are_not_settled(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = _journal_of_three_commits(tmp_path)
    records = list(read_journal(path))
    last = 9 + len(records[-1][1])  # header + payload of the last record
    size = path.stat().st_size
    if damage == "truncate":
        os.truncate(path, size - last // 2)  # killed mid-write
    else:
        data = bytearray(path.read_bytes())
        data[size - last // 2] ^= 0x01  # one damaged byte inside the last record
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="batchroute"):
        kinds = [kind for kind, _ in read_journal(path)]
    assert kinds == [INDEX, ROWS, ROWS]
    assert "dropped" in caplog.text and "sent again" in caplog.text
    recover_journals(tmp_path)
    assert sorted(completed_keys(tmp_path).to_list()) == _keys(0, 20)  # the rest is resent


def test_a_damaged_middle_record_drops_it_and_everything_after(tmp_path: Path) -> None:
    path = _journal_of_three_commits(tmp_path)
    records = list(read_journal(path))
    offset = sum(9 + len(payload) for _, payload in records[:2]) + 9 + 100
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [kind for kind, _ in read_journal(path)] == [INDEX, ROWS]
    recover_journals(tmp_path)
    assert sorted(completed_keys(tmp_path).to_list()) == _keys(0, 10)


def test_an_empty_journal_leaves_no_parts_and_frees_its_number(tmp_path: Path) -> None:
    Journal(tmp_path, session="s1").close(compact=False)
    assert next_ordinal(tmp_path) == 2
    recover_journals(tmp_path)
    assert next_ordinal(tmp_path) == 1
    assert list_parts(tmp_path, "results") == []


def test_close_compacts_into_parts_of_at_most_part_rows(tmp_path: Path) -> None:
    journal = Journal(tmp_path, session="s1", part_rows=8, part_min_bytes=0)
    for start in range(0, 30, 5):
        keys = _keys(start, start + 5)
        journal.commit(_results(keys), _attempts(keys))
    assert "commits: 6" in repr(journal)
    journal.close()
    assert not journal.path.exists()
    # a part is cut at the first commit that fills it: 2 commits of 5 rows reach 8
    results = [pl.read_parquet(p.path) for p in list_parts(tmp_path, "results")]
    attempts = [pl.read_parquet(p.path) for p in list_parts(tmp_path, "attempts")]
    assert [part.height for part in results] == [10, 10, 10]
    assert [part.height for part in attempts] == [10, 10, 10]
    assert pl.concat(results)["row_key"].to_list() == _keys(0, 30)
    assert pl.concat(attempts)["row_key"].to_list() == _keys(0, 30)
    with pytest.raises(RuntimeError, match="closed"):
        journal.commit(_results(["k999"]), _attempts(["k999"]))


def test_close_merges_small_commits_into_parts_of_part_min_bytes(tmp_path: Path) -> None:
    """A part holds part_rows rows *and* part_min_bytes of journal: small rows make few parts."""
    journal = Journal(tmp_path, session="s1", part_rows=8)
    for start in range(0, 30, 5):
        keys = _keys(start, start + 5)
        journal.commit(_results(keys), _attempts(keys))
    journal.close()
    results = [pl.read_parquet(p.path) for p in list_parts(tmp_path, "results")]
    assert [part.height for part in results] == [30]  # far below the default PART_MIN_BYTES
    record = journal.bytes_written // 6  # each commit wrote one ROWS record of about this size
    other = tmp_path / "other"
    journal = Journal(other, session="s1", part_rows=8, part_min_bytes=3 * record - 64)
    for start in range(0, 30, 5):
        keys = _keys(start, start + 5)
        journal.commit(_results(keys), _attempts(keys))
    journal.close()
    # 2 commits reach 8 rows but not the bytes of 3 records: a part is cut every 3 commits
    assert [pl.read_parquet(p.path).height for p in list_parts(other, "results")] == [15, 15]


def test_compacting_again_with_other_bounds_leaves_no_stale_part(tmp_path: Path) -> None:
    """A crash after compaction wrote its parts but before it deleted the journal, then a
    repair with larger parts (another checkpoint_rows or version): nothing counts twice."""
    journal = Journal(tmp_path, session="s1", part_rows=5)
    for start in range(0, 30, 5):
        keys = _keys(start, start + 5)
        journal.commit(_results(keys), _attempts(keys))
    journal.close(compact=False)
    kept = journal.path.read_bytes()
    compact_journal(journal.path, part_rows=5, part_min_bytes=0)
    assert len(list_parts(tmp_path, "attempts")) == 6
    journal.path.write_bytes(kept)  # the crash: the journal was not yet deleted
    assert recover_journals(tmp_path) == 1
    assert [p.seq for p in list_parts(tmp_path, "results")] == [1]
    assert [p.seq for p in list_parts(tmp_path, "attempts")] == [1]
    assert [p.seq for p in list_parts(tmp_path, "index")] in ([], [1])
    attempts = pl.concat(pl.read_parquet(p.path) for p in list_parts(tmp_path, "attempts"))
    assert attempts["row_key"].to_list() == _keys(0, 30)
