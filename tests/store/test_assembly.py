"""Final assembly: every row of the latest session's index exactly once, in input order."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

from batchroute.errors import OutputError
from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA, ErrorType, Status
from batchroute.store import assembly as results
from batchroute.store.assembly import assemble_results
from batchroute.store.journal import Journal
from batchroute.store.parts import PartWriter, completed_keys


def _index(keys: list[str], *, team: str = "data") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row_index": list(range(len(keys))),
            "row_key": keys,
            "id": [f"id-{k}" for k in keys],
            "line": [i + 1 for i in range(len(keys))],
            "team": [team] * len(keys),
        }
    )


def _records(rows: list[tuple[int, str]], status: str, tag: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row_index": [i for i, _ in rows],
            "row_key": [k for _, k in rows],
            "id": [f"id-{k}" for _, k in rows],
            "status": [status] * len(rows),
            "content": [f"{tag}:{k}" for _, k in rows],
            "attempts": [1] * len(rows),
            "team": [tag] * len(rows),  # a record carries the metadata it was answered with
        }
    )


def _attempts(rows: list[tuple[int, str]], tag: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row_index": [i for i, _ in rows],
            "row_key": [k for _, k in rows],
            "model": [tag] * len(rows),
        }
    )


def _session(
    run_dir: Path,
    name: str,
    keys: list[str],
    settle: dict[str, str],
    *,
    tag: str,
    flush_rows: int = 4,
    seed: int = 0,
) -> pl.Series:
    """Run a session as the runner does, through its journal: index `keys`, skip what earlier
    sessions settled, commit `settle` (key -> status) in a shuffled completion order; return
    the keys it skipped as done."""
    journal = Journal(
        run_dir, session=name, metadata_columns=["team"], part_rows=flush_rows, part_min_bytes=0
    )
    done = completed_keys(run_dir)
    journal.add_index(_index(keys, team=tag))
    position = {k: i for i, k in enumerate(keys)}
    todo = [(position[k], k, s) for k, s in settle.items() if k not in done.to_list()]
    random.Random(seed).shuffle(todo)
    for i, key, status in todo:
        journal.commit(_records([(i, key)], status, tag), _attempts([(i, key)], tag))
    journal.close()
    return done


def test_resume_reuses_ok_rows_and_resends_failed_ones(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(10)]
    _session(tmp_path, "s1", keys, {"k0": "ok", "k1": "ok", "k2": "failed", "k3": "ok"}, tag="one")
    done = _session(tmp_path, "s2", keys, dict.fromkeys(keys, "ok"), tag="two")
    assert sorted(done.to_list()) == ["k0", "k1", "k3"]
    counts = assemble_results(tmp_path, chunk_rows=3)
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["row_index"].to_list() == list(range(10))
    assert frame["id"].to_list() == [f"id-{k}" for k in keys]
    assert frame["content"].to_list() == [
        "one:k0",
        "one:k1",
        "two:k2",
        "one:k3",
        *(f"two:{k}" for k in keys[4:]),
    ]
    assert counts[Status.OK] == 10 and sum(counts.values()) == 10
    assert frame["team"].to_list() == ["two"] * 10  # metadata comes from the current input
    assert frame.columns == [*RESULT_SCHEMA.names(), "team"]
    assert frame.schema["cost_usd"] == RESULT_SCHEMA["cost_usd"]


def test_failed_rows_stay_failed_when_not_retried(tmp_path: Path) -> None:
    keys = ["a", "b"]
    _session(tmp_path, "s1", keys, {"a": "failed", "b": "ok"}, tag="one")
    store = PartWriter(tmp_path, session="s2")
    assert sorted(store.completed_keys(retry_failed=False).to_list()) == ["a", "b"]
    store.add_index(_index(keys))
    store.close()
    counts = assemble_results(tmp_path)
    assert counts[Status.FAILED] == 1 and counts[Status.OK] == 1
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["content"].to_list() == ["one:a", "one:b"]


def test_a_changed_row_key_is_resent_and_the_old_answer_dropped(tmp_path: Path) -> None:
    _session(tmp_path, "s1", ["a", "b", "c"], dict.fromkeys("abc", "ok"), tag="one", flush_rows=1)
    edited = ["a", "b-edited", "c"]
    done = _session(tmp_path, "s2", edited, dict.fromkeys(edited, "ok"), tag="two")
    assert "b-edited" not in done.to_list()
    assemble_results(tmp_path)
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["content"].to_list() == ["one:a", "two:b-edited", "one:c"]
    assert frame["row_key"].to_list() == edited


def test_reordered_input_takes_old_answers_at_new_positions(tmp_path: Path) -> None:
    _session(tmp_path, "s1", ["a", "b", "c", "d"], dict.fromkeys("abcd", "ok"), tag="one")
    _session(tmp_path, "s2", ["d", "c", "new", "a"], {"new": "ok"}, tag="two")
    assemble_results(tmp_path, chunk_rows=2)
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["row_key"].to_list() == ["d", "c", "new", "a"]
    assert frame["row_index"].to_list() == [0, 1, 2, 3]
    assert frame["line"].to_list() == [1, 2, 3, 4]
    assert frame["content"].to_list() == ["one:d", "one:c", "two:new", "one:a"]


def test_many_shuffled_sessions_give_each_row_exactly_once_with_its_best_record(
    tmp_path: Path,
) -> None:
    keys = [f"k{i:03d}" for i in range(200)]
    rng = random.Random(7)
    statuses = [Status.OK, Status.FAILED, Status.SKIPPED_INTERRUPTED, Status.SKIPPED_BUDGET]
    expected: dict[str, tuple[int, str]] = {}  # key -> (rank, tag) of its best record so far
    rank = {Status.OK: 2, Status.FAILED: 1}
    for n in range(1, 5):
        tag = f"s{n}"
        store = PartWriter(tmp_path, session=tag, flush_rows=7)
        done = set(store.completed_keys().to_list())
        store.add_index(_index(keys))
        todo = [(i, k) for i, k in enumerate(keys) if k not in done and rng.random() < 0.7]
        rng.shuffle(todo)
        for i, k in todo:
            status = rng.choice(statuses)
            store.add(_records([(i, k)], status, tag))
            best = expected.get(k)
            if best is None or rank.get(status, 0) >= best[0]:
                expected[k] = (rank.get(status, 0), f"{tag}:{k}")
        store.close()
    counts = assemble_results(tmp_path, chunk_rows=16)
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["row_key"].to_list() == keys
    assert frame["row_index"].to_list() == list(range(200))
    for key, content in zip(keys, frame["content"].to_list(), strict=True):
        assert content == (expected[key][1] if key in expected else None)
    assert sum(counts.values()) == 200
    assert counts[Status.SKIPPED_INTERRUPTED] >= 200 - len(expected)


def test_rows_never_sent_are_written_as_interrupted(tmp_path: Path) -> None:
    _session(tmp_path, "s1", ["a", "b", "c"], {"b": "ok"}, tag="one")
    counts = assemble_results(tmp_path)
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["status"].to_list() == [
        Status.SKIPPED_INTERRUPTED,
        Status.OK,
        Status.SKIPPED_INTERRUPTED,
    ]
    assert frame["id"].to_list() == ["id-a", "id-b", "id-c"]
    never = frame.filter(pl.col("status") == Status.SKIPPED_INTERRUPTED)
    assert never["error_type"].to_list() == [ErrorType.INTERRUPTED] * 2
    assert never["attempts"].to_list() == [0, 0]
    assert never["cost_usd"].cast(pl.Float64).to_list() == [0.0, 0.0]
    assert counts[Status.SKIPPED_INTERRUPTED] == 2


def test_hash_collisions_are_repaired_by_exact_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if every key hashed alike, each row must still get its own record."""
    monkeypatch.setattr(results, "_key_hash", lambda column: pl.lit(1, dtype=pl.UInt64))
    keys = [f"k{i}" for i in range(12)]
    _session(tmp_path, "s1", keys, dict.fromkeys(keys[:6], "ok"), tag="one")
    _session(tmp_path, "s2", keys, dict.fromkeys(keys, "ok"), tag="two")
    assemble_results(tmp_path, chunk_rows=5)
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["content"].to_list() == [
        *(f"one:{k}" for k in keys[:6]),
        *(f"two:{k}" for k in keys[6:]),
    ]


