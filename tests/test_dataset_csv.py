"""batchroute.dataset over CSV: RFC 4180 quoting, exact round trips, bad files and rows."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from batchroute.dataset import open_dataset
from batchroute.errors import DatasetError
from tests.conftest import dataset_error, dataset_job, read_all

NASTY = [
    {"id": "n1", "prompt": 'He said "hi", then left', "owner": "ann", "note": "a,b,c"},
    {"id": "n2", "prompt": "line one\nline two\n\nline four", "owner": "", "note": "x"},
    {"id": "n3", "prompt": "windows\r\nline endings\r\n", "owner": "bo", "note": ""},
    {"id": "n4", "prompt": "emoji 😀🎉 and accents: café, naïve", "owner": "çé", "note": '""'},
    {"id": "n5", "prompt": "long " + "x" * 50_000, "owner": "z", "note": "'single' quotes"},
    {"id": "n6", "prompt": " leading and trailing spaces ", "owner": "q", "note": ",\n,"},
    {
        "id": "007",
        "prompt": '"quoted from the start" and not at the end',
        "owner": "k",
        "note": "1.50",
    },
]


def test_nasty_csv_round_trips_every_field_exactly(tmp_path: Path) -> None:
    path = tmp_path / "nasty.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["id", "prompt", "owner", "note"])
        writer.writeheader()
        writer.writerows(NASTY)
    job = dataset_job(path, id_column="id", metadata_columns=["owner", "note"])
    rows, rejects = read_all(job)
    assert rejects.height == 0
    assert rows["id"].to_list() == [r["id"] for r in NASTY]
    assert rows["prompt"].to_list() == [r["prompt"] for r in NASTY]
    # csv.writer writes an empty string as an empty unquoted field, which reads back as null
    assert rows["owner"].to_list() == [r["owner"] or None for r in NASTY]
    assert rows["note"].to_list() == [r["note"] or None for r in NASTY]
    assert rows["line"].to_list() == list(range(2, 2 + len(NASTY)))
    assert rows["invalid_reason"].null_count() == len(NASTY)


def test_quoted_empty_string_stays_an_empty_string(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('prompt,owner\nhello,""\nthere,\n')
    rows, _ = read_all(dataset_job(path, metadata_columns=["owner"]))
    assert rows["owner"].to_list() == ["", None]


def test_bom_crlf_and_gzip(tmp_path: Path) -> None:
    path = tmp_path / "p.csv.gz"
    text = '\ufeffid,prompt\r\na,"multi\r\nline"\r\nb,plain\r\n'
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    rows, _ = read_all(dataset_job(path, id_column="id"))
    assert rows["id"].to_list() == ["a", "b"]
    assert rows["prompt"].to_list() == ["multi\r\nline", "plain"]


def test_line_is_the_data_row_number_counting_the_header_as_line_1(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('prompt\n"two\nphysical lines"\nnext\n')
    rows, _ = read_all(dataset_job(path))
    assert rows["line"].to_list() == [2, 3]
    assert rows["id"].to_list() == ["1", "2"]


def test_unterminated_quote_names_the_line_where_it_opens(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('id,prompt\na,fine\nb,"never closed\nc,more\nd,rows\n')
    error = dataset_error(dataset_job(path, id_column="id"))
    assert error.line == 3
    assert "never closed" in str(error) and str(path) in str(error)


def test_header_only_csv_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,prompt\r\n")
    error = dataset_error(dataset_job(path, id_column="id"))
    assert "has no rows" in str(error)


def test_missing_prompt_column_lists_the_columns_found(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,question,team\na,hi,x\n")
    error = dataset_error(dataset_job(path, id_column="id"))
    assert error.field == "prompt"
    assert "header" in str(error) and "'id', 'question', 'team'" in str(error)


def test_ragged_row_fails_with_line_and_row_or_is_rejected_under_skip(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('id,prompt,team\na,"x\ny",t\nb,short\nc,ok,t\n')
    error = dataset_error(dataset_job(path, id_column="id"))
    assert (error.line, error.row) == (4, 2)
    assert "has 2 fields, but the header has 3" in str(error)
    job = dataset_job(path, id_column="id", on_invalid_row="skip")
    rows, rejects = read_all(job)
    assert rows["id"].to_list() == ["a", "c"]
    assert rejects.rows() == [(3, "has 2 fields, but the header has 3", "b,short")]


def test_text_after_a_closing_quote_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('id,prompt\na,one\nb,"two"oops\nc,three\n')
    error = dataset_error(dataset_job(path, id_column="id"))
    assert error.row == 2 and "not valid CSV" in str(error)
    rows, rejects = read_all(dataset_job(path, id_column="id", on_invalid_row="skip"))
    assert rows["id"].to_list() == ["a", "c"]
    assert rejects["line"].to_list() == [3]


def test_empty_id_is_a_row_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,prompt\na,one\n,two\n")
    error = dataset_error(dataset_job(path, id_column="id"))
    assert error.field == "id" and error.row == 2
    summary = open_dataset(dataset_job(path, id_column="id", on_invalid_row="skip")).check()
    assert (summary.rows, summary.rejected) == (1, 1)


def test_non_utf8_csv_gives_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(b"prompt\nok\nna\xefve\n")
    error = dataset_error(dataset_job(path))
    assert error.byte_offset == 12 and error.line == 3
    rows, _ = read_all(dataset_job(path, encoding="latin-1"))
    assert rows["prompt"].to_list() == ["ok", "naïve"]
    path.write_bytes(b"\xef\xbb\xbfprompt\nok\nna\xefve\n")  # offsets count the BOM too
    assert dataset_error(dataset_job(path)).byte_offset == 15


def test_csv_batches_hold_batch_rows_data_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,prompt\n" + "".join(f'r{i},"p\n{i}"\n' for i in range(7)))
    batches = list(open_dataset(dataset_job(path, id_column="id")).batches(batch_rows=3))
    assert [b.rows.height for b in batches] == [3, 3, 1]
    rows = pl.concat([b.rows for b in batches])
    assert rows["row_index"].to_list() == list(range(7))
    assert rows["prompt"].to_list() == [f"p\n{i}" for i in range(7)]


def test_messages_column_holds_json_chats(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    chats = [
        [{"role": "user", "content": 'Say "hi"'}],
        [{"role": "user", "content": [{"type": "text", "text": "parts"}]}],
        "not a chat",
    ]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "chat"])
        writer.writerows([f"c{i}", json.dumps(c)] for i, c in enumerate(chats))
    rows, _ = read_all(dataset_job(path, id_column="id", messages_column="chat"))
    assert rows["prompt"].to_list()[:2] == ['Say "hi"', "parts"]
    assert rows["invalid_reason"].to_list()[:2] == [None, None]
    assert "not a list of chat messages" in rows["invalid_reason"][2]


def test_records_split_correctly_across_tiny_read_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block edges inside quotes, CRLF pairs and multi-byte characters change nothing."""
    monkeypatch.setattr("batchroute.dataset.source.BLOCK_BYTES", 7)
    path = tmp_path / "nasty.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["id", "prompt", "owner", "note"])
        writer.writeheader()
        writer.writerows(NASTY[:4] + NASTY[5:])
    job = dataset_job(path, id_column="id", metadata_columns=["note"])
    rows, _ = read_all(job, batch_rows=2)
    assert rows["prompt"].to_list() == [r["prompt"] for r in NASTY[:4] + NASTY[5:]]
    assert rows["row_index"].to_list() == list(range(len(NASTY) - 1))


def test_runaway_quote_stops_at_the_record_size_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quote never closed in a big file is reported without reading the rest into memory."""
    monkeypatch.setattr("batchroute.dataset.source.BLOCK_BYTES", 256)
    monkeypatch.setattr("batchroute.dataset.records.MAX_RECORD_BYTES", 4096)
    path = tmp_path / "p.csv"
    path.write_text('prompt\nfine\n"opens here\n' + "more text\n" * 5_000)
    dataset = open_dataset(dataset_job(path))
    dataset.batch_rows = 10
    with pytest.raises(DatasetError) as info:
        dataset.check()
    assert info.value.line == 3 and "without ending" in str(info.value)
