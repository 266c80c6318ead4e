"""The README documents what users and finance rely on: schemas, exit codes, commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batchroute.cli import main
from batchroute.exitcodes import ExitCode
from batchroute.pricing.forecast import PLAN_SCHEMA
from batchroute.report.schemas import REPORT_FILES
from batchroute.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA

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
