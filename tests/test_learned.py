"""The trained classifier: train → save → load → predict, the confidence gate, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from batchroute.classify import Router, build_router, frame_from_prompts
from batchroute.classify.evaluate import read_labelled
from batchroute.classify.learned import (
    FORMAT_VERSION,
    TrainedClassifier,
    load_model,
    save_model,
    train_classifier,
)
from batchroute.cli import main
from batchroute.config import Job, parse_job
from batchroute.errors import ClassifierModelError

LABELLED = Path(__file__).parent.parent / "sample_data" / "labelled" / "train.csv"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prompts, tiers = read_labelled(LABELLED)
    model = train_classifier(prompts, tiers, seed=0)
    return save_model(model, tmp_path_factory.mktemp("model") / "router.joblib")


def make_job(model: Path, *, min_confidence: float = 0.6) -> Job:
    data: dict[str, Any] = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "tiers": {"complex": "big", "standard": "mid", "structured": "mid", "bulk": "small"},
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15},
            "small": {"input_per_mtok": 0.25, "output_per_mtok": 1},
        },
        "routing": {
            "classifier": {"kind": "model", "path": str(model), "min_confidence": min_confidence}
        },
    }
    return Job(parse_job(data, path=Path("job.yaml")), path=Path("job.yaml"), text_sha256="")


def test_model_round_trips_through_its_file(model_path: Path) -> None:
    model = load_model(model_path)
    assert set(model.tiers) == {"bulk", "complex", "standard", "structured"}
    assert model.trained_on > 200
    prompts = [
        "Write unit tests for the invoice parser module",
        "Design a sharded job queue that survives losing a data centre",
        "Pull the order id and amount out of this email as JSON",
        "How do I list hidden files in a directory on macOS?",
    ]
    scores = model.predict_proba(prompts)
    assert scores.shape == (4, 4)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    tiers, confidence = model.decide(scores, allowed=model.tiers)
    assert tiers == ["bulk", "complex", "structured", "standard"]
    assert np.all((confidence > 0.25) & (confidence <= 1.0))


class _RecordingPipeline:
    """Stands in for a fitted pipeline: scores a text by its length and records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def predict_proba(self, texts: list[str]) -> np.ndarray[Any, Any]:
        self.batches.append(list(texts))
        share = np.array([len(t) / 100 for t in texts])
        return np.column_stack([share, 1.0 - share])


def test_predict_proba_scores_each_distinct_text_once() -> None:
    pipeline = _RecordingPipeline()
    model = TrainedClassifier(pipeline, ("bulk", "standard"))
    scores = model.predict_proba(["aa", "bbbb", "aa", "c", "bbbb"])
    assert pipeline.batches == [["aa", "bbbb", "c"]]
    np.testing.assert_allclose(scores[:, 0], [0.02, 0.04, 0.02, 0.01, 0.04])
    unique = TrainedClassifier(_RecordingPipeline(), ("bulk", "standard"))
    np.testing.assert_allclose(unique.predict_proba(["x", "yy"])[:, 1], [0.99, 0.98])


def test_confident_rows_use_the_classifier_and_the_rest_fall_back_to_rules(
    model_path: Path,
) -> None:
    prompts = ["Write unit tests for the invoice parser module", "Refactor it"]
    confident = build_router(make_job(model_path, min_confidence=0.0))
    out = confident.classify(frame_from_prompts(prompts))
    assert out["tier_source"].to_list() == ["classifier", "classifier"]
    assert out["matched_signal"].to_list() == ["classifier", "classifier"]
    never = build_router(make_job(model_path, min_confidence=1.0))
    fallback = never.classify(frame_from_prompts(prompts))
    assert fallback["tier_source"].to_list() == ["rule", "rule"]
    assert fallback["tier"].to_list() == ["bulk", "complex"]
    # The confidence is recorded even where the rules decided, to explain the fallback.
    assert fallback["classifier_confidence"].null_count() == 0
    assert fallback["classifier_confidence"].to_list() == pytest.approx(
        out["classifier_confidence"].to_list()
    )


