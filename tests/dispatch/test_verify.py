"""Verify and escalate: each check on real simulator answers, the escalation path, its limits.

Every answer here comes from the simulator through the real AsyncOpenAI client over loopback;
the quality knobs (`invalid_json_rate`, `truncate_rate`, `refusal_rate`) make the bad answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from batchroute.config import Job, parse_job
from batchroute.dispatch.dispatcher import Dispatcher, RowOutcome, RowRequest
from batchroute.errors import JobError
from batchroute.pricing.prices import resolve_prices
from batchroute.pricing.tokens import count_message_tokens
from batchroute.schema import ErrorType, Status
from batchroute.sim import LocalSimulator, SimConfig, SimModelConfig

KEY_ENV = "BR_VERIFY_TEST_KEY"
JSON_TIER = {"params": {"response_format": {"type": "json_object"}}}


def job_of(**overrides: Any) -> Job:
    data: dict[str, Any] = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "endpoint": {"api_key_env": KEY_ENV, "timeout_s": 5},
        "request": {"max_tokens": 200},
        "tiers": {
            "complex": "big",
            "standard": "mid",
            "structured": {"model": "mid", "request": JSON_TIER},
            "bulk": "small",
        },
        "models": models_with(),
        "retry": {"backoff_initial_s": 0.001, "backoff_max_s": 0.01},
    }
    data.update(overrides)
    return Job(parse_job(data, path=Path("t.yaml")), path=Path("t.yaml"), text_sha256="0" * 64)


def ask(
    job: Job, *, tier: str = "bulk", sim: dict[str, SimModelConfig] | None = None, rows: int = 1
) -> list[RowOutcome]:
    """Dispatch `rows` rows of `tier` through the simulator; their outcomes."""

    async def main() -> list[RowOutcome]:
        async with LocalSimulator(SimConfig(seed=7, models=sim or {})) as server:
            dispatcher = Dispatcher(
                job, prices=resolve_prices(job), base_urls={"simulator": server.base_url}
            )
            async with dispatcher:
                outcomes = []
                for i in range(rows):
                    messages = [{"role": "user", "content": f"Explain caching, case {i}."}]
                    request = RowRequest(
                        str(i), i, f"k{i}", tier, messages, count_message_tokens(messages)
                    )
                    outcomes.append(await dispatcher.dispatch(request))
                return outcomes

    return anyio.run(main)


def one_check(check: Any, *, tier: str = "bulk", **sim: Any) -> RowOutcome:
    """One row of `tier`, checked by `check` alone, never escalated."""
    spec = {"model": "small" if tier == "bulk" else "mid", "verify": [check]}
    if tier == "structured":
        spec["request"] = JSON_TIER
    tiers = {"standard": "mid", tier: spec}
    job = job_of(tiers=tiers, verify={"max_escalations": 0})
    [outcome] = ask(job, tier=tier, sim={spec["model"]: SimModelConfig(**sim)})
    return outcome


def models_with(**extra: dict[str, Any]) -> dict[str, Any]:
    """The test job's models, with some settings added to some of them."""
    models = {
        "big": {"input_per_mtok": 5, "output_per_mtok": 25},
        "mid": {"input_per_mtok": 3, "output_per_mtok": 15},
        "small": {"input_per_mtok": 0.25, "output_per_mtok": 1},
    }
    return {name: {**spec, **extra.get(name, {})} for name, spec in models.items()}


def actions(outcome: RowOutcome) -> list[tuple[str, str, str | None]]:
    return [(r.model, r.action, r.verify) for r in outcome.attempt_records]


# -- each check passes and fails on a real answer -------------------------------------------------

SCHEMA_OK = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}
SCHEMA_NO = {"type": "object", "required": ["verdict"]}

CHECKS = [
    # check, tier, simulator settings, passes, what the failure says
    ({"check": "json"}, "structured", {}, True, None),
    ({"check": "json"}, "structured", {"invalid_json_rate": 1.0}, False, "not JSON"),
    ({"check": "json", "json_schema": SCHEMA_OK}, "structured", {}, True, None),
    ({"check": "json", "json_schema": SCHEMA_NO}, "structured", {}, False, "'verdict'"),
    ("not_truncated", "bulk", {}, True, None),
    ("not_truncated", "bulk", {"truncate_rate": 1.0}, False, "finish_reason length"),
    ("not_refusal", "bulk", {}, True, None),
    ("not_refusal", "bulk", {"refusal_rate": 1.0}, False, "refusal"),
    ({"check": "not_refusal", "patterns": ["concise"]}, "bulk", {}, None, "refusal"),
    ({"check": "min_chars", "value": 20}, "bulk", {}, True, None),
    ({"check": "min_chars", "value": 100_000}, "bulk", {}, False, "fewer than 100000"),
    ({"check": "max_chars", "value": 100_000}, "bulk", {}, True, None),
    ({"check": "max_chars", "value": 5}, "bulk", {}, False, "more than 5"),
    ({"check": "regex", "pattern": r"\w+\."}, "bulk", {}, True, None),
    ({"check": "regex", "pattern": r"^\{"}, "bulk", {}, False, "no match"),
    ({"check": "regex", "pattern": r"\w+\.", "must_match": False}, "bulk", {}, False, "matches"),
]


