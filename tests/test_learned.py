"""The router model: train → export → save → load → predict, the shipped default, refusals."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from batchroute.classify import Router, build_router, frame_from_prompts
from batchroute.classify.evaluate import read_labelled
from batchroute.classify.learned import (
    FUNCTION_WORDS,
    TEMPERATURE,
    export_pipeline,
    fit_pipeline,
)
from batchroute.classify.model import (
    FORMAT_VERSION,
    TOKEN_PATTERN,
    RouterModel,
    decode_array,
    encode_array,
    load_model,
    prepare,
    prepare_expr,
    save_model,
    shipped_model,
)
from batchroute.cli import main
from batchroute.config import Job, parse_job
from batchroute.errors import ClassifierModelError

LABELLED = Path(__file__).parent.parent / "sample_data" / "labelled"
TRAIN = LABELLED / "train.csv"


@pytest.fixture(scope="module")
def pipeline() -> Any:
    prompts, tiers = read_labelled(TRAIN)
    return fit_pipeline(prompts, tiers, seed=0)


@pytest.fixture(scope="module")
def model_path(pipeline: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = export_pipeline(pipeline, trained_on=298)
    return save_model(model, tmp_path_factory.mktemp("model") / "router.json")


def make_job(model: Path | None = None, *, kind: str = "model", **classifier: Any) -> Job:
    clf: dict[str, Any] = {"kind": kind, **classifier}
    if model is not None:
        clf["path"] = str(model)
    data: dict[str, Any] = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "tiers": {"complex": "big", "standard": "mid", "structured": "mid", "bulk": "small"},
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25},
            "mid": {"input_per_mtok": 3, "output_per_mtok": 15},
            "small": {"input_per_mtok": 0.25, "output_per_mtok": 1},
        },
        "routing": {"classifier": clf},
    }
    return Job(parse_job(data, path=Path("job.yaml")), path=Path("job.yaml"), text_sha256="")


def test_exported_model_predicts_what_the_sklearn_pipeline_predicts(
    pipeline: Any, model_path: Path
) -> None:
    """Every probability of the JSON model equals scikit-learn's, on prompts it never saw."""
    held, _ = read_labelled(LABELLED / "holdout.csv")
    tricky = ["", "   ", "ünïcödé wörds — and CAPS", "a b c", "repeat repeat repeat repeat"]
    texts = held + tricky
    model = load_model(model_path)
    # The export divides the logits by TEMPERATURE: softmax(z / T) is p^(1/T), renormalised.
    sharpened = pipeline.predict_proba(texts) ** (1 / TEMPERATURE)
    sharpened /= sharpened.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(texts), sharpened, rtol=1e-9, atol=1e-12)
    assert model.tiers == tuple(pipeline.classes_)
    most_probable = [model.tiers[i] for i in model.predict_proba(texts).argmax(axis=1)]
    assert most_probable == list(pipeline.predict(texts)), "a temperature keeps the top tier"


def test_function_words_weigh_nothing_alone_but_count_in_pairs(model_path: Path) -> None:
    """ "the", "and", "hhthe" have no weight of their own; a pair such as "and how" keeps one."""
    model = load_model(model_path)
    index = {word: i for i, word in enumerate(model.unigrams)}
    alone = [index[w] for w in ("the", "and", "thi", "hhthe", "hhand") if w in index]
    assert len(alone) == 5
    assert not model.idf[alone].any() and not model.coef[alone].any()
    pairs = [
        len(model.unigrams) + k
        for k, (a, b) in enumerate(model.bigrams)
        if FUNCTION_WORDS & {model.unigrams[a], model.unigrams[b]}
    ]
    assert pairs and model.idf[pairs].all() and model.coef[pairs].any()
    # A function word added to a prompt changes nothing unless it makes a known pair.
    np.testing.assert_allclose(
        model.predict_proba(["Translate the release notes"]),
        model.predict_proba(["Translate the the release notes"]),
    )