def test_attempts_hold_every_session_in_order(tmp_path: Path) -> None:
    keys = ["a", "b", "c"]
    _session(tmp_path, "s1", keys, {"a": "ok", "b": "failed"}, tag="one", seed=1)
    _session(tmp_path, "s2", keys, {"b": "ok", "c": "ok"}, tag="two", seed=1)
    assemble_results(tmp_path)
    attempts = pl.read_parquet(tmp_path / "attempts.parquet")
    assert attempts.columns == ATTEMPT_SCHEMA.names()
    assert attempts["model"].to_list()[:2] == ["one", "one"]
    assert attempts["model"].to_list()[2:] == ["two", "two"]
    assert sorted(attempts["row_key"].to_list()) == ["a", "b", "b", "c"]


def test_metadata_comes_from_the_index_never_from_the_reused_record(tmp_path: Path) -> None:
    _session(tmp_path, "s1", ["a", "b"], {"a": "ok", "b": "ok"}, tag="one")
    _session(tmp_path, "s2", ["b", "a"], {}, tag="two")  # reordered, metadata edited
    assemble_results(tmp_path)
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame.select("id", "line", "team", "content").rows() == [
        ("id-b", 1, "two", "one:b"),
        ("id-a", 2, "two", "one:a"),
    ]


