"""What known models accept: the shipped table `batchroute/data/models.json`, and its uses.

Real providers refuse some chat-completion parameters per model: OpenAI's reasoning models
(gpt-5*, o1/o3/o4*) want `max_completion_tokens` instead of `max_tokens`, and accept only the
default temperature. The job's `request.max_tokens` is the user's intent; `adapt_body` puts it on
the wire as the field the model wants, and leaves out a value the model would refuse, saying so.
`check_job` names those changes for `validate` and `plan`; `rejection` is the simulator's side:
the error a strict endpoint answers, with OpenAI's own wording.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from batchroute.config import JobConfig

__all__ = [
    "BodyChange",
    "ModelRules",
    "Rejection",
    "adapt_body",
    "check_job",
    "rejection",
    "rules_for",
]


@dataclass(frozen=True, slots=True)
class ModelRules:
    """What one family of models accepts."""

    family: str
    max_tokens_field: str
    default_only: Mapping[str, float]
    """Parameters the model accepts only at their default value."""
    unsupported: frozenset[str]
    """Parameters the model refuses whatever their value."""


@dataclass(frozen=True, slots=True)
class BodyChange:
    """One change `adapt_body` made to a request body, in words an operator can act on."""

    param: str
    message: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """The 400 a strict endpoint answers for a parameter the model refuses."""

    param: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class _Family:
    rules: ModelRules
    match: tuple[str, ...]
    exclude: tuple[str, ...]


@cache
def _families() -> tuple[_Family, ...]:
    text = resources.files("batchroute").joinpath("data/models.json").read_text(encoding="utf-8")
    families = []
    for entry in json.loads(text)["families"]:
        rules = ModelRules(
            family=entry["name"],
            max_tokens_field=entry.get("max_tokens_field", "max_tokens"),
            default_only=dict(entry.get("default_only", {})),
            unsupported=frozenset(entry.get("unsupported", ())),
        )
        families.append(_Family(rules, tuple(entry["match"]), tuple(entry.get("exclude", ()))))
    return tuple(families)


@cache
def rules_for(model: str) -> ModelRules | None:
    """The rules for a wire model name, or None for a model the table does not know."""
    name = model.rsplit("/", 1)[-1].lower()
    for family in _families():
        if any(fnmatch.fnmatchcase(name, p) for p in family.match) and not any(
            fnmatch.fnmatchcase(name, p) for p in family.exclude
        ):
            return family.rules
    return None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return json.dumps(value)


def adapt_body(model: str, fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[BodyChange]]:
    """The body fields as `model` accepts them, and what was changed to get there."""
    body = dict(fields)
    rules = rules_for(model)
    if rules is None:
        return body, []
    changes: list[BodyChange] = []
    if rules.max_tokens_field != "max_tokens" and "max_tokens" in body:
        value = body.pop("max_tokens")
        body.setdefault(rules.max_tokens_field, value)
        changes.append(
            BodyChange(
                "max_tokens",
                f"{model} takes {rules.max_tokens_field}, not max_tokens; "
                f"max_tokens: {_shown(value)} is sent as {rules.max_tokens_field}",
            )
        )
    for param, default in rules.default_only.items():
        if param in body and body[param] != default:
            value = body.pop(param)
            changes.append(
                BodyChange(
                    param,
                    f"{model} accepts only the default {param} ({_shown(default)}); "
                    f"{param}: {_shown(value)} is left out of its requests",
                )
            )
    for param in sorted(rules.unsupported & body.keys()):
        body.pop(param)
        changes.append(
            BodyChange(param, f"{model} does not support {param}; it is left out of its requests")
        )
    return body, changes


def rejection(model: str, body: Mapping[str, Any]) -> Rejection | None:
    """The first parameter of `body` that `model` refuses, as OpenAI words the 400, or None."""
    rules = rules_for(model)
    if rules is None:
        return None
    if rules.max_tokens_field != "max_tokens" and body.get("max_tokens") is not None:
        return Rejection(
            "max_tokens",
            "unsupported_parameter",
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            f"Use '{rules.max_tokens_field}' instead.",
        )
    for param, default in rules.default_only.items():
        value = body.get(param)
        if value is not None and value != default:
            return Rejection(
                param,
                "unsupported_value",
                f"Unsupported value: '{param}' does not support {_shown(value)} with this model. "
                f"Only the default ({_shown(default)}) value is supported.",
            )
    for param in sorted(rules.unsupported):
        if body.get(param) is not None:
            return Rejection(
                param,
                "unsupported_parameter",
                f"Unsupported parameter: '{param}' is not supported with this model.",
            )
    return None


def check_job(config: JobConfig) -> list[str]:
    """Every request parameter a known model of the job rejects, and what batchroute does."""
    tiers_by_change: dict[str, list[str]] = {}
    for tier in config.tiers:
        fields = config.tier_request(tier).body_fields()
        for model in config.chain(tier):
            _, changes = adapt_body(config.api_model(model), fields)
            for change in changes:
                tiers = tiers_by_change.setdefault(change.message, [])
                if tier not in tiers:
                    tiers.append(tier)
    return [f"{message} (tiers: {', '.join(tiers)})" for message, tiers in tiers_by_change.items()]
