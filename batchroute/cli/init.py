"""`batchroute init INPUT`: write a commented job for an input file, with its columns detected."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import click
import polars as pl

from batchroute.config import InputConfig
from batchroute.dataset.source import iter_blocks, resolve_source
from batchroute.errors import DatasetError, OutputError
from batchroute.schema import RESULT_SCHEMA

__all__ = ["detect_columns", "init_command", "render_job"]

SAMPLE_ROWS = 200
"""Rows read to detect the columns; the rest of the file is not read."""

_ID_NAMES = ("id", "custom_id", "row_id", "uuid", "key")
_PROMPT_NAMES = ("prompt", "text", "question", "input", "instruction", "query", "content")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _sample(path: Path) -> tuple[pl.DataFrame, str]:
    """The first rows of the file, and its format, read as `run` would find them."""
    source = resolve_source(InputConfig(path=path), path=path)
    if source.format == "parquet":
        return pl.read_parquet(path, n_rows=SAMPLE_ROWS), source.format
    if source.format == "openai_batch":
        raise DatasetError(
            "an OpenAI batch file already holds whole requests",
            path=path,
            hint="write a job by hand with input.format: openai_batch",
        )
    blocks = iter_blocks(source)
    try:
        head = next(blocks, b"")
    finally:
        blocks.close()
    lines = head.decode(source.encoding, errors="replace").splitlines(keepends=True)
    text = "".join(lines[: SAMPLE_ROWS + 1] if len(lines) > 1 else lines)
    if len(lines) > SAMPLE_ROWS + 1 or (len(lines) > 1 and not lines[-1].endswith("\n")):
        text = "".join(lines[:-1])  # the last line may be cut by the block boundary
    data = io.BytesIO(text.encode("utf-8"))
    try:
        if source.format == "csv":
            return pl.read_csv(data, infer_schema_length=0), source.format
        return pl.read_ndjson(data), source.format
    except pl.exceptions.PolarsError as exc:
        raise DatasetError(
            f"cannot read the first rows to detect the columns ({exc})",
            path=path,
            hint="check the file, then run batchroute validate on the job",
        ) from None


def detect_columns(frame: pl.DataFrame, *, path: Path) -> dict[str, object]:
    """Which column is the id, the prompt (or messages), the hints, and what else to keep."""
    names = frame.columns
    lower = {name.lower(): name for name in names}
    id_column = next((lower[n] for n in _ID_NAMES if n in lower), None)
    messages = lower.get("messages")
    if messages is not None and not isinstance(frame.schema[messages], pl.List):
        messages = None
    prompt = next((lower[n] for n in _PROMPT_NAMES if n in lower), None)
    if prompt is None and messages is None:
        texts = [n for n in names if frame.schema[n] == pl.String and n != id_column]
        if not texts:
            raise DatasetError(
                f"no text column to use as the prompt among {names}",
                path=path,
                hint="add a prompt column, or a messages column of chat messages",
            )
        lengths = frame.select(pl.col(texts).str.len_chars().mean())
        prompt = max(texts, key=lambda n: lengths[n][0] or 0)
    tier_hint, json_output = lower.get("tier"), lower.get("json_output")
    # results.parquet's own columns cannot be copied into it under the same name
    taken = {id_column, prompt, messages, tier_hint, json_output, *RESULT_SCHEMA.names()}
    metadata = [n for n in names if n not in taken]
    return {
        "id_column": id_column,
        "prompt_column": None if messages else prompt,
        "messages_column": messages,
        "tier_hint_column": tier_hint,
        "json_output_column": json_output,
        "metadata_columns": metadata,
    }


def _yaml(value: object) -> str:
    return json.dumps(value)  # JSON scalars and lists are YAML


def render_job(input_path: Path, *, name: str, fmt: str, columns: dict[str, object]) -> str:
    """The job file's text: every detected setting, with a comment saying what it does."""
    input_lines = [f"  path: {_yaml(str(input_path))}", f"  format: {fmt}"]
    if columns["id_column"]:
        input_lines.append(f"  id_column: {_yaml(columns['id_column'])}")
    else:
        input_lines.append(
            "  # id_column: id                # none found: a row's id is its number"
        )
    if columns["messages_column"]:
        input_lines.append(f"  messages_column: {_yaml(columns['messages_column'])}")
    else:
        input_lines.append(f"  prompt_column: {_yaml(columns['prompt_column'])}")
    input_lines.append(f"  metadata_columns: {_yaml(columns['metadata_columns'])}")
    for key in ("tier_hint_column", "json_output_column"):
        if columns[key]:
            input_lines.append(f"  {key}: {_yaml(columns[key])}")
    return f"""\
# A job for {input_path.name}, written by `batchroute init`. Columns were detected from its
# first rows; check them, then:
#   batchroute validate {{this file}}   every row read and routed; nothing sent
#   batchroute plan {{this file}}       the forecast cost per tier
#   batchroute run {{this file}}        send it
# Every key is documented in the README's job-file reference.
name: {name}

input:
{chr(10).join(input_lines)}
  on_invalid_row: fail              # skip: unreadable lines go to rejects.parquet instead

# `simulator` answers offline through the real OpenAI client, at no cost. To spend real money,
# set base_url to your endpoint (https://api.openai.com/v1, an OpenRouter or LiteLLM URL) and
# export the key in the variable api_key_env names.
endpoint: {{base_url: simulator, api_key_env: OPENAI_API_KEY, timeout_s: 60}}

request: {{max_tokens: 1024, temperature: 0}}

# The model each tier goes to; prices come from the shipped table (batchroute/data/prices.json).
tiers:
  complex: claude-opus-4-7          # refactors, design, debugging, long prompts
  standard: gpt-5-mini              # everything no rule matches
  structured: {{model: gpt-5-mini, request: {{params: {{response_format: {{type: json_object}}}}}}}}
  bulk: deepseek-chat               # tests, docstrings, translations, boilerplate

# Limits and fallbacks per model; a fallback spends the quota of the model it falls back to.
models:
  claude-opus-4-7: {{fallback: claude-sonnet-4-6, rpm: 500, max_concurrency: 32}}
  claude-sonnet-4-6: {{fallback: gpt-5-mini, rpm: 500, max_concurrency: 32}}
  gpt-5-mini: {{fallback: claude-sonnet-4-6, rpm: 500, max_concurrency: 64}}
  deepseek-chat: {{fallback: gpt-5-mini, rpm: 500, max_concurrency: 64}}

baseline_model: claude-sonnet-4-6   # what "savings" are measured against

budget: {{max_cost_usd: 10}}          # a hard cap: unsent rows are skipped_budget (exit 3)

output: {{dir: "runs/{{name}}/{{date}}"}}
"""


@click.command("init")
@click.argument("input_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the job (default: INPUT's name with .yaml, in the working directory).",
)
@click.option("--name", help="The job's name (default: from INPUT's name).")
@click.option("--force", is_flag=True, help="Overwrite an existing job file.")
def init_command(input_file: Path, out_path: Path | None, name: str | None, force: bool) -> None:
    """Write a commented job file for INPUT_FILE, with its columns detected."""
    frame, fmt = _sample(input_file)
    columns = detect_columns(frame, path=input_file)
    stem = input_file.name.split(".")[0] or "job"
    job_name = name or _NAME.sub("-", stem).strip("-") or "job"
    target = out_path or Path(f"{stem}.yaml")
    if target.exists() and not force:
        raise OutputError("already exists; pass --force to overwrite it", path=target)
    try:
        target.write_text(render_job(input_file, name=job_name, fmt=fmt, columns=columns))
    except OSError as exc:
        raise OutputError(f"cannot write the job file ({exc.strerror})", path=target) from None
    click.echo(f"Wrote {target} for {input_file} ({len(frame.columns)} columns: {frame.columns})")
    click.echo(f"next: batchroute validate {target}")
