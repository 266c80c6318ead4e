"""The default routing signals, and the small syntax a job uses to add, remove or replace them.

A signal is a labelled, case-insensitive regular expression (Rust `regex` syntax, as polars runs
it: no lookarounds, no backreferences). The defaults keep the intent of the original keyword
lists (issue 2) but match language rather than substrings: word boundaries, inflections, and a
few words allowed between the parts of a phrase.

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


def _rx(text: str) -> str:
    """A default pattern written with ``\\b`` and ``{GAP}``/``{FMT}`` placeholders, expanded."""
    return text.replace(r"\b", _B).replace("{GAP}", _GAP).replace("{FMT}", _FORMATS)


def _defaults() -> dict[str, tuple[Signal, ...]]:
    structured = (
        # A data format as the *output* ("as JSON", "into CSV", "return valid JSON", "a JSON
        # array"), not a format merely mentioned ("why does JSON.parse throw?").
        Signal(
            "json",
            _rx(
                r"\b(?:as|into|to|return|output|emit|produce|respond\s+with"
                r"|(?:respond|reply|answer|output|results?)\s+in)\s+"
                r"(?:a\s+|an\s+|the\s+)?(?:(?:valid|only|strict|plain|nested|equivalent|pretty|compact)\s+)?"
                r"{FMT}\b"
                r"|\b{FMT}[\s-]+(?:objects?|arrays?|output|format(?:ted)?|list|lines"
                r"|records?|rows|payloads?|responses?|schema)\b"
                r"|\bvalid\s+{FMT}\b"
            ),
        ),
        Signal(
            "extract",
            _rx(
                r"\bextract(?:s|ed|ing)?{GAP}(?:from|into|out\s+of|as)\b"
                r"|\bextract\s+(?:all|the|every|each|any)\b"
            ),
        ),
        Signal(
            "parse",
            _rx(
                r"\bpars(?:e|es|ing)\s+(?:this|these|the\s+following|each|every|all|out)\b"
                r"|\bpars(?:e|es|ing){GAP}(?:into|as)\b"
            ),
        ),
        Signal(
            "schema",
            _rx(
                r"\b(?:match(?:es|ing)?|following|conform(?:s|ing)?\s+to|according\s+to|per"
                r"|against|fits?|given|provided|this)\s+(?:the\s+|this\s+)?(?:\w+\s+)?schema\b"
            ),
        ),
        Signal(
            "format as",
            _rx(
                r"\b(?:re)?format(?:s|ted|ting)?{GAP}(?:as|into)\s+(?:a|an|the|one)?\s*"
                r"(?:table|list|rows?|columns?|fields?|key|bullet|markdown|records?|{FMT})"
                r"|\bformat(?:ted)?\s+as\b"
            ),
        ),
        Signal("return as", _rx(r"\breturn(?:s|ed)?(?:\s+\S+){0,3}\s+as\b")),
        Signal(
            "structured",
            _rx(
                r"\bstructured\s+(?:data|output|format|fields?|records?|list|response|json"
                r"|table|summary|extraction)\b"
            ),
        ),
        Signal(
            "into fields",
            _rx(
                r"\b(?:return(?:s|ing)?|output|respond\s+with|answer\s+with)(?:\s+\S+){0,4}\s+"
                r"(?:pairs|rows|lines|fields|records|key[\s-]value)\b"
                r"|\b(?:into|as)(?:\s+\S+){0,6}\s+(?:fields|columns|records|key[\s-]value\s+pairs)\b"
                r"|\bas\s+(?:a\s+)?table\b"
            ),
        ),
        Signal(
            "classify each",
            _rx(
                r"\b(?:classify|categori[sz]e|label|tag|score|rate|detect|identify|determine|map"
                r"|assign)\s+(?:\S+\s+){0,4}(?:each|every)\b"
                r"|\b(?:classify|categori[sz]e|label|tag|map|score|normali[sz]e)\s+"
                r"(?:these|the\s+following|all)\b"
            ),
        ),
    )
    complex_ = (
        Signal("refactor", _rx(r"\brefactor(?:s|ed|ing)?\b")),
        Signal("architect", _rx(r"\b(?:re)?architect(?:s|ed|ing|ure|ures|ural)?\b")),
        Signal(
            "design system",
            _rx(
                r"\b(?:re)?design(?:s|ed|ing)?\s+(?:an?\s+|the\s+|our\s+|my\s+)?(?:\S+[\s-]+){0,3}"
                r"(?:system|service|platform|pipeline|cache|database|schema|protocol|scheduler"
                r"|queue|backend|infrastructure|api|model|policy|strategy|setup|generator)s?\b"
                r"|\bsystem\s+design\b|\bdesign\s+of\b"
            ),
        ),
        Signal("debug", _rx(r"\bdebug(?:s|ged|ging)?\b|\bdiagnos(?:e|es|ed|ing|is)\b")),
        Signal(
            "investigate why",
            _rx(
                r"\b(?:investigate|figure\s+out|work\s+out|find\s+out|reason\s+(?:through|about))"
                r"\s+(?:why|what|whether|where|how)\b|\breason\s+through\b|\bhelp\s+me\s+find\b"
            ),
        ),
        Signal(
            "concurrency",
            _rx(
                r"\b(?:lock[\s-]free|contention|memory\s+ordering|split[\s-]brain|priority\s+"
                r"inversion|leader\s+election|thread\s+dump|exactly[\s-]once|undefined\s+"
                r"behaviou?r|shard(?:s|ed|ing)?)\b"
            ),
        ),
        Signal("race condition", _rx(r"\brace\s+conditions?\b")),
        Signal(
            "security audit",
            _rx(
                r"\bsecurity\s+(?:audit|review|assessment|weakness(?:es)?|problems?|issues?"
                r"|implications?|holes?)\b|\baudit{GAP}(?:security|vulnerab)"
                r"|\bthreat[\s-]model|\bvulnerabilit(?:y|ies)\b"
            ),
        ),
        Signal(
            "performance optimize",
            _rx(
                r"\bperformance\s+optimi[sz](?:e|ation|ing)\b"
                r"|\boptimi[sz](?:e|ing){GAP}(?:performance|latency|throughput|memory)\b"
                r"|\bbottlenecks?\b|\bp9[59](?:\.9)?\s+latency\b"
            ),
        ),
        Signal("explain the trade-offs", _rx(r"\btrade[\s-]?offs?\b")),
        Signal(
            "compare approaches",
            _rx(
                r"\b(?:compar(?:e|ing)|evaluat(?:e|ing)|weigh)(?:\s+\S+){0,4}\s+(?:approaches|options"
                r"|strategies|designs|architectures|alternatives)\b|\bpros\s+and\s+cons\b"
                r"|\bevaluate\s+whether\b"
                r"|\b(?:propose|suggest|come\s+up\s+with|plan)(?:\s+\S+){0,3}\s+(?:strategy"
                r"|architecture|approach|migration|move|cutover)\b"
            ),
        ),
        Signal("root cause", _rx(r"\broot[\s-]+caus(?:e|es|ed|ing)\b")),
        Signal(
            "memory leak",
            _rx(
                r"\b(?:memory|space|file\s+descriptor|connection)\s+leak(?:s|ing)?\b"
                r"|\bleak(?:s|ing)\s+(?:memory|file\s+descriptors|connections)\b"
            ),
        ),
        Signal("deadlock", _rx(r"\bdead[\s-]?lock(?:s|ed|ing)?\b")),
    )
    bulk = (
        Signal(
            "generate tests",
            _rx(
                r"\b(?:generate|write|add|create)(?:\s+\S+){0,3}\s+(?:unit\s+|integration\s+)?"
                r"tests?\b|\btest\s+cases\s+for\b"
            ),
        ),
        Signal(
            "add docstrings",
            _rx(
                r"\b(?:add|write|generate)(?:s|ing)?{GAP}(?:docstrings?|jsdoc|javadoc"
                r"|type\s+(?:hints|annotations)|return\s+type\s+annotations)\b"
            ),
        ),
        Signal(
            "translate all",
            _rx(
                r"\btranslat(?:e|ing)\s+(?:all|every|each|these|the\s+following|this\s+list)\b"
                r"|\btranslat(?:e|ing){GAP}(?:strings|labels|messages)\b"
            ),
        ),
        Signal(
            "add comments",
            _rx(
                r"\b(?:add|write)(?:s|ing)?{GAP}(?:comments?|header|headers|logging\s+statements)\b"
            ),
        ),
        Signal(
            "rename variable",
            _rx(
                r"\brenam(?:e|ing)(?:\s+\S+){0,3}\s+(?:variables?|functions?|methods?|fields?"
                r"|columns?)\b|\b(?:rename|replace|update|convert|wrap)\s+(?:all|every|each)\b"
                r"|\b(?:rename|replace|update|convert|change|wrap)(?:\s+\S+){0,8}\s+"
                r"(?:everywhere|throughout|across)\b"
            ),
        ),
        Signal(
            "format code",
            _rx(
                r"\b(?:re)?format(?:ting)?{GAP}code\b|\b(?:prettify|lint)\s+(?:this|the|my)\b"
                r"|\breformat\s+(?:this|the|these)\b|\bfix\s+(?:the\s+)?indentation\b"
            ),
        ),
        Signal(
            "boilerplate",
            _rx(
                r"\b(?:generate|create|write|scaffold|produce|give\s+me)(?:\s+\S+){0,3}\s+"
                r"boilerplate\b|\bboilerplate\s+(?:for|code\s+for)\b|\bskeleton\b"
                r"|\bgetters?\s+and\s+setters?\b"
            ),
        ),
        Signal(
            "template",
            _rx(
                r"\b(?:create|generate|write|make|draft|fill\s+in|fill\s+out)(?:\s+\S+){0,3}"
                r"\s+templates?\b|\btemplates?\s+for\b"
            ),
        ),
        Signal(
            "placeholder",
            _rx(
                r"\bplaceholder\s+(?:text|content|data|values?|copy|images?|entries|rows)\b"
                r"|\b(?:with|add|insert|generate|create)\s+(?:\w+\s+){0,2}placeholders?\b"
                r"|\b(?:seed|fake|dummy|sample|mock)\s+(?:data|rows|records|objects|users|values)\b"
            ),
        ),
        Signal(
            "stub",
            _rx(
                r"\b(?:create|generate|write|add)(?:\s+\S+){0,3}\s+stubs?\b|\bstub\s+out\b"
                r"|\bstub\s+(?:implementations?|functions?|methods?|classes)\b"
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
