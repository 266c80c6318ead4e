"""The default routing signals, and the small syntax a job uses to add, remove or replace them.

A signal is a labelled, case-insensitive regular expression (Rust `regex` syntax, as polars runs
it: no lookarounds, no backreferences). The defaults are narrow on purpose (issue 11): they are
the high-precision layer in front of the router model, so most fire only on a request that opens
the prompt ("Translate this...", "Please add docstrings...", "Extract the..."), or on an explicit
output format ("return it as JSON"). Everything else is the model's to decide.

A job writes signals as strings, in one of two forms:

- a **phrase**, e.g. ``"root cause"``, ``"generate ... test*"``, ``"api"``: words must appear in
  order, whole-word (``api`` does not fire on "capital"); whitespace or a hyphen may separate them;
  ``...`` (or ``…``) stands for up to three other words; a word ending in ``*`` matches any
  ending (``test*``: test, tests, testing). The label is the phrase as written.
- a **raw regex** after ``re:``, e.g. ``"re:\\bk8s\\b"``; the label is the text after ``re:``.

``remove`` names labels of the defaults (listed by ``batchroute.classify.signals.DEFAULT_SIGNALS``
and printed in any error about an unknown label).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from batchroute.config import SignalOverride
from batchroute.errors import JobError

__all__ = [
    "DEFAULT_SIGNALS",
    "SIGNAL_TIERS",
    "Signal",
    "compile_signal",
    "phrase_pattern",
    "resolve_signals",
]

SIGNAL_TIERS: tuple[str, ...] = ("structured", "complex", "bulk")
"""The tiers that have signal rules; `standard` is what nothing matched."""

_B = r"(?-u:\b)"
"""An ASCII word boundary: it keeps polars' regex on its fast DFA path for any text."""
_GAP = r"(?:[\s-]+\S+){0,3}[\s-]+"
"""Up to three other words between two parts of a phrase."""
_FORMATS = r"(?:json|jsonl|ndjson|csv|tsv|xml|yaml)"


@dataclass(frozen=True, slots=True)
class Signal:
    """One labelled pattern of a tier; `pattern` is case-insensitive Rust regex syntax."""

    label: str
    pattern: str


_OPEN = r"^\W*(?:(?:please|pls|kindly|now|then|also|can\s+you|could\s+you|would\s+you)[\s,]+)*"
"""The start of a prompt that is a request: an imperative signal must follow it directly."""


def _rx(text: str) -> str:
    """A default pattern written with ``\\b``, ``{GAP}``, ``{FMT}`` and ``{DO}`` placeholders."""
    return (
        text.replace(r"\b", _B)
        .replace("{GAP}", _GAP)
        .replace("{FMT}", _FORMATS)
        .replace("{DO}", _OPEN)
    )


def _do(text: str) -> str:
    """An imperative signal: `text` must open the prompt (after "please", "can you"...)."""
    return _rx("{DO}(?:" + text + ")")


