"""The README documents what users and finance rely on: schemas, exit codes, commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from batchroute.cli import main
from batchroute.config import JobConfig
from batchroute.dataset import REJECT_SCHEMA
from batchroute.exitcodes import ExitCode
from batchroute.pricing.forecast import PLAN_SCHEMA
from batchroute.report.schemas import REPORT_FILES
from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA
from batchroute.store.manifest import RunManifest, SessionRecord
from tests.conftest import sample_rows

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

SCHEMAS = {
    "results": RESULT_SCHEMA,
    "attempts": ATTEMPT_SCHEMA,
    "plan": PLAN_SCHEMA,
    **REPORT_FILES,
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_output_column_is_documented(name: str) -> None:
    missing = [column for column in SCHEMAS[name].names() if f"`{column}`" not in README]
    if name in {"attempts"}:  # documented in groups, e.g. `input_tokens` … `reasoning_tokens`
        missing = [c for c in missing if c not in {"output_tokens", "cached_tokens"}]
    assert not missing, f"{name}.parquet columns missing from the README: {missing}"


def test_exit_code_table_matches_the_code() -> None:
    documented = {int(code) for code in re.findall(r"^\| (\d) \|", README, flags=re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}


def test_every_command_is_in_the_command_table() -> None:
    for command in main.list_commands(None):  # type: ignore[arg-type]
        assert f"`batchroute {command}" in README, command


ROOT = Path(__file__).resolve().parent.parent
YAML_BLOCKS = "\n".join(re.findall(r"```yaml\n(.*?)```", README, flags=re.DOTALL))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found.append(annotation)
    for arg in get_args(annotation):
        found += _models_in(arg)
    return found


def _job_keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """Every key a job file may hold, as (dotted path, key), from the pydantic models."""
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append((path, name))
        for inner in _models_in(field.annotation):
            keys += _job_keys(inner, path + ".")
    return keys


def test_every_job_key_is_documented() -> None:
    """A key is documented in one of the README's YAML examples (`key:`) or by its dotted path."""
    keys = _job_keys(JobConfig)
    assert len(keys) > 60  # the walk reached the nested sections
    missing = sorted(
        path
        for path, name in keys
        if not re.search(rf"(^|[\s{{,]){re.escape(name)}:", YAML_BLOCKS, flags=re.MULTILINE)
        and f"`{path}`" not in README
    )
    assert not missing, f"job keys missing from the README: {missing}"


def _documented_run_dir_entries() -> set[str]:
    section = README[README.index("## The run directory") : README.index("### results.parquet")]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE))


def test_every_file_a_run_writes_is_in_the_run_directory_table(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    """Run a job that writes every optional file, and look at what landed in its directory."""
    job = make_job(
        sample_rows(12),
        input={
            "path": str(tmp_path / "prompts.jsonl"),
            "id_column": "id",
            "prompt_column": "prompt",
            "on_invalid_row": "skip",
        },
    )
    with (tmp_path / "prompts.jsonl").open("a") as handle:
        handle.write("{broken\n")
    result = CliRunner().invoke(main, ["run", str(job)])
    assert result.exit_code == 0, result.output
    written = {
        entry.name + ("/" if entry.is_dir() else "")
        for entry in (tmp_path / "runs" / "t").iterdir()
    }
    assert "rejects.parquet" in written
    missing = written - _documented_run_dir_entries()
    assert not missing, f"files a run writes but the README does not list: {sorted(missing)}"
    for name in (*REPORT_FILES, "results", "attempts", "plan", "rejects"):
        assert f"{name}.parquet" in _documented_run_dir_entries(), name


def test_rejects_and_run_json_keys_are_documented() -> None:
    missing = [c for c in REJECT_SCHEMA.names() if f"`{c}`" not in README]
    manifest_keys = [*RunManifest.model_fields, *SessionRecord.model_fields]
    missing += [key for key in manifest_keys if f"`{key}`" not in README]
    assert not missing, f"rejects.parquet columns or run.json keys missing: {missing}"


def test_sample_job_comment_counts_the_prompts_it_runs() -> None:
    comment = (ROOT / "jobs" / "tests.yaml").read_text().splitlines()[0]
    stated = int(re.search(r"(\d+) prompts", comment).group(1))  # type: ignore[union-attr]
    rows = (ROOT / "sample_data" / "prompts.jsonl").read_text().count("\n")
    assert stated == rows


def test_every_log_event_is_documented() -> None:
    source = "".join(
        path.read_text() for path in (ROOT / "batchroute").rglob("*.py") if "sim" not in path.parts
    )
    events = set(re.findall(r'log_event\(\s*[^,]+,\s*"(\w+)"', source))
    assert {"run_started", "progress", "rows_rejected", "run_finished", "error"} <= events
    missing = [event for event in events if f"| `{event}` |" not in README]
    assert not missing, f"log events missing from the README's table: {missing}"


def test_readme_has_no_merge_conflict_markers() -> None:
    """A half-resolved merge must not reach users: no conflict marker lines survive."""
    markers = [line for line in README.splitlines() if line.startswith(("<<<<<<< ", ">>>>>>> "))]
    assert not markers