def test_a_long_column_is_scored_in_chunks_with_the_same_numbers(model_path: Path) -> None:
    """Past one chunk of rows, every row still gets exactly the probabilities it gets alone."""
    held, _ = read_labelled(LABELLED / "holdout.csv")
    model = load_model(model_path)
    alone = model.predict_proba(held)
    many = model.predict_proba(held * 40)  # 4,680 rows: two chunks, one split mid-way
    np.testing.assert_allclose(many, np.tile(alone, (40, 1)), rtol=1e-12)


def test_text_is_prepared_alike_for_training_and_predicting() -> None:
    """Endings cut, head words marked, no length feature: in Python (training) as in polars."""
    forms = "Translated TRANSLATES translating; notification notifications?"
    assert prepare(forms).split() == [
        "xxbos", "translat", "translat", "translat;", "notific", "notific?", "xxeos", "xxqm",
        "hhtranslat", "hhtranslat", "hhtranslat", "hhnotific", "hhnotific",
    ]  # fmt: skip
    texts, _ = read_labelled(TRAIN)
    texts = [*texts, "x" * 5000, "a résumé, naïvely translated?"]
    by_polars = pl.select(prepare_expr(pl.lit(pl.Series(texts))).str.extract_all(TOKEN_PATTERN))
    assert by_polars.to_series().to_list() == [re.findall(TOKEN_PATTERN, prepare(t)) for t in texts]
    short, long = prepare("Fix typos."), prepare("Fix typos. " + "Word " * 400)
    assert set(long.split()) - set(short.split()) == {"word", "hhword"}


def test_one_character_words_are_features() -> None:
    """The letters of a formula or a puzzle are read: "x" and "x y" are features of the shipped
    model, and a formula's letters move its probabilities (two-character words dropped them)."""
    words = re.findall(TOKEN_PATTERN, prepare("x+y = 4z, express x-y in z"))
    assert words[:9] == ["xxbos", "x", "y", "4z", "expres", "x", "y", "in", "z"]
    model = shipped_model()
    index = {word: i for i, word in enumerate(model.unigrams)}
    assert model.idf[index["x"]] > 0
    pairs = {(model.unigrams[a], model.unigrams[b]) for a, b in model.bigrams}
    assert {("x", "y"), ("f", "x"), ("and", "c")} <= pairs
    with_letters, without = model.predict_proba(["solve x+y = 4z for x", "solve + = 4 for"])
    assert not np.allclose(with_letters, without)