@pytest.mark.parametrize(("check", "tier", "sim", "passes", "says"), CHECKS)
def test_each_check_on_a_real_answer(
    check: Any, tier: str, sim: dict[str, Any], passes: bool | None, says: str | None
) -> None:
    outcome = one_check(check, tier=tier, **sim)
    assert outcome.content  # a real answer, kept whether it passed or not
    if passes is None:  # depends on the answer: the custom pattern decides, visibly
        passes = "concise" not in outcome.content.lower()
    if passes:
        assert outcome.status == Status.OK, outcome.error_message
        assert outcome.verified is True
        assert actions(outcome) == [(outcome.model_used, "ok", "passed")]
        return
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.VERIFICATION_FAILED
    assert outcome.verified is False
    assert says is not None and says in outcome.error_message  # type: ignore[operator]
    assert len(outcome.verify_failures) == 1 and says in outcome.verify_failures[0]
    [record] = outcome.attempt_records
    assert record.verify == "failed" and record.error_type == ErrorType.VERIFICATION_FAILED
    assert record.action == "fail"


def test_a_refusal_is_found_by_the_default_patterns_on_the_simulators_refusal() -> None:
    outcome = one_check("not_refusal", refusal_rate=1.0)
    assert outcome.content is not None and outcome.content.startswith("I'm sorry")


# -- escalation ---------------------------------------------------------------------------------


def test_a_failed_check_escalates_up_the_default_path_and_the_first_pass_wins() -> None:
    job = job_of(verify={"default": ["not_truncated"]})
    [outcome] = ask(job, sim={"small": SimModelConfig(truncate_rate=1.0)})
    assert outcome.status == Status.OK
    assert outcome.model_used == "mid" and outcome.answered_tier == "standard"
    assert outcome.escalated_from == "bulk" and outcome.escalation_depth == 1
    assert outcome.verified is True
    assert actions(outcome) == [("small", "escalate", "failed"), ("mid", "ok", "passed")]
    assert [r.tier for r in outcome.attempt_records] == ["bulk", "standard"]
    assert [r.escalation_depth for r in outcome.attempt_records] == [0, 1]
    assert outcome.verify_failures == [
        "bulk/small: not_truncated: the answer was cut off (finish_reason length)"
    ]
    assert outcome.failed_output_tokens > 0  # the rejected answer was paid for


def test_escalation_stops_at_max_escalations_keeping_the_last_answer() -> None:
    bad = SimModelConfig(truncate_rate=1.0)
    sims = {"small": bad, "mid": bad, "big": bad}
    job = job_of(verify={"default": ["not_truncated"], "max_escalations": 1})
    [outcome] = ask(job, sim=sims)
    assert actions(outcome) == [("small", "escalate", "failed"), ("mid", "fail", "failed")]
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.VERIFICATION_FAILED
    assert outcome.content and outcome.model_used == "mid"  # the last answer, and why
    assert "not_truncated" in (outcome.error_message or "")
    assert outcome.escalation_depth == 1 and len(outcome.verify_failures) == 2

    job = job_of(verify={"default": ["not_truncated"], "max_escalations": 5})
    [outcome] = ask(job, sim=sims)
    assert [m for m, *_ in actions(outcome)] == ["small", "mid", "big"]  # the path's end
    assert outcome.escalation_depth == 2 and outcome.error_type == ErrorType.VERIFICATION_FAILED


