"""The one row-key function: what makes two rows the same row, and an answer reusable."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchroute.config import parse_job
from batchroute.schema import INPUT_SCHEMA
from batchroute.store.keys import row_keys, tier_contexts

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


def test_tier_contexts_change_with_what_changes_an_answer() -> None:
    base = tier_contexts(_config())
    faster = _config(
        models={
            "m": {"input_per_mtok": 2, "output_per_mtok": 2, "rpm": 999},
            "big": {"input_per_mtok": 5, "output_per_mtok": 9, "fallback": "m"},
        }
    )
    assert tier_contexts(faster) == base  # prices and limits change no answer
    hotter = tier_contexts(_config(request={"temperature": 0.7}))
    assert hotter["standard"] != base["standard"]
    elsewhere = tier_contexts(_config(endpoint={"base_url": "http://127.0.0.1:9/v1"}))
    assert elsewhere["complex"] != base["complex"]
    renamed = _config(
        models={
            "m": {"input_per_mtok": 1, "output_per_mtok": 2, "api_model": "m-2026"},
            "big": {"input_per_mtok": 5, "output_per_mtok": 9, "fallback": "m"},
        }
    )
    changed = tier_contexts(renamed)
    assert changed["standard"] != base["standard"]
    assert changed["complex"] != base["complex"]  # m is on complex's fallback chain


def test_tier_contexts_name_the_wire_chain_endpoints_and_request_exactly() -> None:
    """The context is part of every key: changing its text would re-buy every old answer."""
    contexts = tier_contexts(_config(request={"temperature": 0.2}))
    assert contexts["complex"] == (
        '{"base_urls":["simulator","simulator"],"chain":["big","m"],'
        '"request":{"max_tokens":1024,"temperature":0.2}}'
    )
