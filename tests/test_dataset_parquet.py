"""batchroute.dataset over Parquet: native types, chat lists, record batches, bad files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from batchroute.dataset import open_dataset
from batchroute.errors import DatasetError
from tests.conftest import dataset_job


def test_parquet_keeps_metadata_types_and_casts_ids(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    when = datetime(2026, 1, 2, tzinfo=UTC)
    pl.DataFrame(
        {
            "id": [10, 11, 12],
            "prompt": ["a", "", "c"],
            "score": [0.5, None, 1.5],
            "seen": [when, when, None],
            "json_output": [True, False, None],
        }
    ).write_parquet(path)
    job = dataset_job(path, id_column="id", metadata_columns=["score", "seen"])
    batches = list(open_dataset(job).batches(batch_rows=2))
    rows = pl.concat([b.rows for b in batches])
    assert [b.rows.height for b in batches] == [2, 1]
    assert rows["id"].to_list() == ["10", "11", "12"]
    assert rows["line"].to_list() == [1, 2, 3]
    assert rows.schema["score"] == pl.Float64 and rows.schema["seen"] == pl.Datetime("us", "UTC")
    assert rows["seen"].to_list() == [when, when, None]
    assert rows["json_output"].to_list() == [True, False, None]
    assert rows["invalid_reason"].to_list() == [None, "prompt is empty", None]


def test_parquet_messages_as_lists_of_structs(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    chats = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "One"}, {"role": "user", "content": "Two"}],
    ]
    pl.DataFrame({"chat": chats}).write_parquet(path)
    rows = pl.concat(
        b.rows for b in open_dataset(dataset_job(path, messages_column="chat")).batches()
    )
    assert rows["prompt"].to_list() == ["Hi", "One\nTwo"]
    assert rows["system_prompt"].to_list() == ["Be brief.", None]
    assert rows["messages"].to_list() == chats


def test_missing_parquet_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pl.DataFrame({"id": ["a"], "text": ["x"]}).write_parquet(path)
    with pytest.raises(DatasetError) as info:
        open_dataset(dataset_job(path, id_column="id")).check()
    assert info.value.field == "prompt" and "'id', 'text'" in str(info.value)


def test_null_parquet_id_is_rejected_under_skip(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pl.DataFrame({"id": ["a", None, "c"], "prompt": ["x", "y", "z"]}).write_parquet(path)
    with pytest.raises(DatasetError, match="line 2"):
        open_dataset(dataset_job(path, id_column="id")).check()
    job = dataset_job(path, id_column="id", on_invalid_row="skip")
    batches = list(open_dataset(job).batches())
    assert pl.concat(b.rows for b in batches)["id"].to_list() == ["a", "c"]
    assert pl.concat(b.rejects for b in batches)["line"].to_list() == [2]


def test_not_a_parquet_file_and_empty_parquet(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.parquet"
    bogus.write_text("id,prompt\n")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        open_dataset(dataset_job(bogus)).check()
    empty = tmp_path / "empty.parquet"
    pl.DataFrame(schema={"prompt": pl.String}).write_parquet(empty)
    with pytest.raises(DatasetError, match="has no rows"):
        open_dataset(dataset_job(empty)).check()


def test_compressed_parquet_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet.gz"
    path.write_bytes(b"\x1f\x8b")
    with pytest.raises(DatasetError, match="Parquet compresses its own pages"):
        open_dataset(dataset_job(path))
