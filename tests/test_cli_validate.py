"""`batchroute validate`: each bad input of issue 5 through the CLI, its message and exit code."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
import zstandard
from click.testing import CliRunner

from batchroute.cli import main
from tests.conftest import job_dict, sample_rows

JobWriter = Callable[..., tuple[Path, Path]]

# sample_rows cycles ten prompts whose tiers are unambiguous: two complex, three standard, two
# structured, and three bulk (one of them by its metadata hint).
TIER_OF_PROMPT = [
    "complex",
    "standard",
    "structured",
    "bulk",
    "complex",
    "standard",
    "structured",
    "bulk",
    "standard",
    "bulk",
]


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.fixture
def write_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobWriter:
    """Write an input file and a simulator job over it into tmp_path (the working directory)."""
    monkeypatch.chdir(tmp_path)

    def write(
        name: str, data: str | bytes, *, job: dict[str, Any] | None = None, **input_settings: Any
    ) -> tuple[Path, Path]:
        path = tmp_path / name
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        spec = job_dict(path, **(job or {}))
        spec["input"] = {**spec["input"], **input_settings}
        spec["input"] = {k: v for k, v in spec["input"].items() if v is not None}
        job_path = tmp_path / "job.yaml"
        job_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return job_path, path

    return write


def validate(job: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["validate", str(job)], catch_exceptions=False)
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stdout, result.stderr


def tier_table(out: str) -> dict[str, tuple[int, str, str]]:
    """The printed table as {tier: (rows, share, model)}."""
    table = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 4 and cells[1].isdigit():
            table[cells[0]] = (int(cells[1]), cells[2], cells[3])
    return table


def assert_file_error(code: int, out: str, err: str, *, path: Path, says: list[str]) -> None:
    """A file-level problem: exit 6, one line on stderr naming the file, nothing per tier."""
    assert code == 6, (out, err)
    assert err.startswith(f"batchroute: error: {path}")
    assert len(err.strip().splitlines()) == 1
    for text in says:
        assert text in err, (text, err)
    assert tier_table(out) == {}
    assert not Path("runs").exists()


def test_happy_path_prints_rows_share_and_model_per_tier(write_job: JobWriter) -> None:
    job, path = write_job("p.jsonl", jsonl(sample_rows(40)))
    code, out, err = validate(job)
    assert code == 0, err
    assert out.splitlines()[0] == f"{path}: 40 rows (jsonl)"
    assert tier_table(out) == {
        "complex": (8, "20.0%", "big"),
        "standard": (12, "30.0%", "mid"),
        "structured": (8, "20.0%", "mid"),
        "bulk": (12, "30.0%", "small"),
    }
    assert "ok: every row can be sent" in out
    assert not Path("runs").exists()


def test_validate_never_calls_the_endpoint(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pointed at a live listening socket, validate never even connects to it."""
    monkeypatch.setenv("BR_TEST_KEY", "sk-test-validate")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        endpoint = {"base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": "BR_TEST_KEY"}
        job, _ = write_job("p.jsonl", jsonl(sample_rows(12)), job={"endpoint": endpoint})
        code, _, err = validate(job)
        assert code == 0, err
        with pytest.raises(BlockingIOError):
            server.accept()
    assert not Path("runs").exists()


@pytest.mark.parametrize(
    ("name", "data", "found"),
    [
        ("p.jsonl", '{"id": "a", "text": "hi", "team": "x"}\n', "'id', 'text', 'team'"),
        ("p.csv", "id,text,team\na,hi,x\n", "'id', 'text', 'team'"),
    ],
)
def test_missing_prompt_column_lists_the_columns_found(
    write_job: JobWriter, name: str, data: str, found: str
) -> None:
    job, path = write_job(name, data)
    code, out, err = validate(job)
    assert_file_error(code, out, err, path=path, says=["'prompt'", found, "input.prompt_column"])


def test_missing_id_column_lists_the_columns_found(write_job: JobWriter) -> None:
    job, path = write_job("p.jsonl", '{"key": "a", "prompt": "hi", "team": "x"}\n')
    code, out, err = validate(job)
    assert_file_error(
        code, out, err, path=path, says=["'id'", "'key', 'prompt'", "input.id_column"]
    )


def test_malformed_jsonl_line_gives_its_line_number(write_job: JobWriter) -> None:
    lines = jsonl(sample_rows(5)).splitlines()
    lines[2] = '{"id": "r0002", "prompt": "cut off'
    job, path = write_job("p.jsonl", "\n".join(lines) + "\n")
    code, out, err = validate(job)
    says = [f"{path}, line 3:", "is not valid JSON", "on_invalid_row: skip"]
    assert_file_error(code, out, err, path=path, says=says)


