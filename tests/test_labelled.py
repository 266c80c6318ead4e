"""The labelled data: every file reads, no prompt is labelled twice, the splits stay apart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from batchroute.classify.evaluate import read_labelled

LABELLED = Path(__file__).parent.parent / "sample_data" / "labelled"
TRAINING = [LABELLED / "train.csv", *sorted((LABELLED / "corpus").glob("*.csv"))]
HELD_OUT = [LABELLED / "holdout.csv", LABELLED / "test.csv"]


def _key(prompt: str) -> str:
    return " ".join(prompt.lower().split())


@pytest.mark.parametrize("path", TRAINING + HELD_OUT, ids=lambda p: p.name)
def test_every_labelled_file_reads_with_a_known_tier_on_every_row(path: Path) -> None:
    prompts, tiers = read_labelled(path)
    assert prompts
    assert all(p.strip() for p in prompts)
    assert path.read_text(encoding="utf-8").splitlines()[0].startswith("prompt,tier")


def test_corpus_files_are_numbered_apart() -> None:
    numbers = Counter(int(p.name.split("-")[0]) for p in TRAINING[1:])
    assert [n for n, count in numbers.items() if count > 1] == []


def test_no_prompt_is_labelled_twice_in_the_training_data() -> None:
    seen = Counter(_key(p) for path in TRAINING for p in read_labelled(path)[0])
    assert [p for p, count in seen.items() if count > 1] == []


@pytest.mark.parametrize("path", HELD_OUT, ids=lambda p: p.name)
def test_held_out_splits_share_no_prompt_with_the_training_data(path: Path) -> None:
    training = {_key(p) for path in TRAINING for p in read_labelled(path)[0]}
    assert [p for p in read_labelled(path)[0] if _key(p) in training] == []


def test_the_training_data_is_large_and_covers_every_tier() -> None:
    tiers = Counter(t for path in TRAINING for t in read_labelled(path)[1])
    assert sum(tiers.values()) >= 2000
    assert min(tiers.values()) >= 0.15 * sum(tiers.values())