def test_a_tiers_own_escalate_to_and_checks_replace_the_defaults() -> None:
    tiers = {
        "complex": "big",
        "standard": "mid",
        "bulk": {"model": "small", "verify": ["not_refusal"], "escalate_to": "complex"},
    }
    job = job_of(tiers=tiers, verify={"default": [{"check": "min_chars", "value": 1_000_000}]})
    [outcome] = ask(job, sim={"small": SimModelConfig(refusal_rate=1.0)})
    assert [m for m, *_ in actions(outcome)] == ["small", "big"]
    # complex has no checks of its own: the job-wide default (impossible here) applies there
    assert outcome.error_type == ErrorType.VERIFICATION_FAILED
    assert "min_chars" in (outcome.error_message or "")


def test_invalid_json_with_a_json_check_escalates_instead_of_falling_back() -> None:
    tiers = {
        "complex": {"model": "big", "request": JSON_TIER},
        "standard": "mid",
        "structured": {"model": "small", "request": JSON_TIER, "verify": ["json"]},
    }
    job = job_of(tiers=tiers, models=models_with(small={"fallback": "mid"}))
    [outcome] = ask(job, tier="structured", sim={"small": SimModelConfig(invalid_json_rate=1.0)})
    assert actions(outcome) == [("small", "escalate", "failed"), ("big", "ok", None)]
    assert outcome.status == Status.OK and outcome.escalated_from == "structured"
    assert outcome.verified is None  # complex has no checks


def test_fallback_and_escalation_are_recorded_apart() -> None:
    job = job_of(
        models=models_with(small={"fallback": "mid"}), verify={"default": ["not_truncated"]}
    )
    sims = {"small": SimModelConfig(not_found=True), "mid": SimModelConfig(truncate_rate=1.0)}
    [outcome] = ask(job, sim=sims)
    assert actions(outcome) == [
        ("small", "fallback", None),
        ("mid", "escalate", "failed"),
        ("mid", "escalate", "failed"),  # standard's own model: the same answer, the same verdict
        ("big", "ok", "passed"),
    ]
    assert outcome.attempt_records[0].error_type == ErrorType.MODEL_NOT_FOUND
    assert outcome.escalation_depth == 2 and outcome.answered_tier == "complex"


def test_no_checks_no_verdict() -> None:
    [outcome] = ask(job_of())
    assert outcome.status == Status.OK and outcome.verified is None
    assert actions(outcome) == [("small", "ok", None)]


# -- load errors name the key path --------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            {"tiers": {"standard": {"model": "mid", "escalate_to": "bulk"}, "bulk": "small"}},
            "tiers.standard.escalate_to: the escalation path standard -> bulk -> standard cycles",
        ),
        (
            {"tiers": {"standard": {"model": "mid", "escalate_to": "complex"}}},
            "tiers.standard.escalate_to names 'complex', a tier this job does not map",
        ),
        (
            {"verify": {"default": [{"check": "json", "json_schema": {"type": "objekt"}}]}},
            "verify.default[0]: json_schema is not a valid JSON Schema",
        ),
        (
            {
                "tiers": {
                    "standard": {"model": "mid", "verify": [{"check": "regex", "pattern": "("}]}
                }
            },
            "tiers.standard.verify[0]: '(' is not a valid regular expression",
        ),
        (
            {"verify": {"default": ["min_chars"]}},
            "verify.default[0]: the min_chars check needs a value",
        ),
        (
            {"verify": {"default": [{"check": "not_truncated", "value": 3}]}},
            "the not_truncated check takes no value",
        ),
        ({"verify": {"default": ["spelling"]}}, "verify.default[0].check: Input should be"),
    ],
)
def test_bad_verify_config_is_a_load_error_naming_the_key(
    overrides: dict[str, Any], says: str
) -> None:
    with pytest.raises(JobError) as caught:
        job_of(**overrides)
    assert says in str(caught.value)


def test_the_default_escalation_path_passes_over_unmapped_tiers() -> None:
    config = job_of().config
    assert config.escalation_path("bulk") == ("standard", "complex")
    assert config.escalation_path("structured") == ("complex",)
    assert config.escalation_path("complex") == ()
    sparse = job_of(tiers={"standard": "mid", "bulk": "small"}).config
    assert sparse.escalation_path("bulk") == ("standard",)


# -- the judge ----------------------------------------------------------------------------------

JUDGE = {"model": "grader", "threshold": 0.6}
GRADER = {"input_per_mtok": 1, "output_per_mtok": 4}


def judged_job(**overrides: Any) -> Job:
    return job_of(
        models={**models_with(), "grader": GRADER},
        verify={"default": ["not_truncated", "judge"], "judge": JUDGE, **overrides},
    )