def test_shipped_model_loads_and_predicts_without_sklearn() -> None:
    """A process where scikit-learn cannot be imported still routes with the shipped model."""
    code = (
        "import sys; sys.modules['sklearn'] = None; sys.modules['joblib'] = None\n"
        "from batchroute.classify.model import shipped_model\n"
        "m = shipped_model()\n"
        "p = m.predict_proba(['Translate these release notes into Portuguese'])\n"
        "print(m.tiers[int(p.argmax())])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {"bulk", "complex", "standard", "structured"}


def test_model_round_trips_through_its_file(model_path: Path, tmp_path: Path) -> None:
    model = load_model(model_path)
    again = load_model(save_model(model.with_bias({"complex": -1.5}), tmp_path / "b.json"))
    texts = ["Design a sharded job queue", "Write unit tests for the parser"]
    np.testing.assert_allclose(model.predict_proba(texts), again.predict_proba(texts), rtol=1e-12)
    assert again.tier_bias == {"complex": -1.5}
    assert set(model.tiers) == {"bulk", "complex", "standard", "structured"}
    assert model.trained_on == 298


def test_a_model_file_is_plain_json_with_a_format_version(model_path: Path) -> None:
    payload = json.loads(model_path.read_text())
    assert payload["format"] == "batchroute-router"
    assert payload["format_version"] == FORMAT_VERSION
    idf, bigrams = decode_array(payload["idf"]), decode_array(payload["bigrams"])
    assert idf.shape == (len(payload["unigrams"]) + len(bigrams),)
    assert bigrams.shape[1] == 2
    assert payload["coef"]["shape"] == [len(idf), len(payload["tiers"])]


def _rewrite(src: Path, dst: Path, **changes: Any) -> Path:
    payload = json.loads(src.read_text())
    payload.update(changes)
    dst.write_text(json.dumps(payload))
    return dst


def test_unknown_format_version_is_refused(model_path: Path, tmp_path: Path) -> None:
    future = _rewrite(model_path, tmp_path / "f.json", format_version=FORMAT_VERSION + 1)
    with pytest.raises(
        ClassifierModelError,
        match=rf"model format {FORMAT_VERSION + 1}.*reads format {FORMAT_VERSION}.*retrain",
    ):
        load_model(future)
    old = _rewrite(model_path, tmp_path / "o.json", format_version=1)
    with pytest.raises(ClassifierModelError, match="model format 1"):
        load_model(old)


def test_damaged_tables_are_refused(model_path: Path, tmp_path: Path) -> None:
    payload = json.loads(model_path.read_text())
    short = _rewrite(
        model_path, tmp_path / "s.json", idf=encode_array(decode_array(payload["idf"])[:-1])
    )
    with pytest.raises(ClassifierModelError, match="damaged model file"):
        load_model(short)
    pair = np.array([[0, 10**9]], dtype="<i4")
    bad_pair = _rewrite(model_path, tmp_path / "p.json", bigrams=encode_array(pair))
    with pytest.raises(ClassifierModelError, match="damaged model file"):
        load_model(bad_pair)
    as_lists = _rewrite(model_path, tmp_path / "l.json", idf=[1.0, 2.0])
    with pytest.raises(ClassifierModelError, match="damaged model file"):
        load_model(as_lists)
    not_base64 = dict(payload["coef"], base64="not base64!")
    with pytest.raises(ClassifierModelError, match="damaged model file"):
        load_model(_rewrite(model_path, tmp_path / "b.json", coef=not_base64))
    objects = dict(payload["coef"], dtype="|O")
    with pytest.raises(ClassifierModelError, match="damaged model file"):
        load_model(_rewrite(model_path, tmp_path / "o.json", coef=objects))


def test_missing_foreign_and_pickled_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ClassifierModelError, match="no such model file.*batchroute train"):
        load_model(tmp_path / "nope.json")
    pickled = tmp_path / "old.joblib"
    pickled.write_bytes(b"\x80\x04\x95\x00\x00\x00\xff\xfe")
    with pytest.raises(ClassifierModelError, match="is not a batchroute model file"):
        load_model(pickled)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(ClassifierModelError, match="is not a batchroute model file"):
        load_model(other)


def test_the_default_job_routes_with_the_shipped_model() -> None:
    data: dict[str, Any] = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "tiers": {"complex": "big", "standard": "big", "structured": "big", "bulk": "big"},
        "models": {"big": {"input_per_mtok": 1, "output_per_mtok": 1}},
    }
    job = Job(parse_job(data, path=Path("j.yaml")), path=Path("j.yaml"), text_sha256="")
    router = build_router(job)
    assert isinstance(router.classifier, RouterModel)
    assert router.classifier.n_features == shipped_model().n_features
    out = router.classify(frame_from_prompts(["How do I list hidden files on macOS?"]))
    assert out["tier_source"].to_list() == ["classifier"]
    assert build_router(make_job(kind="rules")).classifier is None


def test_rules_decide_first_and_the_model_decides_the_rest(model_path: Path) -> None:
    prompts = ["Translate this security review into French", "Why does our queue stall?"]
    out = build_router(make_job(model_path)).classify(frame_from_prompts(prompts))
    assert out["tier_source"].to_list() == ["rule", "classifier"]
    assert out["tier"].to_list()[0] == "bulk"
    assert out["classifier_confidence"].null_count() == 0


def test_rows_below_the_gate_go_to_standard(model_path: Path) -> None:
    never = build_router(make_job(model_path, min_confidence=1.0))
    out = never.classify(frame_from_prompts(["Why does our job queue stall after an hour?"]))
    assert out["tier_source"].to_list() == ["default"]
    assert out["tier"].to_list() == ["standard"]


def test_hints_outrank_the_model(model_path: Path) -> None:
    router = build_router(make_job(model_path))
    frame = frame_from_prompts(
        ["Write unit tests for this", "Write unit tests for this"],
        tier_hint=["complex", None],
        json_output=[None, True],
    )
    out = router.classify(frame)
    assert out["tier"].to_list() == ["complex", "structured"]
    assert out["tier_source"].to_list() == ["metadata", "rule"]


