"""The rule engine: signal patterns, precedence, job overrides and explanations (rules alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from batchroute.classify import ROUTING_COLUMNS, build_router, frame_from_prompts
from batchroute.classify.model import RouterModel
from batchroute.classify.router import Router
from batchroute.classify.rules import MATCH_PREFIX, TEXT_COLUMN, text_expr
from batchroute.classify.signals import DEFAULT_SIGNALS, compile_signal, phrase_pattern
from batchroute.config import Job, parse_job
from batchroute.errors import JobError

TIERS_ALL = {"complex": "big", "standard": "mid", "structured": "mid", "bulk": "small"}


def make_job(*, tiers: dict[str, str] | None = None, routing: dict[str, Any] | None = None) -> Job:
    """A job in memory with the given tiers and routing section."""
    data: dict[str, Any] = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "tiers": tiers or TIERS_ALL,
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15},
            "small": {"input_per_mtok": 0.25, "output_per_mtok": 1},
        },
    }
    # The rule engine is tested alone here; tests/test_learned.py covers the model after it.
    data["routing"] = {"classifier": {"kind": "rules"}, **(routing or {})}
    path = Path("job.yaml")
    return Job(parse_job(data, path=path), path=path, text_sha256="0" * 64)


def route(prompts: list[str], job: Job | None = None, **hints: list[Any]) -> pl.DataFrame:
    router = build_router(job or make_job())
    return router.classify(frame_from_prompts(prompts, **hints))


def tiers_of(prompts: list[str], job: Job | None = None) -> list[str]:
    return route(prompts, job)["tier"].to_list()


@pytest.mark.parametrize(
    ("prompt", "tier"),
    [
        ("Write unit tests for these functions", "bulk"),
        ("Generate pytest tests for the date parser", "bulk"),
        ("Add Google-style docstrings to every function in this module", "bulk"),
        ("Translate all of these UI strings into German", "bulk"),
        ("Rename the variable tmp to retry_count everywhere", "bulk"),
        ("design a distributed cache", "complex"),
        ("Please design the ingestion pipeline for clickstream data", "complex"),
        ("Find the root cause of this deadlock in the worker pool", "complex"),
        ("Can you debug this: the job hangs after the third retry", "complex"),
        ("Investigate why the service is leaking memory", "complex"),
        ("Translate this security review into French", "bulk"),
        ("Add comments to this deadlock reproduction script", "bulk"),
        ("Rename the variables in our architecture linter", "bulk"),
        ("Return the result as JSON with keys a and b", "structured"),
        ("Extract the invoice number and total from this email", "structured"),
        ("Parse the following log lines into timestamp and level fields", "structured"),
        ("Convert this CSV into a JSON array", "structured"),
        (
            "Reformat this list of licenses into a markdown table, columns Name | Seats",
            "structured",
        ),
        ("Reformat this messy SQL, keep the logic", "bulk"),
    ],
)
def test_phrasing_variants_route_as_a_person_expects(prompt: str, tier: str) -> None:
    assert tiers_of([prompt]) == [tier]


@pytest.mark.parametrize(
    "prompt",
    [
        "What is the capital of France?",
        "Explain what a template literal is in JavaScript.",
        "What is JSON and why do web APIs use it?",
        "Why does JSON.parse throw on trailing commas?",
        "The debugger-less build is faster; summarise why in one line.",
        "What is a deadline-driven sprint?",
        "Why is pandas read_csv slow on wide files?",
        "How is this essay structured, and is the argument convincing?",
        "What is boilerplate code?",
        # Issue 11, classes 2 and 4: a question about a task, a data format named as input.
        "Which VS Code extension formats code on save?",
        "What does 'generate tests' mean in Jest?",
        "Our design: exports arrive as CSV from each region, then a job loads them nightly.",
        "Why does this worker pool deadlock after an hour?",
        "Is polars a good replacement for pandas? What are the trade-offs?",
    ],
)
def test_words_that_merely_contain_or_mention_a_signal_do_not_fire(prompt: str) -> None:
    """A signal word in a question, as a subject or as an input format leaves the row alone."""
    routed = route([prompt])
    assert routed["tier"].to_list() == ["standard"]
    assert routed["tier_source"].to_list() == ["default"]
    assert routed["matched_signal"].to_list() == [None]


def test_user_phrase_signal_is_word_bounded() -> None:
    """`api` as a job signal fires on "API" but never inside "capital" or "rapid"."""
    job = make_job(routing={"signals": {"complex": {"add": ["api"]}}})
    assert tiers_of(["Design notes for our API", "the capital is rapid"], job) == [
        "complex",
        "standard",
    ]


def test_precedence_hint_then_json_output_then_structured_complex_long_bulk() -> None:
    long_text = "word " * 1001
    prompts = [
        "Refactor this and return as JSON",  # hinted bulk: the hint wins
        "Refactor this module",  # json_output: structured beats complex
        "Refactor this and return as JSON",  # structured signal beats complex signal
        "Refactor this and write unit tests",  # complex beats bulk
        long_text + " add docstrings",  # long prompt beats bulk
        "Add docstrings to this file",  # bulk
        "Say hello",  # default
    ]
    routed = route(
        prompts,
        tier_hint=["bulk", None, None, None, None, None, None],
        json_output=[None, True, None, None, None, None, None],
    )
    assert routed["tier"].to_list() == [
        "bulk",
        "structured",
        "structured",
        "complex",
        "complex",
        "bulk",
        "standard",
    ]
    assert routed["tier_source"].to_list() == [
        "metadata",
        "rule",
        "rule",
        "rule",
        "rule",
        "rule",
        "default",
    ]
    assert routed["matched_signal"].to_list() == [
        "metadata:tier",
        "json_output",
        "structured:json",
        "complex:refactor",
        "long_prompt:>1000 words",
        "bulk:add docstrings",
        None,
    ]


def test_a_tier_scans_only_the_rows_no_earlier_rule_decided() -> None:
    """Rows settled by a hint or an earlier tier are null before a later tier's regex runs."""
    router = build_router(make_job())
    frame = frame_from_prompts(
        ["Refactor this and return as JSON", "Refactor this module", "Refactor it", "hi"],
        tier_hint=[None, "bulk", None, None],
    )
    work = frame.with_columns(text_expr(frame).alias(TEXT_COLUMN))
    rules = router.rules.rules()
    decided = router._decide(
        work, steps=[r.name for r in rules], masks={r.name: r.mask for r in rules}
    )
    # Only row 3 reaches the complex tier: row 1 went structured, row 2 followed its hint.
    assert decided[MATCH_PREFIX + "complex"].to_list() == [None, None, "Refactor", None]
    assert decided[MATCH_PREFIX + "structured"].to_list() == ["return as JSON", None, None, None]
    assert decided[MATCH_PREFIX + "bulk"].to_list() == [None, None, None, None]