def test_the_judge_passes_an_answer_in_a_call_of_its_own() -> None:
    sims = {"grader": SimModelConfig(judge={"fail_rate": 0.0})}
    [outcome] = ask(judged_job(), sim=sims)
    assert outcome.status == Status.OK and outcome.verified is True
    assert actions(outcome) == [("small", "ok", "passed"), ("grader", "ok", None)]
    assert [r.judge for r in outcome.attempt_records] == [False, True]
    assert outcome.model_used == "small" and outcome.attempts == 2


def test_a_failing_grade_escalates_and_the_judge_grades_the_next_answer_too() -> None:
    sims = {"grader": SimModelConfig(judge={"fail_rates": {"small": 1.0}})}
    [outcome] = ask(judged_job(), sim=sims)
    assert actions(outcome) == [
        ("small", "escalate", "failed"),
        ("grader", "ok", None),
        ("mid", "ok", "passed"),
        ("grader", "ok", None),
    ]
    assert outcome.model_used == "mid" and outcome.escalated_from == "bulk"
    assert "judge: scored" in outcome.verify_failures[0]
    assert "below the threshold 0.6" in outcome.verify_failures[0]


def test_a_judge_that_replies_garbage_fails_the_check_never_passes_it() -> None:
    sims = {"grader": SimModelConfig(judge={"garbage_rate": 1.0})}
    outcomes = ask(judged_job(max_escalations=0), sim=sims, rows=5)
    for outcome in outcomes:
        assert outcome.status == Status.FAILED, "garbage is never a pass"
        assert outcome.error_type == ErrorType.VERIFICATION_FAILED
        assert "not the JSON asked for" in (outcome.error_message or "")


def test_the_judge_is_skipped_when_a_free_check_already_failed() -> None:
    sims = {
        "small": SimModelConfig(truncate_rate=1.0),
        "grader": SimModelConfig(judge={"fail_rate": 0.0}),
    }
    [outcome] = ask(judged_job(max_escalations=0), sim=sims)
    assert actions(outcome) == [("small", "fail", "failed")]


@pytest.mark.parametrize(
    ("reply", "passes", "says"),
    [
        ('{"score": 0.9, "reason": "fine"}', True, None),
        ('{"score": 1}', True, None),
        ('{"score": 0.1, "reason": "wrong"}', False, "scored 0.1, below the threshold 0.5: wrong"),
        ('{"score": true}', False, "no score from 0 to 1"),
        ('{"score": 1.5}', False, "no score from 0 to 1"),
        ('{"score": "0.9"}', False, "no score from 0 to 1"),
        ('{"score": NaN}', False, "no score from 0 to 1"),
        ('["score", 0.9]', False, "no score from 0 to 1"),
        ('{"score": 0.9', False, "not the JSON asked for"),
        ("Looks good to me!", False, "not the JSON asked for"),
        (None, False, "no content"),
    ],
)
def test_read_verdict_is_strict(reply: str | None, passes: bool, says: str | None) -> None:
    from batchroute.dispatch.judge import read_verdict

    why = read_verdict(reply, threshold=0.5)
    assert (why is None) == passes
    if says is not None:
        assert why is not None and says in why


def test_a_judge_model_with_no_price_is_an_error_naming_the_key() -> None:
    from batchroute.errors import PriceError

    job = job_of(
        verify={"default": ["judge"], "judge": {"model": "unknown-judge-9"}},
        prices={"allow_unpriced": True},
    )
    with pytest.raises(PriceError) as caught:
        resolve_prices(job)
    assert "verify.judge.model" in str(caught.value)


def test_a_judge_check_without_a_judge_is_a_load_error() -> None:
    with pytest.raises(JobError) as caught:
        job_of(tiers={"standard": {"model": "mid", "verify": ["judge"]}})
    assert "tiers.standard.verify[0]: a judge check needs verify.judge" in str(caught.value)


def test_row_keys_change_with_the_checks_the_judge_and_the_path_only_when_checked() -> None:
    from batchroute.store.keys import tier_contexts

    plain = tier_contexts(job_of().config)
    assert plain == tier_contexts(job_of(verify={"max_escalations": 1}).config)  # no checks
    checked = tier_contexts(judged_job().config)
    stricter = tier_contexts(judged_job(judge={**JUDGE, "threshold": 0.9}).config)
    shorter = tier_contexts(judged_job(max_escalations=1).config)
    for tier in ("bulk", "standard", "structured"):
        assert len({plain[tier], checked[tier], stricter[tier]}) == 3, tier
    assert shorter["bulk"] != checked["bulk"]
    assert shorter["complex"] == checked["complex"]  # nowhere to climb either way