def test_bias_shifts_decisions(model_path: Path) -> None:
    model = load_model(model_path)
    scores = model.predict_proba(["Design a sharded job queue that survives a region outage"])
    assert model.decide(scores, allowed=model.tiers)[0] == ["complex"]
    biased = model.with_bias({"complex": -50.0})
    assert biased.decide(scores, allowed=model.tiers)[0] != ["complex"]


def test_unmapped_tiers_are_never_predicted(model_path: Path) -> None:
    model = load_model(model_path)
    scores = model.predict_proba(["Write unit tests for the parser"])
    tiers, confidence = model.decide(scores, allowed={"standard", "complex"})
    assert tiers[0] in {"standard", "complex"}
    assert 0.5 <= confidence[0] <= 1.0


def test_build_router_reports_a_missing_model_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ClassifierModelError, match=str(tmp_path / "absent.json")):
        build_router(make_job(tmp_path / "absent.json"))


def test_router_repr_shows_its_state(model_path: Path) -> None:
    router = build_router(make_job(model_path))
    assert isinstance(router, Router)
    assert "RouterModel" in repr(router) and "least expected cost" in repr(router)


def test_empty_frame_classifies_to_an_empty_frame(model_path: Path) -> None:
    out = build_router(make_job(model_path)).classify(frame_from_prompts([]))
    assert out.height == 0
    assert out.schema["classifier_confidence"] == pl.Float64


def test_train_cli_writes_a_loadable_model_and_reports_cv(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    args = ["train", str(TRAIN), "--out", str(out), "--cv-folds", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2-fold cross-validated accuracy:" in result.output
    assert f"Wrote {out}" in result.output
    model = load_model(out)
    assert model.cv_accuracy is not None and model.cv_accuracy > 0.6


def test_train_cli_reads_a_directory_of_csv_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for name, tier in (("a", "bulk"), ("b", "complex")):
        rows = "".join(f"{tier} prompt number {i},{tier}\n" for i in range(3))
        (tmp_path / "data" / f"{name}.csv").write_text("prompt,tier\n" + rows)
    out = tmp_path / "m.json"
    args = ["train", str(tmp_path / "data"), "--out", str(out), "--cv-folds", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert load_model(out).trained_on == 6


def test_train_cli_refuses_a_file_without_the_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,standard\n")
    result = CliRunner().invoke(main, ["train", str(bad), "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 6
    assert "needs columns prompt,tier" in result.output


@pytest.mark.parametrize(
    ("prompt", "tier"),
    [
        ("Why does this worker pool stop picking up jobs after an hour?", "complex"),
        ("Get the order number and total out of this receipt", "structured"),
        ("Put these release notes into Portuguese", "bulk"),
        ("Which VS Code extension formats code on save?", "standard"),
        ("What does 'generate tests' mean in Jest?", "standard"),
        ("Add comments to this deadlock reproduction script.", "bulk"),
        ("Translate this security review into French.", "bulk"),
        ("Rename the variables in our architecture linter.", "bulk"),
        (
            "Implement a function that returns the k-th smallest element of two sorted arrays.",
            "complex",
        ),
        ("Pretend you are a pirate captain and greet the new crew.", "standard"),
    ],
)
def test_the_default_router_routes_the_issue_examples(prompt: str, tier: str) -> None:
    """Issue 11's examples of its failure classes (a regression guard when the model is retrained;
    the training corpus covers these classes, so this is no measure of generalisation)."""
    data: dict[str, Any] = {
        "name": "t",
        "input": {"path": "in.jsonl"},
        "tiers": {"complex": "big", "standard": "mid", "structured": "mid", "bulk": "small"},
        "models": {
            "big": {"input_per_mtok": 5, "output_per_mtok": 25},
            "mid": {"input_per_mtok": 0.25, "output_per_mtok": 2},
            "small": {"input_per_mtok": 0.27, "output_per_mtok": 1.1},
        },
    }
    job = Job(parse_job(data, path=Path("j.yaml")), path=Path("j.yaml"), text_sha256="")
    out = build_router(job).classify(frame_from_prompts([prompt]))
    assert out["tier"].to_list() == [tier]
