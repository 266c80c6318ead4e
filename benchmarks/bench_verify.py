"""Verify and escalate (issue 12): the sample job with quality faults on the cheap models.

The sample job (`jobs/tests.yaml`, its prompts cycled to ROWS rows, each made unique) runs on the
embedded simulator with 10% invalid JSON on the structured model and 5% truncation on the bulk
model, once with checks and escalation and once without (the in-run baseline):

    checked     structured: json + not_truncated; every other tier: not_truncated, not_refusal
                and min_chars 1; failures climb the default path (bulk -> standard -> complex,
                structured -> complex), at most 2 tiers
    unchecked   the same job and simulator with no checks (its answers are kept as they come)

Reported: rows escalated, the final verified share, what checks and escalations cost as a share
of spend, the forecast (plan.parquet, escalations at verify.expected_failure_rate) against the
actual spend, and the CPU the deterministic checks cost per 1,000 rows against the same run with
no checks. The checks' CPU is measured by running the compiled checks over the run's own answers
(best of 5 passes); the run's CPU per 1,000 rows is marginal (CPU on ROWS rows minus CPU on
ROWS/2 rows, so start-up cancels). Target: at most 5% more CPU.

    python benchmarks/bench_verify.py            # 10,000 rows
    python benchmarks/bench_verify.py --quick    # 2,000 rows
"""

# ruff: noqa: T201  (a benchmark script reports its figures on stdout)

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from batchroute.config import load_job
from batchroute.dispatch.verify import Verifier

ROOT = Path(__file__).resolve().parents[1]
CHECKS: dict[str, Any] = {
    "default": ["not_truncated", "not_refusal", {"check": "min_chars", "value": 1}],
    "max_escalations": 2,
    "expected_failure_rate": 0.05,
}
QUALITY = {"deepseek-chat": {"truncate_rate": 0.05}, "gpt-5-mini": {"invalid_json_rate": 0.10}}


def _rows(count: int, path: Path) -> None:
    """The sample prompts cycled to `count` rows, each made unique by its number."""
    sample = [json.loads(line) for line in (ROOT / "sample_data/prompts.jsonl").open()]
    with path.open("w") as out:
        for i in range(count):
            row = dict(sample[i % len(sample)])
            row["id"] = f"b{i:06d}"
            row["prompt"] = f"{row['prompt']} (#{i})"
            out.write(json.dumps(row) + "\n")


def _job(tmp: Path, name: str, rows: Path, *, checked: bool) -> Path:
    job = yaml.safe_load((ROOT / "jobs/tests.yaml").read_text())
    job["name"] = name
    job["input"]["path"] = str(rows)
    job["output"] = {"dir": str(tmp / "runs" / name)}
    job["simulator"]["default"] = {}  # no latency: CPU, not waiting, is measured
    for model, knobs in QUALITY.items():
        job["simulator"]["models"].setdefault(model, {}).update(knobs)
    if checked:
        job["verify"] = CHECKS
        job["tiers"]["structured"]["verify"] = ["json", "not_truncated"]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _run(job: Path) -> float:
    """CPU seconds of a whole `batchroute run` process (the embedded simulator included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # --no-cache: the full run would otherwise be served the half run's answers from the cache
    command = [sys.executable, "-m", "batchroute", "run", str(job), "--quiet", "--no-cache"]
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL, cwd=job.parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _checks_cpu_s(job_path: Path, results: pl.DataFrame) -> float:
    """CPU seconds to run each answer's tier's compiled checks over every answer (best of 5)."""
    config = load_job(job_path).config
    verifiers = {tier: Verifier(config.checks(tier)) for tier in config.tiers}
    answered = results.filter(pl.col("content").is_not_null())
    work = [
        (verifiers[tier], content, finish)
        for tier, content, finish in answered.select(
            pl.coalesce("answered_tier", "tier"), "content", "finish_reason"
        ).iter_rows()
    ]
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for verifier, content, finish in work:
            verifier.failures(content, finish)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows instead of 10,000")
    rows = 2_000 if parser.parse_args().quick else 10_000
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        full, half = tmp / "full.jsonl", tmp / "half.jsonl"
        _rows(rows, full)
        _rows(rows // 2, half)
        cpu_plain_half = _run(_job(tmp, "plain-half", half, checked=False))
        cpu_plain = _run(_job(tmp, "plain", full, checked=False))
        checked_job = _job(tmp, "checked", full, checked=True)
        cpu_checked = _run(checked_job)

        run_dir = tmp / "runs" / "checked"
        results = pl.read_parquet(run_dir / "results.parquet")
        savings = pl.read_parquet(run_dir / "savings.parquet").row(0, named=True)
        plain = pl.read_parquet(tmp / "runs" / "plain" / "results.parquet")
        checks_cpu = _checks_cpu_s(checked_job, results)

    marginal_per_k = (cpu_plain - cpu_plain_half) / (rows - rows // 2) * 1000
    checks_per_k = checks_cpu / results.height * 1000
    escalated = int((results["escalation_depth"] > 0).sum())
    verified = int(results["verified"].fill_null(False).sum())
    spend = savings["total_cost_usd"]
    overhead = savings["checks_and_escalations_cost_usd"]
    forecast = savings["forecast_cost_usd"]
    print(f"bench_verify: {rows:,} rows of the sample job; quality faults {QUALITY}")
    print(f"  statuses (checked):    {dict(results['status'].value_counts().iter_rows())}")
    print(f"  statuses (unchecked):  {dict(plain['status'].value_counts().iter_rows())}")
    print(f"  rows escalated:        {escalated:,} ({escalated / rows:.2%})")
    print(f"  verified share:        {verified / rows:.2%} ({verified:,} rows)")
    print(
        f"  checks + escalations:  ${overhead:.4f} of ${spend:.4f} spend "
        f"({float(overhead / spend):.2%}); rejected answers "
        f"${savings['verify_rejected_cost_usd']:.4f}, escalated tiers "
        f"${savings['escalation_cost_usd']:.4f}"
    )
    print(
        f"  forecast vs actual:    ${forecast:.4f} forecast, ${spend:.4f} spent "
        f"(actual/forecast {float(spend / forecast):.3f}; expected_failure_rate "
        f"{CHECKS['expected_failure_rate']})"
    )
    print(
        f"  saved vs baseline:     ${savings['savings_vs_baseline_usd']:.4f} "
        f"({savings['savings_vs_baseline_pct']:.1f}%) after paying ${overhead:.4f} for checks "
        "and escalations"
    )
    print(
        f"  CPU, deterministic checks: {checks_per_k * 1000:.2f} ms per 1,000 rows; the run "
        f"without checks: {marginal_per_k * 1000:.1f} ms per 1,000 rows (marginal) -> ratio "
        f"{1 + checks_per_k / marginal_per_k:.4f} (target <= 1.05)"
    )
    print(
        f"  CPU, whole runs:       checked {cpu_checked:.2f} s vs unchecked {cpu_plain:.2f} s "
        f"(ratio {cpu_checked / cpu_plain:.3f}; includes the {escalated:,} escalation requests)"
    )


if __name__ == "__main__":
    main()