def test_labels_resolve_per_tier_when_one_text_fires_in_two_tiers() -> None:
    job = make_job(
        routing={
            "signals": {"complex": {"add": ["zork"]}, "bulk": {"add": ["zork"]}},
            "order": ["metadata", "bulk", "complex"],
        }
    )
    routed = route(["zork the files", "refactor zork"], job)
    assert routed["tier"].to_list() == ["bulk", "bulk"]
    assert routed["matched_signal"].to_list() == ["bulk:zork", "bulk:zork"]
    routed = route(
        ["zork it", "Refactor this"], make_job(routing={"signals": {"complex": {"add": ["zork"]}}})
    )
    assert routed["matched_signal"].to_list() == ["complex:zork", "complex:refactor"]


def test_classify_adds_the_routing_columns_and_keeps_the_input() -> None:
    frame = frame_from_prompts(["a", "b"]).with_columns(pl.lit("x").alias("team"))
    out = build_router(make_job()).classify(frame)
    assert out.columns == [*frame.columns, *ROUTING_COLUMNS]
    assert {name: out.schema[name] for name in ROUTING_COLUMNS} == ROUTING_COLUMNS
    assert out["classifier_confidence"].null_count() == 2


def test_unknown_tier_hint_sets_invalid_reason_and_keeps_existing_reasons() -> None:
    frame = frame_from_prompts(["a", "b", "c"], tier_hint=["fancy", " BULK ", None])
    frame = frame.with_columns(
        pl.Series("invalid_reason", [None, None, "empty prompt"], dtype=pl.String)
    )
    out = build_router(make_job()).classify(frame)
    reasons = out["invalid_reason"].to_list()
    assert reasons[0] == (
        "tier hint 'fancy' names no tier of this job (tiers: bulk, complex, standard, structured)"
    )
    assert reasons[1:] == [None, "empty prompt"]
    assert out["tier"].to_list()[1] == "bulk"  # hints are trimmed and case-insensitive


def test_rules_for_unmapped_tiers_are_skipped() -> None:
    job = make_job(tiers={"complex": "big", "standard": "mid"})
    routed = route(
        ["Add docstrings here", "Return as JSON", "Refactor it", "hello"],
        job,
        tier_hint=[None, None, None, "bulk"],
        json_output=[None, True, None, None],
    )
    assert routed["tier"].to_list() == ["standard", "standard", "complex", "standard"]
    assert routed["invalid_reason"].to_list()[3] is not None


