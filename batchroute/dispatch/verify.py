"""Checks on an answer before its row counts as ok: the deterministic half of verify-and-escalate.

A tier's checks (`tiers.<tier>.verify`, else `verify.default`) are compiled once per run into a
`Verifier`: regular expressions are compiled and a JSON Schema becomes a `jsonschema` validator,
so checking an answer allocates little beyond the parse the `json` check needs. Every check runs
(they cost microseconds) so `verify_failures` names all that failed, each as `check: why`.

    check          passes when
    json           the answer parses as JSON; with `json_schema`, it is also valid against it
    not_truncated  finish_reason is not `length`
    not_refusal    no refusal pattern matches (case-insensitive; `patterns` or the defaults)
    min_chars      the answer has at least `value` characters
    max_chars      the answer has at most `value` characters
    regex          `pattern` is found (`must_match: true`) or is not found (`must_match: false`)
    judge          a model grades the answer against a rubric (`dispatch.judge`); it runs last,
                   and only when every deterministic check passed, since it costs a call
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from batchroute.config import CheckConfig

__all__ = ["DEFAULT_REFUSAL_PATTERNS", "Verifier", "validate_check"]

DEFAULT_REFUSAL_PATTERNS: Final = (
    r"^\W*(?:i'?m|i am) (?:sorry|afraid),? (?:but )?i (?:can(?:'|no)?t|cannot|won'?t|am unable)",
    r"^\W*i (?:can(?:'|no)?t|cannot|won'?t|am unable to) (?:help|assist|comply|provide|do that)",
    r"^\W*(?:sorry|unfortunately),? (?:but )?i (?:can(?:'|no)?t|cannot|am unable)",
    r"\bas an ai(?: language model)?,? i (?:can(?:'|no)?t|cannot|am unable|don'?t)",
)
"""What marks a refusal when a `not_refusal` check gives no `patterns` of its own."""

_PASSED: Final[tuple[str, ...]] = ()
_NO_CONTENT: Final = ("content: the answer has no content",)

_Check = Callable[[str, "str | None"], "str | None"]
"""A compiled check: (content, finish_reason) -> None when it passes, else why it failed."""


def validate_check(check: CheckConfig) -> None:
    """Raise ValueError if a check's settings do not fit it (run at job load, by the config)."""
    name = check.check
    if name == "json" and check.json_schema is not None:
        from jsonschema.exceptions import SchemaError

        schema = dict(check.json_schema)
        try:
            _validator_class(schema).check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "the top level"
            raise ValueError(
                f"json_schema is not a valid JSON Schema ({exc.message}, at {where})"
            ) from None
    if name in {"min_chars", "max_chars"} and check.value is None:
        raise ValueError(f"the {name} check needs a value (a number of characters)")
    if name == "regex" and check.pattern is None:
        raise ValueError("the regex check needs a pattern")
    for pattern in (check.pattern,) if check.pattern is not None else (check.patterns or ()):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
    misplaced = {
        "json_schema": check.json_schema is not None and name != "json",
        "patterns": check.patterns is not None and name != "not_refusal",
        "value": check.value is not None and name not in {"min_chars", "max_chars"},
        "pattern": check.pattern is not None and name != "regex",
        "rubric": check.rubric is not None and name != "judge",
    }
    wrong = [key for key, bad in misplaced.items() if bad]
    if wrong:
        raise ValueError(f"the {name} check takes no {', '.join(wrong)}")


def _validator_class(schema: dict[str, Any]) -> Any:
    """The schema's validator class; jsonschema is imported only by a job with a schema (it
    costs every run a fiftieth of a second at start-up otherwise; issue 15)."""
    from jsonschema import Draft202012Validator
    from jsonschema.validators import validator_for

    return validator_for(schema, default=Draft202012Validator)


def _json_check(schema: dict[str, Any] | None) -> _Check:
    validator = _validator_class(schema)(schema) if schema is not None else None

    def check(content: str, finish_reason: str | None) -> str | None:
        try:
            value = json.loads(content)
        except json.JSONDecodeError as exc:
            return f"json: the answer is not JSON ({exc.msg} at char {exc.pos})"
        if validator is None:
            return None
        error = next(iter(validator.iter_errors(value)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        return f"json: not valid against the schema ({error.message[:200]}, at {where})"

    return check


def _not_truncated(content: str, finish_reason: str | None) -> str | None:
    if finish_reason == "length":
        return "not_truncated: the answer was cut off (finish_reason length)"
    return None


def _refusal_check(patterns: tuple[str, ...]) -> _Check:
    search = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE).search

    def check(content: str, finish_reason: str | None) -> str | None:
        found = search(content, 0, 400)  # a refusal says so at once; long answers cost nothing
        if found is None:
            return None
        return f"not_refusal: the answer is a refusal ({found.group(0)[:60]!r})"

    return check


def _length_check(name: str, bound: int) -> _Check:
    if name == "min_chars":

        def at_least(content: str, finish_reason: str | None) -> str | None:
            if len(content) >= bound:
                return None
            return f"min_chars: {len(content)} characters, fewer than {bound}"

        return at_least

    def at_most(content: str, finish_reason: str | None) -> str | None:
        if len(content) <= bound:
            return None
        return f"max_chars: {len(content)} characters, more than {bound}"

    return at_most


def _regex_check(pattern: str, *, must_match: bool) -> _Check:
    search = re.compile(pattern).search

    def check(content: str, finish_reason: str | None) -> str | None:
        found = search(content) is not None
        if found == must_match:
            return None
        return f"regex: {'no match for' if must_match else 'matches'} {pattern!r}"

    return check


def _compile(check: CheckConfig) -> _Check:
    name = check.check
    if name == "json":
        return _json_check(dict(check.json_schema) if check.json_schema is not None else None)
    if name == "not_truncated":
        return _not_truncated
    if name == "not_refusal":
        return _refusal_check(check.patterns or DEFAULT_REFUSAL_PATTERNS)
    if name in {"min_chars", "max_chars"}:
        assert check.value is not None
        return _length_check(name, check.value)
    assert check.pattern is not None
    return _regex_check(check.pattern, must_match=check.must_match)


class Verifier:
    """A tier's checks, compiled once; `failures` runs them all on one answer."""

    __slots__ = ("_checks", "checks_json", "judge_rubric", "names")

    def __init__(self, checks: tuple[CheckConfig, ...]) -> None:
        self.names = tuple(check.check for check in checks)
        self.checks_json = "json" in self.names
        judged = [check for check in checks if check.check == "judge"]
        self.judge_rubric: str | None = (judged[0].rubric or "") if judged else None
        """With a `judge` check: its own rubric ("" for the judge's default); else None."""
        checks = tuple(check for check in checks if check.check != "judge")
        self._checks = tuple(_compile(check) for check in checks)

    def __bool__(self) -> bool:
        return bool(self._checks) or self.judge_rubric is not None

    def __repr__(self) -> str:
        return f"<Verifier [{', '.join(self.names) or 'no checks'}]>"

    def failures(self, content: str | None, finish_reason: str | None) -> Sequence[str]:
        """Why the answer fails its checks, one `check: why` each; empty when it passes."""
        if content is None:
            return _NO_CONTENT
        failed: list[str] | None = None  # a passing answer allocates nothing
        for check in self._checks:
            why = check(content, finish_reason)
            if why is not None:
                if failed is None:
                    failed = []
                failed.append(why)
        return _PASSED if failed is None else failed
