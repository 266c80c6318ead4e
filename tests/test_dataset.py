"""batchroute.dataset over JSONL: formats, compression, encodings, chat rows, errors, policy."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import zstandard

from batchroute.dataset import REJECT_SCHEMA, Batch, open_dataset
from batchroute.errors import DatasetError
from batchroute.schema import INPUT_SCHEMA
from tests.conftest import dataset_error, dataset_job, read_all


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


ROWS = [
    {"id": "a", "prompt": "Summarise the ticket.", "team": "ops", "n": 1},
    {"id": "b", "prompt": "Extract the total as JSON.", "team": "data", "n": 2},
    {"id": "c", "prompt": "Refactor the retry loop.", "team": None, "n": 3},
]


def test_jsonl_rows_follow_input_schema_then_metadata(tmp_path: Path) -> None:
    job = dataset_job(
        write_jsonl(tmp_path / "p.jsonl", ROWS),
        id_column="id",
        metadata_columns=["team", "n"],
        system_prompt="Be brief.",
    )
    rows, rejects = read_all(job)
    assert rows.schema == pl.Schema({**INPUT_SCHEMA, "team": pl.String, "n": pl.Int64})
    assert rows["id"].to_list() == ["a", "b", "c"]
    assert rows["line"].to_list() == [1, 2, 3]
    assert rows["row_index"].to_list() == [0, 1, 2]
    assert rows["n"].to_list() == [1, 2, 3]
    assert rows["system_prompt"].to_list() == ["Be brief."] * 3
    assert rows["messages"][0].to_list() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarise the ticket."},
    ]
    assert rows["invalid_reason"].null_count() == 3
    assert rejects.schema == REJECT_SCHEMA and rejects.height == 0


def test_check_counts_rows_and_lists_columns(tmp_path: Path) -> None:
    job = dataset_job(write_jsonl(tmp_path / "p.jsonl", ROWS), id_column="id")
    summary = open_dataset(job).check()
    assert (summary.rows, summary.rejected, summary.invalid) == (3, 0, 0)
    assert summary.columns == ("id", "prompt", "team", "n")
    assert summary.format == "jsonl"


def test_without_id_column_the_id_is_the_row_number(tmp_path: Path) -> None:
    rows, _ = read_all(dataset_job(write_jsonl(tmp_path / "p.jsonl", ROWS)))
    assert rows["id"].to_list() == ["1", "2", "3"]


def test_bom_crlf_and_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in ROWS]
    text = "\ufeff" + lines[0] + "\r\n\r\n" + lines[1] + "\r\n   \r\n" + lines[2]  # no final EOL
    path = tmp_path / "p.jsonl"
    path.write_bytes(text.encode("utf-8"))
    rows, _ = read_all(dataset_job(path, id_column="id"))
    assert rows["id"].to_list() == ["a", "b", "c"]
    assert rows["line"].to_list() == [1, 3, 5]
    assert rows["prompt"][2] == "Refactor the retry loop."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{a}\n{b}\n{c}\n{a2}\n{b2}\n", [1, 2, 3, 4, 5]),  # one record a line
        ("\n{a}\n\n{b}\n{c}\n\n\n{a2}\n{b2}\n", [2, 4, 5, 8, 9]),  # empty lines between
    ],
)
def test_line_numbers_are_the_file_lines_in_every_batch(
    tmp_path: Path, text: str, expected: list[int]
) -> None:
    """The polars-only read numbers lines as the file does, a batch at a time."""
    records = {k: json.dumps({"id": k, "prompt": f"say {k}"}) for k in ("a", "b", "c", "a2", "b2")}
    path = tmp_path / "p.jsonl"
    path.write_text(text.format(**records), encoding="utf-8")
    rows, _ = read_all(dataset_job(path, id_column="id"), batch_rows=2)
    assert rows["id"].to_list() == ["a", "b", "c", "a2", "b2"]
    assert rows["line"].to_list() == expected


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl_is_inferred_from_the_extension(tmp_path: Path, suffix: str) -> None:
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    packed = gzip.compress(body) if suffix.endswith("gz") else zstandard.compress(body)
    path = tmp_path / f"p{suffix}"
    path.write_bytes(packed)
    rows, _ = read_all(dataset_job(path, id_column="id"))
    assert rows["prompt"].to_list() == [r["prompt"] for r in ROWS]


def test_compression_is_sniffed_when_the_name_does_not_say(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    rows, _ = read_all(dataset_job(path, id_column="id"))
    assert rows.height == 3


def test_corrupt_gzip_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt": "x"}\n' * 1000)[:-30])
    error = dataset_error(dataset_job(path))
    assert "gzip" in str(error) and str(path) in str(error)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_other_encodings_are_transcoded(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes('{"prompt": "café crème"}\n{"prompt": "naïve"}\n'.encode(encoding))
    rows, _ = read_all(dataset_job(path, encoding=encoding))
    assert rows["prompt"].to_list() == ["café crème", "naïve"]


def test_non_utf8_bytes_give_line_byte_offset_and_encoding_hint(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    error = dataset_error(dataset_job(path))
    assert error.line == 2 and error.byte_offset == 17 + 15
    assert "input.encoding: latin-1" in str(error) and str(path) in str(error)


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",\n')
    error = dataset_error(dataset_job(path))
    assert error.line == 3
    assert f"{path}, line 3: is not valid JSON" in str(error)
    assert "on_invalid_row: skip" in str(error)


def test_line_that_is_not_an_object_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n["prompt", "b"]\n')
    error = dataset_error(dataset_job(path))
    assert error.line == 2 and "not a JSON object" in str(error)


def test_missing_prompt_field_lists_the_fields_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "hi", "team": "x"}])
    error = dataset_error(dataset_job(path, id_column="id"))
    assert error.field == "prompt"
    assert "'id', 'text', 'team'" in str(error)
    assert "input.prompt_column" in str(error)


def test_missing_id_field_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"key": "a", "prompt": "hi"}])
    error = dataset_error(dataset_job(path, id_column="id"))
    assert error.field == "id" and "'key', 'prompt'" in str(error)


def test_missing_metadata_column_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    error = dataset_error(dataset_job(path, metadata_columns=["owner"]))
    assert error.field == "owner" and "'team'" in str(error)


def test_metadata_column_named_like_an_input_column_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(DatasetError, match="metadata_columns names 'line'"):
        open_dataset(dataset_job(path, metadata_columns=["line"]))


def test_row_missing_its_prompt_field_fails_the_file_by_default(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"promt": "b"}])
    error = dataset_error(dataset_job(path))
    assert error.line == 2 and error.field == "prompt"


def test_skip_sets_bad_rows_aside_and_counts_reconcile(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    lines = [
        '{"id": "a", "prompt": "one"}',
        "{not json",
        '{"id": "b", "prompt": "two"}',
        "42",
        '{"id": "c"}',
        '{"prompt": "no id"}',
        '{"id": "d", "prompt": "three"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    job = dataset_job(path, id_column="id", on_invalid_row="skip")
    summary = open_dataset(job).check()
    assert (summary.rows, summary.rejected) == (3, 4)
    assert summary.input_rows == len(lines)
    rows, rejects = read_all(job, batch_rows=3)
    assert rows["id"].to_list() == ["a", "b", "d"]
    assert rows["row_index"].to_list() == [0, 1, 2]
    assert rejects["line"].to_list() == [2, 4, 5, 6]
    assert "not valid JSON" in rejects["reason"][0]
    assert rejects["raw"][0] == "{not json"
    assert rejects["reason"][2] == "prompt: the row has no such field"


def test_empty_and_whitespace_prompts_are_invalid_rows_not_errors(tmp_path: Path) -> None:
    rows_in = [{"prompt": "fine"}, {"prompt": ""}, {"prompt": "  \n"}, {"prompt": None}]
    job = dataset_job(write_jsonl(tmp_path / "p.jsonl", rows_in))
    assert open_dataset(job).check().invalid == 3
    rows, _ = read_all(job)
    assert rows["invalid_reason"].to_list() == [None] + ["prompt is empty"] * 3


def test_empty_file_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n\n")
    error = dataset_error(dataset_job(path))
    assert "has no rows" in str(error) and str(path) in str(error)


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such input file") as info:
        open_dataset(dataset_job(tmp_path / "nope.jsonl"))
    assert info.value.exit_code == 6


def test_unknown_extension_asks_for_a_format(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(DatasetError, match="input.format"):
        open_dataset(dataset_job(path))
    rows, _ = read_all(dataset_job(path, format="jsonl"))
    assert rows["prompt"].to_list() == ["x"]


def test_duplicate_ids_are_listed_with_their_lines_across_batches(tmp_path: Path) -> None:
    rows_in = [{"id": f"r{i % 5 if i in (7, 9) else i}", "prompt": f"p{i}"} for i in range(12)]
    job = dataset_job(write_jsonl(tmp_path / "p.jsonl", rows_in), id_column="id")
    dataset = open_dataset(job)
    dataset.batch_rows = 4
    with pytest.raises(DatasetError) as info:
        dataset.check()
    message = str(info.value)
    assert "'r2' on lines 3, 8" in message and "'r4' on lines 5, 10" in message
    assert "allow_duplicate_ids" in message
    allowed = dataset_job(tmp_path / "p.jsonl", id_column="id", allow_duplicate_ids=True)
    assert open_dataset(allowed).check().rows == 12


def test_integer_ids_are_cast_to_text_and_checked_for_duplicates(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}])
    with pytest.raises(DatasetError, match="'1' on lines 1, 2"):
        open_dataset(dataset_job(path, id_column="id")).check()


def test_huge_prompt_passes_through_untouched(tmp_path: Path) -> None:
    prompt = ("Explain this log line. " * 25_000)[:500_000] + "é😀"
    rows, _ = read_all(dataset_job(write_jsonl(tmp_path / "p.jsonl", [{"prompt": prompt}])))
    assert rows["prompt"][0] == prompt
    assert rows["messages"][0][0]["content"] == prompt


def test_three_batches_keep_order_and_contiguous_row_index(tmp_path: Path) -> None:
    rows_in = [{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(25)]
    job = dataset_job(write_jsonl(tmp_path / "p.jsonl", rows_in), id_column="id")
    batches: list[Batch] = list(open_dataset(job).batches(batch_rows=10))
    assert [b.rows.height for b in batches] == [10, 10, 5]
    rows = pl.concat([b.rows for b in batches])
    assert rows["row_index"].to_list() == list(range(25))
    assert rows["id"].to_list() == [f"r{i}" for i in range(25)]
    assert rows["line"].to_list() == list(range(1, 26))


def test_tier_hints_and_truthy_json_output(tmp_path: Path) -> None:
    values = [True, "true", "YES", 1, "1", False, "no", 0, None, "maybe"]
    rows_in = [
        {"prompt": f"p{i}", "json_output": v, "tier": " Complex " if i == 0 else None}
        for i, v in enumerate(values)
    ]
    rows, _ = read_all(dataset_job(write_jsonl(tmp_path / "p.jsonl", rows_in)))
    assert rows["json_output"].to_list() == [True] * 5 + [False] * 3 + [None, False]
    assert rows["tier_hint"].to_list() == ["complex"] + [None] * 9


def test_system_prompt_column_builds_system_messages(tmp_path: Path) -> None:
    rows_in = [{"prompt": "a", "sys": "Be terse."}, {"prompt": "b", "sys": ""}]
    job = dataset_job(write_jsonl(tmp_path / "p.jsonl", rows_in), system_prompt_column="sys")
    rows, _ = read_all(job)
    assert rows["system_prompt"].to_list() == ["Be terse.", None]
    assert [len(m) for m in rows["messages"].to_list()] == [2, 1]


def test_metadata_type_widens_across_chunks(tmp_path: Path) -> None:
    rows_in = [{"prompt": f"p{i}", "ref": i if i < 3 else f"x{i}"} for i in range(6)]
    job = dataset_job(write_jsonl(tmp_path / "p.jsonl", rows_in), metadata_columns=["ref"])
    dataset = open_dataset(job)
    dataset.batch_rows = 3
    batches = list(dataset.batches(batch_rows=3))
    assert all(b.rows.schema["ref"] == pl.String for b in batches)
    assert pl.concat([b.rows for b in batches])["ref"].to_list() == [
        "0",
        "1",
        "2",
        "x3",
        "x4",
        "x5",
    ]


def test_messages_column_flattens_text_parts_and_reads_user_turns(tmp_path: Path) -> None:
    chats = [
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi \\ there"}],
        [
            {"role": "user", "content": [{"type": "text", "text": "Part one."}, "Part two."]},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "And a follow-up."},
        ],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [],
        [{"role": "system", "content": "Only a system message."}],
    ]
    rows_in = [{"id": str(i), "chat": c} for i, c in enumerate(chats)]
    job = dataset_job(
        write_jsonl(tmp_path / "p.jsonl", rows_in), id_column="id", messages_column="chat"
    )
    rows, _ = read_all(job)
    assert rows["prompt"].to_list()[:2] == ["Hi \\ there", "Part one.\nPart two.\nAnd a follow-up."]
    assert rows["system_prompt"].to_list()[:2] == ["Be kind.", None]
    assert rows["messages"][1].to_list()[0] == {"role": "user", "content": "Part one.\nPart two."}
    reasons = rows["invalid_reason"].to_list()
    assert reasons[:2] == [None, None]
    assert "image_url" in reasons[2]
    assert reasons[3] == "chat is empty"
    assert reasons[4] == "chat has no user message with text"


def test_openai_batch_files_are_detected_and_validated(tmp_path: Path) -> None:
    def request(custom_id: str, url: str = "/v1/chat/completions") -> dict[str, Any]:
        return {
            "custom_id": custom_id,
            "method": "POST",
            "url": url,
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Question {custom_id}"}],
                "max_tokens": 100,
            },
        }

    path = write_jsonl(
        tmp_path / "batch.jsonl",
        [request("q1"), request("q2", url="/v1/embeddings"), request("q3")],
    )
    dataset = open_dataset(dataset_job(path))
    assert dataset.check().format == "openai_batch"
    rows, _ = read_all(dataset_job(path))
    assert rows["id"].to_list() == ["q1", "q2", "q3"]
    assert rows["prompt"].to_list() == ["Question q1", "Question q2", "Question q3"]
    assert rows["invalid_reason"][0] is None
    assert "/v1/embeddings" in rows["invalid_reason"][1]


def test_openai_batch_format_can_be_named_and_bad_requests_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "requests.txt"
    good = {
        "custom_id": "q1",
        "body": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]},
    }
    path.write_text(json.dumps(good) + "\n" + json.dumps({"custom_id": "q2"}) + "\n")
    job = dataset_job(path, format="openai_batch", on_invalid_row="skip")
    rows, rejects = read_all(job)
    assert rows["id"].to_list() == ["q1"] and rows["prompt"].to_list() == ["Hi"]
    assert rejects.rows() == [(2, "body: has no 'body' object", '{"custom_id": "q2"}')]


def test_lines_split_correctly_across_tiny_read_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block edges inside a line, a CRLF pair or a multi-byte character change nothing."""
    monkeypatch.setattr("batchroute.dataset.source.BLOCK_BYTES", 5)
    prompts = [f"naïve café 😀 number {i}" for i in range(9)]
    path = tmp_path / "p.jsonl"
    body = "\r\n".join(json.dumps({"prompt": p}, ensure_ascii=False) for p in prompts)
    path.write_bytes(("\ufeff" + body + "\r\n").encode("utf-8"))
    rows, _ = read_all(dataset_job(path), batch_rows=4)
    assert rows["prompt"].to_list() == prompts
    assert rows["line"].to_list() == list(range(1, 10))


def test_early_stop_leaves_no_open_file(tmp_path: Path) -> None:
    """Abandoning `batches()` part way (as --limit does) closes the file; warnings are errors."""
    rows_in = [{"prompt": f"p{i}"} for i in range(30)]
    dataset = open_dataset(dataset_job(write_jsonl(tmp_path / "p.jsonl", rows_in)))
    batches = dataset.batches(batch_rows=10)
    first = next(batches)
    batches.close()
    assert first.rows.height == 10
    assert "rows: 30" in repr(dataset)