def test_job_can_add_remove_and_replace_signals() -> None:
    job = make_job(
        routing={
            "signals": {
                "complex": {"remove": ["refactor"], "add": ["migrat* ... database"]},
                "bulk": {"replace": ["re:\\bchangelog\\b"]},
            }
        }
    )
    prompts = [
        "Refactor this module",
        "Migrating the billing database to Postgres",
        "Write unit tests for this",
        "Update the changelog",
    ]
    routed = route(prompts, job)
    assert routed["tier"].to_list() == ["standard", "complex", "standard", "bulk"]
    assert routed["matched_signal"].to_list()[1] == "complex:migrat* ... database"
    assert routed["matched_signal"].to_list()[3] == "bulk:\\bchangelog\\b"


def test_job_can_reorder_and_drop_rules() -> None:
    prompts = ["Refactor this and return as JSON", "Add docstrings after you refactor it"]
    default = tiers_of(prompts)
    job = make_job(routing={"order": ["metadata", "bulk", "complex", "structured"]})
    assert default == ["structured", "bulk"]
    assert tiers_of(prompts, job) == ["complex", "bulk"]
    no_complex = make_job(routing={"order": ["metadata", "bulk"]})
    assert tiers_of(prompts, no_complex) == ["standard", "bulk"]


def test_long_prompt_threshold_comes_from_the_job() -> None:
    job = make_job(routing={"long_prompt_words": 5})
    routed = route(["one two three four five", "one two three four five six"], job)
    assert routed["tier"].to_list() == ["standard", "complex"]
    assert routed["matched_signal"].to_list()[1] == "long_prompt:>5 words"


def test_chat_messages_are_classified_by_their_contents() -> None:
    frame = frame_from_prompts([None]).with_columns(  # type: ignore[list-item]
        pl.Series(
            "messages",
            [[{"role": "user", "content": "Please refactor this function"}]],
            dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
        )
    )
    out = build_router(make_job()).classify(frame)
    assert out["tier"].to_list() == ["complex"]


def test_removing_an_unknown_signal_names_the_known_ones() -> None:
    job = make_job(routing={"signals": {"bulk": {"remove": ["generate testz"]}}})
    with pytest.raises(JobError, match=r"routing\.signals\.bulk\.remove.*'generate tests'"):
        build_router(job)


def test_invalid_regex_signal_is_a_job_error() -> None:
    job = make_job(routing={"signals": {"complex": {"add": ["re:(?=lookahead)"]}}})
    with pytest.raises(JobError, match="not a valid regex"):
        build_router(job)


def test_signals_for_standard_are_refused() -> None:
    job = make_job(routing={"signals": {"standard": {"add": ["hello"]}}})
    with pytest.raises(JobError, match="routing.signals.standard"):
        build_router(job)


def test_phrase_syntax_compiles_gaps_and_inflections() -> None:
    pattern = "(?i)" + phrase_pattern("generate ... test*")
    hits = pl.Series(
        ["Generate a few more tests", "generate tests", "generate a b c d e tests", "regenerate"]
    ).str.contains(pattern)
    assert hits.to_list() == [True, True, False, False]
    assert compile_signal("re:x+").pattern == "x+"


def test_every_default_signal_is_valid_polars_regex() -> None:
    probe = pl.Series(["a quick probe"])
    for signals in DEFAULT_SIGNALS.values():
        for signal in signals:
            probe.str.contains("(?i)" + signal.pattern)  # raises if polars rejects it


def test_a_large_frame_is_classified_in_slices_with_the_same_result() -> None:
    """From 50,000 rows a frame is classified in parallel slices; the slices must not show."""
    prompts = [
        "Write unit tests for these functions",
        "Return the fields as JSON",
        "Help me find the root cause of this deadlock",
        "What is the capital of Peru?",
    ]
    n = 60_000
    frame = frame_from_prompts(
        [f"{prompts[i % 4]} (row {i})" for i in range(n)],
        tier_hint=["complex" if i % 7 == 0 else None for i in range(n)],
    )
    # Scores that differ on every row: a slice given another slice's scores would show.
    share = (np.arange(n) % 10) / 10
    scores = np.column_stack([share, 1.0 - share])
    clf = RouterModel(
        tiers=("bulk", "standard"),
        unigrams=(),
        bigrams=np.zeros((0, 2), dtype=np.int64),
        idf=np.zeros(0),
        coef=np.zeros((0, 2)),
        intercept=np.zeros(2),
    )
    router = Router(build_router(make_job()).rules, classifier=clf, min_confidence=0.75)

    whole = router.classify(frame, scores=scores)
    pieces = pl.concat(
        router.classify(frame.slice(i, 10_000), scores=scores[i : i + 10_000])
        for i in range(0, n, 10_000)
    )
    assert whole.equals(pieces)
    assert set(whole["tier_source"]) == {"metadata", "classifier", "rule", "default"}