def test_hints_outrank_the_classifier(model_path: Path) -> None:
    router = build_router(make_job(model_path, min_confidence=0.0))
    frame = frame_from_prompts(
        ["Write unit tests for this", "Write unit tests for this"],
        tier_hint=["complex", None],
        json_output=[None, True],
    )
    out = router.classify(frame)
    assert out["tier"].to_list() == ["complex", "structured"]
    assert out["tier_source"].to_list() == ["metadata", "rule"]


def test_bias_shifts_decisions_and_is_saved(model_path: Path, tmp_path: Path) -> None:
    model = load_model(model_path)
    scores = model.predict_proba(["Design a sharded job queue for our workers"])
    assert model.decide(scores, allowed=model.tiers)[0] == ["complex"]
    biased = model.with_bias({"complex": -50.0})
    assert biased.decide(scores, allowed=model.tiers)[0] != ["complex"]
    reloaded = load_model(save_model(biased, tmp_path / "biased.joblib"))
    assert reloaded.tier_bias["complex"] == -50.0


def test_unmapped_tiers_are_never_predicted(model_path: Path) -> None:
    model = load_model(model_path)
    scores = model.predict_proba(["Write unit tests for the parser"])
    tiers, confidence = model.decide(scores, allowed={"standard", "complex"})
    assert tiers[0] in {"standard", "complex"}
    assert 0.5 <= confidence[0] <= 1.0


def _rewrite(src: Path, dst: Path, **changes: Any) -> Path:
    payload = joblib.load(src)
    payload.update(changes)
    joblib.dump(payload, dst)
    return dst


def test_incompatible_sklearn_version_is_refused(model_path: Path, tmp_path: Path) -> None:
    old = _rewrite(model_path, tmp_path / "old.joblib", sklearn_version="0.24.2")
    with pytest.raises(ClassifierModelError, match=r"scikit-learn 0\.24\.2.*retrain"):
        load_model(old)


def test_other_format_version_is_refused(model_path: Path, tmp_path: Path) -> None:
    future = _rewrite(model_path, tmp_path / "f.joblib", format_version=FORMAT_VERSION + 1)
    with pytest.raises(ClassifierModelError, match="model format 2"):
        load_model(future)


def test_missing_and_foreign_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ClassifierModelError, match="no such model file.*batchroute train"):
        load_model(tmp_path / "nope.joblib")
    junk = tmp_path / "junk.joblib"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(ClassifierModelError, match="is not a batchroute model file"):
        load_model(junk)
    other = tmp_path / "other.joblib"
    joblib.dump({"hello": 1}, other)
    with pytest.raises(ClassifierModelError, match="is not a batchroute model file"):
        load_model(other)


def test_build_router_reports_a_missing_model_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ClassifierModelError, match=str(tmp_path / "absent.joblib")):
        build_router(make_job(tmp_path / "absent.joblib"))


def test_router_repr_shows_its_state(model_path: Path) -> None:
    router = build_router(make_job(model_path))
    assert isinstance(router, Router)
    assert isinstance(router.classifier, TrainedClassifier)
    assert "min_confidence: 0.6" in repr(router) and "TrainedClassifier" in repr(router)


def test_empty_frame_classifies_to_an_empty_frame(model_path: Path) -> None:
    out = build_router(make_job(model_path)).classify(frame_from_prompts([]))
    assert out.height == 0
    assert out.schema["classifier_confidence"] == pl.Float64


def test_train_cli_writes_a_loadable_model_and_reports_cv(tmp_path: Path) -> None:
    out = tmp_path / "m.joblib"
    args = ["train", str(LABELLED), "--out", str(out), "--cv-folds", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2-fold cross-validated accuracy:" in result.output
    assert f"Wrote {out}" in result.output
    model = load_model(out)
    assert model.cv_accuracy is not None and model.cv_accuracy > 0.6


def test_train_cli_refuses_a_file_without_the_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,standard\n")
    result = CliRunner().invoke(main, ["train", str(bad), "--out", str(tmp_path / "m.joblib")])
    assert result.exit_code == 6
    assert "needs columns prompt,tier" in result.output
