"""Row identity: the one function that says whether an earlier answer is still this row's answer.

A row's key is a digest of everything that decides its answer: the row's own fields (id, system
prompt, prompt, chat messages) and its tier's context (the model chain as sent on the wire, each
model's endpoint and the tier's request body). Resume skips the keys an earlier session settled,
and assembly joins a run's rows to their best record by key, so this module is the only place
that decides when an answer is reused and when it is bought again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import polars as pl

if TYPE_CHECKING:
    from batchroute.config import JobConfig

__all__ = ["KEY_VERSION", "row_keys", "tier_contexts"]

KEY_VERSION: Final = "br1"
"""Mixed into every row key; bump it only to invalidate every old answer on purpose."""

_NULL = "~"


def tier_contexts(config: JobConfig) -> dict[str, str]:
    """For each tier, the canonical JSON of what besides the row decides its answer.

    That is the model chain (the names sent on the wire), each model's endpoint base URL, and
    the tier's merged request body fields. Job-local model names, headers, limits and prices
    change no answer and are left out, so editing them re-buys nothing.
    """
    contexts: dict[str, str] = {}
    for tier in config.tiers:
        chain = config.chain(tier)
        context: dict[str, object] = {
            "chain": [config.api_model(model) for model in chain],
            "base_urls": [config.endpoint_for(model).base_url for model in chain],
            "request": config.tier_request(tier).body_fields(),
        }
        checks = config.checks(tier)
        if checks:
            # Checks decide which tier's answer a row keeps: the checks, the path and its tiers'
            # own contexts are part of the key (a job without checks keeps its keys unchanged).
            context["verify"] = {
                "checks": [check.model_dump(mode="json") for check in checks],
                "path": list(config.escalation_path(tier)[: config.verify.max_escalations]),
            }
            judge = config.verify.judge
            if judge is not None and any(check.check == "judge" for check in checks):
                context["judge"] = {
                    **judge.model_dump(mode="json", exclude={"expected_output_tokens"}),
                    "model": config.api_model(judge.model),
                }
        contexts[tier] = json.dumps(context, sort_keys=True, separators=(",", ":"), default=str)
    own = dict(contexts)
    for name, context_json in own.items():
        path = config.escalation_path(name)[: config.verify.max_escalations]
        if config.checks(name) and path:
            climbed = [own[t] for t in path]
            contexts[name] = json.dumps([context_json, climbed], separators=(",", ":"))
    return contexts


def _encoded(expr: pl.Expr) -> pl.Expr:
    """A string field as `<byte length>:<text>`, or `~:` for null: unambiguous when joined."""
    # No when/then: inside list.eval it costs twice as much as fill_null.
    return pl.concat_str(
        [expr.str.len_bytes().cast(pl.String).fill_null(_NULL), pl.lit(":"), expr.fill_null("")]
    )


def _string_column(frame: pl.DataFrame, name: str) -> pl.Expr:
    if name not in frame.columns:
        return pl.lit(None, dtype=pl.String)
    return pl.col(name).cast(pl.String)


def _messages_expr(frame: pl.DataFrame) -> pl.Expr:
    """The chat as `[<turns>:` followed by each turn's encoded role and content."""
    if "messages" not in frame.columns:
        return pl.lit("[" + _NULL + ":")
    messages = pl.col("messages")
    turns = messages.list.eval(
        pl.concat_str(
            [
                _encoded(pl.element().struct.field("role")),
                _encoded(pl.element().struct.field("content")),
            ]
        )
    ).list.join("")
    return pl.concat_str(
        [
            pl.lit("["),
            messages.list.len().cast(pl.String).fill_null(_NULL),
            pl.lit(":"),
            turns.fill_null(""),
        ]
    )


def row_keys(frame: pl.DataFrame, *, context: Mapping[str, str]) -> pl.Series:
    """The identity of each row: 32 hex characters that change when its answer could.

    The key is blake2b-128 over a length-prefixed serialisation of the row's id, system prompt,
    prompt, chat messages (each role and content) and the digest of its tier's `context` (see
    `tier_contexts`). It is stable across processes, platforms and versions: it is built only
    from the bytes of those fields, never from polars' own hashing, which is seeded per build.
    `frame` needs `id` and `tier`; `prompt`, `system_prompt` and `messages` are used when
    present. Every tier of a valid row must be in `context`; invalid rows (never sent) whose
    tier has none get a key without a context.
    """
    missing = [name for name in ("id", "tier") if name not in frame.columns]
    if missing:
        raise ValueError(f"row_keys needs the columns {missing}; the frame has {frame.columns}")
    valid = frame.filter(pl.col("invalid_reason").is_null()) if "invalid_reason" in frame else frame
    tiers = valid.get_column("tier").drop_nulls().unique().to_list()
    unknown = sorted(str(tier) for tier in tiers if tier not in context)
    if unknown:
        raise ValueError(f"row_keys has no context for the tiers {unknown}")
    digests = {
        tier: hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
        for tier, text in context.items()
    }
    context_digest = (
        pl.col("tier")
        .cast(pl.String)
        .replace_strict(list(digests), list(digests.values()), default=None, return_dtype=pl.String)
    )
    material = frame.select(
        pl.concat_str(
            [
                pl.lit(KEY_VERSION + "|"),
                _encoded(_string_column(frame, "id")),
                _encoded(_string_column(frame, "system_prompt")),
                _encoded(_string_column(frame, "prompt")),
                _messages_expr(frame),
                _encoded(context_digest),
            ]
        )
        .cast(pl.Binary)
        .alias("material")
    ).to_series()
    # A stable cryptographic hash has no polars expression, so this one step runs per row; the
    # serialisation above is vectorised and the loop only hashes bytes (about 1 us a row).
    blake2b = hashlib.blake2b
    keys = [blake2b(data, digest_size=16).hexdigest() for data in material.to_list()]
    return pl.Series("row_key", keys, dtype=pl.String)
