"""Row keys, durable parts, and what earlier sessions settled."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchroute.config import parse_job
from batchroute.errors import OutputError
from batchroute.schema import INPUT_SCHEMA, RESULT_SCHEMA, Status
from batchroute.store.checkpoint import CheckpointStore, key_contexts, list_parts, row_keys

CONTEXT = {"standard": '{"chain":["m"]}', "complex": '{"chain":["big","m"]}'}


def _rows(**overrides: list[Any]) -> pl.DataFrame:
    data: dict[str, list[Any]] = {
        "id": ["r0001"],
        "prompt": ["Summarise this ticket."],
        "system_prompt": ["You are terse."],
        "messages": [
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Summarise this ticket."},
            ]
        ],
        "tier": ["standard"],
    }
    data.update(overrides)
    return pl.DataFrame(data, schema_overrides={"messages": INPUT_SCHEMA["messages"]})


def _key(**overrides: list[Any]) -> str:
    return str(row_keys(_rows(**overrides), context=CONTEXT).item())


def test_row_key_is_a_fixed_function_of_the_row() -> None:
    """The key must never change across processes or versions, or resumes would re-buy rows."""
    assert _key() == "1479ee2c10cfa73991212fcca81ca730"

    def enc(text: str) -> str:
        return f"{len(text.encode())}:{text}"

    context = hashlib.blake2b(CONTEXT["standard"].encode(), digest_size=16).hexdigest()
    material = (
        "br1|"
        + enc("r0001")
        + enc("You are terse.")
        + enc("Summarise this ticket.")
        + "[2:"
        + enc("system")
        + enc("You are terse.")
        + enc("user")
        + enc("Summarise this ticket.")
        + enc(context)
    )
    assert _key() == hashlib.blake2b(material.encode(), digest_size=16).hexdigest()


@pytest.mark.parametrize(
    "change",
    [
        {"id": ["r0002"]},
        {"prompt": ["Summarise this ticket!"]},
        {"system_prompt": ["You are verbose."]},
        {"system_prompt": [None]},
        {"system_prompt": [""]},
        {"messages": [[{"role": "user", "content": "Summarise this ticket."}]]},
        {
            "messages": [
                [
                    {"role": "user", "content": "You are terse."},
                    {"role": "user", "content": "Summarise this ticket."},
                ]
            ]
        },
        {"messages": [None]},
        {"tier": ["complex"]},
    ],
)
def test_row_key_changes_with_each_component(change: dict[str, list[Any]]) -> None:
    assert _key(**change) != _key()


def test_row_key_changes_with_the_tier_context_only_for_that_tier() -> None:
    frame = pl.concat([_rows(), _rows(id=["r0002"], tier=["complex"])])
    before = row_keys(frame, context=CONTEXT).to_list()
    after = row_keys(frame, context={**CONTEXT, "complex": '{"chain":["big"]}'}).to_list()
    assert before[0] == after[0]
    assert before[1] != after[1]


def test_row_key_fields_cannot_bleed_into_each_other() -> None:
    assert _key(id=["ab"], system_prompt=["c"]) != _key(id=["a"], system_prompt=["bc"])
    assert _key(system_prompt=[None]) != _key(system_prompt=[""])


def test_row_keys_are_32_hex_characters_and_need_a_context_for_valid_tiers() -> None:
    frame = pl.concat([_rows(id=[str(i)]) for i in range(5)])
    keys = row_keys(frame, context=CONTEXT)
    assert keys.name == "row_key" and keys.n_unique() == 5
    assert keys.str.contains(r"^[0-9a-f]{32}$").all()
    with pytest.raises(ValueError, match="gold"):
        row_keys(_rows(tier=["gold"]), context=CONTEXT)
    invalid = _rows(tier=["gold"]).with_columns(pl.lit("unknown tier").alias("invalid_reason"))
    assert row_keys(invalid, context=CONTEXT).str.len_chars().item() == 32


def _config(**changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "t",
        "input": {"path": "p.jsonl"},
        "tiers": {"standard": "m", "complex": "big"},
        "models": {
            "m": {"input_per_mtok": 1, "output_per_mtok": 2, "rpm": 100},
            "big": {"input_per_mtok": 5, "output_per_mtok": 9, "fallback": "m"},
        },
    }
    for key, value in changes.items():
        data[key] = value
    return parse_job(data, path=Path("job.yaml"))


def test_key_contexts_change_with_what_changes_an_answer() -> None:
    base = key_contexts(_config())
    faster = _config(
        models={
            "m": {"input_per_mtok": 2, "output_per_mtok": 2, "rpm": 999},
            "big": {"input_per_mtok": 5, "output_per_mtok": 9, "fallback": "m"},
        }
    )
    assert key_contexts(faster) == base  # prices and limits change no answer
    hotter = key_contexts(_config(request={"temperature": 0.7}))
    assert hotter["standard"] != base["standard"]
    elsewhere = key_contexts(_config(endpoint={"base_url": "http://127.0.0.1:9/v1"}))
    assert elsewhere["complex"] != base["complex"]
    renamed = _config(
        models={
            "m": {"input_per_mtok": 1, "output_per_mtok": 2, "api_model": "m-2026"},
            "big": {"input_per_mtok": 5, "output_per_mtok": 9, "fallback": "m"},
        }
    )
    changed = key_contexts(renamed)
    assert changed["standard"] != base["standard"]
    assert changed["complex"] != base["complex"]  # m is on complex's fallback chain


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
    store = CheckpointStore(tmp_path, session="s1", flush_rows=3, flush_seconds=None)
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


def test_store_flushes_after_t_seconds_on_the_next_add_or_tick(tmp_path: Path) -> None:
    now = [100.0]
    store = CheckpointStore(
        tmp_path, session="s1", flush_rows=1000, flush_seconds=5, clock=lambda: now[0]
    )
    store.add(_records(["a"], Status.OK))
    assert not store.flush_if_due()
    now[0] += 5
    assert store.flush_if_due()
    assert len(list_parts(tmp_path, "results")) == 1
    store.add(_records(["b"], Status.OK, start=1))
    now[0] += 6
    store.add(_records(["c"], Status.OK, start=2))  # time is checked on add
    assert len(list_parts(tmp_path, "results")) == 2
    assert "written: 3 rows in 2 parts" in repr(store)


def test_write_makes_rows_durable_at_once(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, session="s1")
    attempts = pl.DataFrame({"row_key": ["a"], "row_index": [0], "model": ["m"]})
    store.write(_records(["a"], Status.OK), attempts)
    assert len(list_parts(tmp_path, "results")) == 1
    assert pl.read_parquet(list_parts(tmp_path, "attempts")[0].path)["model"].to_list() == ["m"]
    with pytest.raises(ValueError, match="row_key"):
        store.write(_records(["b"], Status.OK).with_columns(pl.lit(None).alias("row_key")))


def test_completed_keys_reuse_ok_and_retry_failed_unless_told_not_to(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path, session="s1") as first:
        first.add(_records(["ok1", "ok2"], Status.OK))
        first.add(_records(["bad"], Status.FAILED, start=2))
        first.add(_records(["cut"], Status.SKIPPED_INTERRUPTED, start=3))
        first.add(_records(["cap"], Status.SKIPPED_BUDGET, start=4))
    second = CheckpointStore(tmp_path, session="s2")
    assert second.ordinal == 2
    assert sorted(second.completed_keys().to_list()) == ["ok1", "ok2"]
    assert sorted(second.completed_keys(retry_failed=False).to_list()) == ["bad", "ok1", "ok2"]


def test_a_fresh_directory_has_no_completed_keys(tmp_path: Path) -> None:
    keys = CheckpointStore(tmp_path / "new", session="s1").completed_keys()
    assert keys.len() == 0 and keys.dtype == pl.String


def test_leftover_tmp_parts_are_ignored_and_cleaned_at_open(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path, session="s1") as first:
        first.add(_records(["a"], Status.OK))
    leftover = tmp_path / "parts" / "results-0001-s1-000002.parquet.tmp"
    leftover.write_bytes(b"PAR1 half a part")  # what kill -9 mid-write leaves
    assert [p.seq for p in list_parts(tmp_path, "results")] == [1]
    second = CheckpointStore(tmp_path, session="s2")
    assert not leftover.exists()
    assert second.completed_keys().to_list() == ["a"]


def test_index_keeps_identity_and_declared_metadata_only(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, session="s1", metadata_columns=["team", "absent"])
    frame = _rows().with_columns(
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
    with CheckpointStore(tmp_path, session="s1") as first:
        first.add(_records(["a"], Status.OK))
    list_parts(tmp_path, "results")[0].path.write_bytes(b"not parquet at all")
    with pytest.raises(OutputError, match="move the damaged part"):
        CheckpointStore(tmp_path, session="s2").completed_keys()


def test_session_id_must_be_safe_in_a_file_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="safe in a file name"):
        CheckpointStore(tmp_path, session="../escape")


class _Killed(BaseException):
    """Stands in for kill -9 at one instant of a flush."""


def _kill(*args: object) -> None:
    raise _Killed


def test_crash_after_results_commit_keeps_their_staged_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path, session="s1")
    attempts = pl.DataFrame({"row_key": ["a"], "row_index": [0], "model": ["m"]})
    monkeypatch.setattr(CheckpointStore, "_commit_staged", _kill)
    with pytest.raises(_Killed):
        store.write(_records(["a"], Status.OK), attempts)
    monkeypatch.undo()
    assert list_parts(tmp_path, "attempts") == []  # staged only, as a .tmp
    resumed = CheckpointStore(tmp_path, session="s2")
    assert resumed.completed_keys().to_list() == ["a"]
    recovered = list_parts(tmp_path, "attempts")
    assert [p.path.name for p in recovered] == ["attempts-0001-s1-000001.parquet"]
    assert pl.read_parquet(recovered[0].path)["model"].to_list() == ["m"]


def test_crash_before_results_commit_discards_the_staged_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path, session="s1")
    attempts = pl.DataFrame({"row_key": ["a"], "row_index": [0], "model": ["m"]})
    monkeypatch.setattr(CheckpointStore, "_write_part", _kill)
    with pytest.raises(_Killed):
        store.write(_records(["a"], Status.OK), attempts)
    monkeypatch.undo()
    resumed = CheckpointStore(tmp_path, session="s2")
    assert resumed.completed_keys().to_list() == []  # the row is sent again...
    assert list_parts(tmp_path, "attempts") == []  # ...and its lost attempt is not counted
    assert list((tmp_path / "parts").iterdir()) == []


def test_index_waits_for_the_next_flush(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, session="s1", flush_rows=1, flush_seconds=0)
    store.add_index(pl.DataFrame({"row_index": [0], "row_key": ["a"]}))
    assert list_parts(tmp_path, "index") == []  # no file I/O on the event loop's thread
    store.add(_records(["a"], Status.OK))
    assert len(list_parts(tmp_path, "index")) == 1