def _defaults() -> dict[str, tuple[Signal, ...]]:
    # The defaults are the high-precision layer in front of the router model: each fires only on
    # a request to do the work (an imperative opening the prompt) or an explicit output format.
    # A question about a task ("what does 'generate tests' do?"), a subject noun ("add comments
    # to this *deadlock* script") or a format named as input ("exports arrive as CSV") is left to
    # the model, which reads the whole prompt.
    structured = (
        Signal(
            "json",
            _rx(
                r"\b(?:return|output|emit|respond|reply|answer|give\s+(?:it|them|me|back))"
                r"(?:\s+\S+){0,4}\s+(?:as|in)\s+(?:a\s+|an\s+)?(?:(?:valid|strict|plain|compact)\s+)?"
                r"{FMT}\b|\b(?:respond|reply|answer)\s+(?:with|in)\s+(?:only\s+)?(?:valid\s+)?{FMT}\b"
                r"|\b{FMT}\s+only\b|\bonly\s+(?:valid\s+)?{FMT}\b"
            ),
        ),
        Signal("extract", _do(r"\bextract(?:s|ed|ing)?\b|\bpull\s+out\s+(?:the|all|every|each)\b")),
        Signal(
            "parse",
            _do(r"\bpars(?:e|es|ing)\s+(?:this|these|the|each|every|all|out)\b"),
        ),
        Signal(
            "schema",
            _rx(
                r"\b(?:match(?:es|ing)?|conform(?:s|ing)?\s+to|according\s+to|following)\s+"
                r"(?:the\s+|this\s+)?(?:\w+\s+)?schema\b"
            ),
        ),
        Signal(
            "convert to format",
            _do(
                r"\b(?:convert|turn|transform|(?:re)?format|put|output)(?:\s+\S+){0,8}\s+"
                r"(?:into|to|as)\s+(?:a\s+|an\s+)?(?:valid\s+)?(?:{FMT}|(?:markdown\s+)?table)\b"
            ),
        ),
        Signal(
            "classify each",
            _do(
                r"\b(?:classify|categori[sz]e|tag|label)\s+(?:\S+\s+){0,4}(?:each|every|these|all)\b"
            ),
        ),
    )
    complex_ = (
        Signal("refactor", _do(r"\brefactor\b")),
        Signal("debug", _do(r"\bdebug\b|\bdiagnose\b|\btroubleshoot\b")),
        Signal(
            "investigate why",
            _do(
                r"\b(?:investigate|figure\s+out|work\s+out|find\s+out|explain)\s+why\b"
                r"|\bfind\s+(?:the\s+)?root[\s-]+cause\b|\bhelp\s+me\s+(?:debug|find\s+why)\b"
            ),
        ),
        Signal(
            "design system",
            _do(
                r"\b(?:re)?design\s+(?:an?\s+|the\s+|our\s+|my\s+)?(?:\S+[\s-]+){0,3}"
                r"(?:system|service|platform|pipeline|cache|database|protocol|scheduler"
                r"|queue|backend|infrastructure|architecture|sharding|replication)s?\b"
                r"|\barchitect\b"
            ),
        ),
        Signal(
            "security audit",
            _do(r"\b(?:audit|threat[\s-]model|pen[\s-]?test)\b"),
        ),
        Signal(
            "prove",
            _do(r"\bprove\s+(?:that|the)\b|\bderive\b"),
        ),
    )
    bulk = (
        Signal(
            "generate tests",
            _do(
                r"\b(?:generate|write|add|create)(?:\s+\S+){0,3}\s+(?:unit\s+|integration\s+)?"
                r"tests?\s+(?:for|to|that|covering)\b"
            ),
        ),
        Signal(
            "add docstrings",
            _do(
                r"\b(?:add|write|generate){GAP}(?:docstrings?|jsdoc|javadoc"
                r"|type\s+(?:hints|annotations)|return\s+type\s+annotations)\b"
            ),
        ),
        Signal("translate", _do(r"\btranslate\b")),
        Signal("add comments", _do(r"\badd{GAP}(?:comments?|logging\s+statements)\b")),
        Signal(
            "rename",
            _do(
                r"\brename\b|\b(?:replace|update|convert|change|wrap)\s+(?:all|every|each)\b"
                r"|\b(?:replace|update|change)(?:\s+\S+){0,8}\s+(?:everywhere|throughout)\b"
            ),
        ),
        Signal(
            "format code",
            _do(
                r"\b(?:re)?format(?:ting)?{GAP}code\b|\b(?:prettify|lint)\s+(?:this|the|my)\b"
                r"|\breformat\b|\bfix\s+(?:the\s+)?indentation\b"
            ),
        ),
        Signal(
            "proofread",
            _do(r"\b(?:fix|correct)\s+(?:the\s+)?(?:grammar|spelling|typos?|punctuation)\b"),
        ),
        Signal(
            "boilerplate",
            _do(
                r"\b(?:generate|create|write|scaffold)(?:\s+\S+){0,3}\s+"
                r"(?:boilerplate|stubs?|skeleton|getters?\s+and\s+setters?)\b|\bscaffold\b"
            ),
        ),
        Signal(
            "placeholder",
            _do(
                r"\b(?:generate|create|make|write)(?:\s+\S+){0,3}\s+(?:placeholder|fake|dummy|mock"
                r"|seed)\s+(?:text|content|data|values?|rows|records|users|entries)\b"
            ),
        ),
    )
    return {"structured": structured, "complex": complex_, "bulk": bulk}


DEFAULT_SIGNALS: Mapping[str, tuple[Signal, ...]] = _defaults()
"""Each signal tier's default signals, in the order they are reported when several match."""


def phrase_pattern(phrase: str) -> str:
    """The whole-word, case-insensitive pattern for a phrase (see the module docstring)."""
    parts: list[str] = []
    pending_gap = False
    for word in phrase.split():
        if word in {"...", "…"}:
            pending_gap = True
            continue
        if parts:
            parts.append(_GAP if pending_gap else r"[\s-]+")
        pending_gap = False
        if word.endswith("*") and len(word) > 1:
            parts.append(re.escape(word[:-1]) + r"\w*")
        else:
            parts.append(re.escape(word))
    if not parts:
        raise ValueError(f"the signal {phrase!r} has no words")
    return _B + "".join(parts) + _B


def compile_signal(text: str) -> Signal:
    """A job's signal string (a phrase, or ``re:REGEX``) as a `Signal`."""
    if text.startswith("re:"):
        return Signal(text[3:], text[3:])
    return Signal(text, phrase_pattern(text))


def resolve_signals(
    overrides: Mapping[str, SignalOverride], *, tiers: Collection[str], path: Path | None = None
) -> dict[str, tuple[Signal, ...]]:
    """Each mapped signal tier's signals: the defaults with the job's overrides applied."""
    resolved: dict[str, tuple[Signal, ...]] = {}
    for tier in SIGNAL_TIERS:
        if tier not in tiers:
            continue
        signals = list(DEFAULT_SIGNALS[tier])
        override = overrides.get(tier)
        if override is not None:
            if override.replace is not None:
                signals = [compile_signal(text) for text in override.replace]
            labels = {s.label.casefold(): s for s in signals}
            for label in override.remove:
                if label.casefold() not in labels:
                    known = ", ".join(repr(s.label) for s in signals)
                    raise JobError(
                        f"names '{label}', which is not a signal of this tier "
                        f"(its signals: {known})",
                        path=path,
                        key=f"routing.signals.{tier}.remove",
                    )
                signals = [s for s in signals if s.label.casefold() != label.casefold()]
            signals.extend(compile_signal(text) for text in override.add)
        resolved[tier] = tuple(signals)
    return resolved