def test_line_that_is_not_an_object_gives_its_line_number(write_job: JobWriter) -> None:
    lines = jsonl(sample_rows(4)).splitlines()
    lines[1] = '["r0001", "a list, not an object"]'
    job, path = write_job("p.jsonl", "\n".join(lines) + "\n")
    code, out, err = validate(job)
    assert_file_error(code, out, err, path=path, says=[f"{path}, line 2:", "not a JSON object"])


def test_csv_unterminated_quote_gives_the_line_it_opens_on(write_job: JobWriter) -> None:
    data = 'id,prompt,team\na,fine,x\nb,"never closed,x\nc,more,x\nd,rows,x\n'
    job, path = write_job("p.csv", data)
    code, out, err = validate(job)
    assert_file_error(code, out, err, path=path, says=[f"{path}, line 3", "never closed"])


def test_non_utf8_bytes_give_the_byte_offset_and_an_encoding_hint(write_job: JobWriter) -> None:
    job, path = write_job("p.csv", b"id,prompt,team\na,ok,x\nb,na\xefve,x\n")
    code, out, err = validate(job)
    assert_file_error(code, out, err, path=path, says=["byte 26", "input.encoding"])
    job, _ = write_job("p.csv", b"id,prompt,team\na,ok,x\nb,na\xefve,x\n", encoding="latin-1")
    assert validate(job)[0] == 0


def test_empty_file_is_a_clear_error(write_job: JobWriter) -> None:
    job, path = write_job("p.jsonl", b"")
    code, out, err = validate(job)
    assert_file_error(code, out, err, path=path, says=["is empty", "input.path"])


def test_csv_with_only_a_header_is_a_clear_error(write_job: JobWriter) -> None:
    job, path = write_job("p.csv", "id,prompt,team\r\n")
    code, out, err = validate(job)
    assert_file_error(code, out, err, path=path, says=["has no rows", "only a header"])


def test_duplicate_ids_are_listed_unless_the_job_allows_them(write_job: JobWriter) -> None:
    rows = sample_rows(12)
    for i, row in enumerate(rows):
        row["id"] = f"d{i % 4}" if i < 8 else f"u{i}"  # d0..d3 twice each
    job, path = write_job("p.jsonl", jsonl(rows))
    code, out, err = validate(job)
    says = ["duplicate ids", "'d0' on lines 1, 5", "'d3' on lines 4, 8", "allow_duplicate_ids"]
    assert_file_error(code, out, err, path=path, says=says)
    job, _ = write_job("p.jsonl", jsonl(rows), allow_duplicate_ids=True)
    code, out, err = validate(job)
    assert code == 0, err
    assert sum(rows for rows, _, _ in tier_table(out).values()) == 12


def test_unknown_tier_hint_lists_that_row_and_exits_1(write_job: JobWriter) -> None:
    rows = sample_rows(10)
    rows[4]["tier"] = "gold"
    job, _ = write_job("p.jsonl", jsonl(rows))
    code, out, err = validate(job)
    assert code == 1, err
    assert "1 row would fail without being sent" in out
    assert "line 5, id r0004: tier hint 'gold' names no tier of this job" in out
    table = tier_table(out)
    assert table["(would fail)"] == (1, "10.0%", "-")
    assert sum(rows for rows, _, _ in table.values()) == 10
    assert not Path("runs").exists()


def test_null_and_empty_prompts_list_those_rows_and_exit_1(write_job: JobWriter) -> None:
    rows = sample_rows(10)
    rows[1]["prompt"] = None
    rows[6]["prompt"] = "   "
    job, _ = write_job("p.jsonl", jsonl(rows))
    code, out, err = validate(job)
    assert code == 1, err
    assert "2 rows would fail without being sent" in out
    assert "line 2, id r0001: prompt is empty" in out
    assert "line 7, id r0006: prompt is empty" in out
    assert tier_table(out)["(would fail)"] == (2, "20.0%", "-")


def test_skip_lists_rejects_with_line_and_reason_and_exits_1(write_job: JobWriter) -> None:
    lines = jsonl(sample_rows(10)).splitlines()
    lines[3] = "{broken"
    lines[8] = "42"
    job, path = write_job("p.jsonl", "\n".join(lines) + "\n", on_invalid_row="skip")
    code, out, err = validate(job)
    assert code == 1, err
    assert out.splitlines()[0] == f"{path}: 10 rows (jsonl)"
    assert "2 rows would be set aside in rejects.parquet" in out
    listed = [line.strip() for line in out.splitlines() if line.startswith("  line ")]
    assert listed[0].startswith("line 4, rejected: is not valid JSON")
    assert listed[1].startswith("line 9, rejected:") and "not a JSON object" in listed[1]
    table = tier_table(out)
    assert table["(rejected)"] == (2, "20.0%", "-")
    assert sum(rows for rows, _, _ in table.values()) == 10
    assert not Path("runs").exists()