def test_assembly_without_an_index_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="no checkpoint index"):
        assemble_results(tmp_path)


def test_results_file_is_replaced_atomically_and_spill_is_cleaned(tmp_path: Path) -> None:
    _session(tmp_path, "s1", ["a"], {"a": "ok"}, tag="one")
    (tmp_path / "results.parquet").write_bytes(b"an old, broken file")
    assemble_results(tmp_path)
    assert pl.read_parquet(tmp_path / "results.parquet").height == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "attempts.parquet",
        "parts",
        "results.parquet",
    ]
    assert not any(p.name.startswith(".") for p in (tmp_path / "parts").iterdir())


@pytest.mark.parametrize("kind", ["results", "attempts"])
def test_a_damaged_part_stops_assembly_with_what_to_do(tmp_path: Path, kind: str) -> None:
    _session(tmp_path, "s1", ["a", "b", "c"], dict.fromkeys("abc", "ok"), tag="one", flush_rows=1)
    damaged = sorted((tmp_path / "parts").glob(f"{kind}-*.parquet"))[1]
    damaged.write_bytes(b"not parquet at all")
    with pytest.raises(OutputError, match="move the damaged part") as caught:
        assemble_results(tmp_path)
    assert damaged.name in str(caught.value)


def test_many_small_parts_are_read_in_groups_with_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "_READ_ROWS", 5)
    monkeypatch.setattr(results, "_ATTEMPT_ROW_GROUP", 5)
    keys = [f"k{i:02d}" for i in range(23)]
    _session(tmp_path, "s1", keys, dict.fromkeys(keys, "ok"), tag="one", flush_rows=2)
    assemble_results(tmp_path)
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["row_key"].to_list() == keys
    assert frame["content"].to_list() == [f"one:{k}" for k in keys]
    assert sorted(pl.read_parquet(tmp_path / "attempts.parquet")["row_key"]) == keys