def test_counts_are_real_totals_across_batches_and_the_list_is_in_file_order(
    write_job: JobWriter,
) -> None:
    """25 empty prompts and 3 rejects over many batches: the totals count them all, 10 shown."""
    rows = sample_rows(60)
    for row in rows[10:35]:
        row["prompt"] = ""
    lines = jsonl(rows).splitlines()
    for at in (2, 40, 55):
        lines[at] = "not json"
    job, _ = write_job(
        "p.jsonl", "\n".join(lines) + "\n", on_invalid_row="skip", job={"run": {"batch_rows": 7}}
    )
    code, out, err = validate(job)
    assert code == 1, err
    assert "25 rows would fail without being sent" in out
    assert "3 rows would be set aside" in out
    listed = [line for line in out.splitlines() if line.startswith("  line ")]
    assert [int(line.split()[1].rstrip(",")) for line in listed] == [3, *range(11, 20)]
    assert "  ... and 18 more" in out
    table = tier_table(out)
    assert table["(would fail)"][0] == 25 and table["(rejected)"][0] == 3
    assert sum(rows for rows, _, _ in table.values()) == 60


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_input_validates(write_job: JobWriter, suffix: str) -> None:
    body = jsonl(sample_rows(20)).encode()
    packed = gzip.compress(body) if suffix.endswith(".gz") else zstandard.compress(body)
    job, path = write_job(f"p{suffix}", packed)
    code, out, err = validate(job)
    assert code == 0, err
    assert out.splitlines()[0] == f"{path}: 20 rows (jsonl)"
    assert tier_table(out)["complex"] == (4, "20.0%", "big")


def test_bom_and_crlf_csv_validates(write_job: JobWriter) -> None:
    rows = sample_rows(10)
    body = "id,prompt,team,tier\r\n" + "".join(
        f'{r["id"]},"{r["prompt"]}",{r["team"]},{r.get("tier", "")}\r\n' for r in rows
    )
    job, path = write_job("p.csv", ("\ufeff" + body).encode("utf-8"))
    code, out, err = validate(job)
    assert code == 0, err
    assert out.splitlines()[0] == f"{path}: 10 rows (csv)"
    expected = {tier: TIER_OF_PROMPT.count(tier) for tier in set(TIER_OF_PROMPT)}
    assert {tier: rows for tier, (rows, _, _) in tier_table(out).items()} == expected


def test_openai_batch_api_file_validates(write_job: JobWriter) -> None:
    requests = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": row["prompt"]},
                ],
            },
        }
        for i, row in enumerate(sample_rows(9))  # the tenth prompt's tier comes from a hint
    ]
    job, path = write_job(
        "batch.jsonl", jsonl(requests), id_column=None, metadata_columns=None, prompt_column=None
    )
    code, out, err = validate(job)
    assert code == 0, err
    assert out.splitlines()[0] == f"{path}: 9 rows (openai_batch)"
    expected = {tier: TIER_OF_PROMPT[:9].count(tier) for tier in set(TIER_OF_PROMPT)}
    assert {tier: rows for tier, (rows, _, _) in tier_table(out).items()} == expected


def test_validate_as_a_subprocess_the_way_cron_calls_it(write_job: JobWriter) -> None:
    rows = sample_rows(6)
    rows[2]["prompt"] = ""
    job, _ = write_job("p.jsonl", jsonl(rows))
    proc = subprocess.run(
        [sys.executable, "-m", "batchroute", "validate", str(job)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "line 3, id r0002: prompt is empty" in proc.stdout
    assert proc.stderr == ""


def test_validate_fails_when_the_key_variable_is_unset(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing key variable is a configuration error (exit 6) naming the variable."""
    monkeypatch.delenv("BR_TEST_KEY", raising=False)
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "BR_TEST_KEY"}
    job, _ = write_job("p.jsonl", jsonl(sample_rows(4)), job={"endpoint": endpoint})
    code, out, err = validate(job)
    assert code == 6, out + err
    assert "BR_TEST_KEY" in err and "endpoint.api_key_env" in err
    assert "ok: every row can be sent" not in out


def test_validate_format_json_and_tsv_give_exact_counts(write_job: JobWriter) -> None:
    job, _ = write_job("p.jsonl", jsonl(sample_rows(40)))
    result = CliRunner().invoke(main, ["validate", str(job), "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["rows"] == 40 and document["ok"] is True
    assert {t["tier"]: t["rows"] for t in document["tiers"]}["bulk"] == 12
    tsv = CliRunner().invoke(main, ["validate", str(job), "--format", "tsv"]).stdout
    header, *lines = tsv.splitlines()
    assert header.split("\t") == ["tier", "rows", "share", "model"]
    assert sum(int(line.split("\t")[1]) for line in lines) == 40
