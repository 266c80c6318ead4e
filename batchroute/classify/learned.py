"""Training the router model: TF-IDF word n-grams into a logistic regression (scikit-learn).

scikit-learn is the optional extra `batchroute[ml]`, needed only here, to *train*. The fitted
pipeline is exported at once to a `RouterModel` (plain numbers, see `batchroute.classify.model`),
which predicts with numpy and polars alone.

Function words ("the", "and", "of", "that", `FUNCTION_WORDS`) are not features on their own: a
careful, long-winded prompt has more of them than a terse one, whatever it asks, so alone they
teach the model a writer's style rather than the work. They still count inside word pairs ("and
how", "could you", "xxbos the"), where they carry the shape of the request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from batchroute.classify.model import ENDINGS, TOKEN_PATTERN, RouterModel, prepare
from batchroute.errors import ClassifierModelError

__all__ = [
    "FUNCTION_WORDS",
    "TEMPERATURE",
    "cross_validate",
    "export_pipeline",
    "train_classifier",
]

_INSTALL_HINT = "install the ML extra: pip install 'batchroute[ml]'"

C = 16.0
"""Inverse regularisation strength, chosen by cross-validation grouped by source file."""

MIN_DF = 2
"""A word or word pair must appear in two prompts to be a feature: one prompt's quirks are noise."""

TEMPERATURE = 0.6
"""The exported model's logits are the fitted ones divided by this (temperature scaling).

The routing decision weighs each tier's probability against its price (least expected cost), so
the probabilities must mean what they say. The fitted ones are too timid: on the passes held out
in `bench_classify.py --penalty-sweep`, which prints the log-loss at each temperature, 0.6 gives
the least log-loss (0.136, against 0.173 at 1). It never changes which tier is most probable."""

_FUNCTION_WORDS = """
a an the and or but nor of to in on at for with by from as into about over than then so if also
is are was were be been being it its this that these those there i me my you your we our us they
them their he him his she her do does did has have had will would can could should shall may
might must just very too not no
"""
_FUNCTION_STEMS = {re.sub(ENDINGS, r"\1", word) for word in _FUNCTION_WORDS.split()}
FUNCTION_WORDS = frozenset(_FUNCTION_STEMS | {"hh" + stem for stem in _FUNCTION_STEMS})
"""The words that are features only inside pairs (see above): as `prepare` writes them (endings
cut, so "this" is "thi"), and as head words. Chosen on the passes held out in
`bench_classify.py --penalty-sweep`: a model trained on the first passes routed the later ones
79.4% right with them as features and 83.6% without."""


def _sklearn_version() -> str:
    try:
        import sklearn  # type: ignore[import-untyped]
    except ImportError:
        raise ClassifierModelError(
            f"training the router needs scikit-learn; {_INSTALL_HINT}", path="<training>"
        ) from None
    return str(sklearn.__version__)


def _pipeline(seed: int, *, c: float = C) -> Any:
    # scikit-learn ships no type information; the pipeline is handled as Any.
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import Pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import normalize  # type: ignore[import-untyped]

    class ContentWords(TfidfVectorizer):  # type: ignore[misc]
        """TF-IDF whose function words weigh nothing alone (`FUNCTION_WORDS`), renormalised.

        Their columns stay, at zero, so the vocabulary (and the pairs built on it) is unchanged:
        exported with an idf of 0, a function word then weighs nothing when predicting too.
        """

        def fit(self, raw_documents: Any, y: Any = None) -> Any:
            self.fit_transform(raw_documents)
            return self

        def fit_transform(self, raw_documents: Any, y: Any = None) -> Any:
            matrix = super().fit_transform(raw_documents)
            content = np.ones(len(self.vocabulary_))
            for word, index in self.vocabulary_.items():
                if word in FUNCTION_WORDS:
                    content[index] = 0.0
            self.content_ = content
            return self._content_only(matrix)

        def transform(self, raw_documents: Any) -> Any:
            return self._content_only(super().transform(raw_documents))

        def _content_only(self, matrix: Any) -> Any:
            return normalize(matrix.multiply(self.content_).tocsr())

    # The word pattern is written so Python's `re` and polars' regex read it alike.
    words = ContentWords(
        ngram_range=(1, 2),
        sublinear_tf=True,
        token_pattern=TOKEN_PATTERN,
        preprocessor=prepare,
        min_df=MIN_DF,
        dtype=np.float64,
    )
    model = LogisticRegression(C=c, max_iter=5000, class_weight="balanced", random_state=seed)
    return Pipeline([("words", words), ("model", model)])


def export_pipeline(
    pipeline: Any, *, trained_on: int, cv_accuracy: float | None = None
) -> RouterModel:
    """The `RouterModel` computing what a fitted `_pipeline` computes, at `TEMPERATURE`."""
    vectorizer = pipeline.named_steps["words"]
    clf = pipeline.named_steps["model"]
    vocab: dict[str, int] = vectorizer.vocabulary_
    unigram_terms = sorted(t for t in vocab if " " not in t)
    uni_index = {t: i for i, t in enumerate(unigram_terms)}
    bigram_terms = sorted(t for t in vocab if " " in t)
    bigrams = np.array(
        [[uni_index[a], uni_index[b]] for a, b in (t.split(" ") for t in bigram_terms)],
        dtype=np.int64,
    ).reshape(-1, 2)
    order = np.array([vocab[t] for t in unigram_terms + bigram_terms], dtype=np.int64)
    coef = np.asarray(clf.coef_, dtype=np.float64) / TEMPERATURE
    intercept = np.asarray(clf.intercept_, dtype=np.float64) / TEMPERATURE
    if coef.shape[0] == 1:  # two classes: p(second) = sigmoid(z) = softmax([0, z])[1]
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, intercept[0]])
    return RouterModel(
        tiers=tuple(str(c) for c in clf.classes_),
        unigrams=tuple(unigram_terms),
        bigrams=bigrams,
        idf=np.asarray(vectorizer.idf_ * vectorizer.content_, dtype=np.float64)[order],
        coef=coef.T[order],
        intercept=intercept,
        trained_on=trained_on,
        cv_accuracy=cv_accuracy,
        sklearn_version=_sklearn_version(),
    )


def fit_pipeline(texts: Sequence[str], labels: Sequence[str], *, seed: int = 0) -> Any:
    """The fitted scikit-learn pipeline (for export, and for checking the export)."""
    _sklearn_version()
    if len(texts) != len(labels) or not texts:
        raise ValueError("texts and labels must be non-empty and of equal length")
    pipeline = _pipeline(seed)
    pipeline.fit(list(texts), list(labels))
    return pipeline


def train_classifier(
    texts: Sequence[str], labels: Sequence[str], *, seed: int = 0, cv_folds: int = 0
) -> RouterModel:
    """Fit the router model on labelled texts; with `cv_folds` ≥ 2, also record CV accuracy."""
    pipeline = fit_pipeline(texts, labels, seed=seed)
    cv = cross_validate(texts, labels, folds=cv_folds, seed=seed) if cv_folds >= 2 else None
    return export_pipeline(pipeline, trained_on=len(texts), cv_accuracy=cv)


def cross_validate(
    texts: Sequence[str], labels: Sequence[str], *, folds: int = 5, seed: int = 0, c: float = C
) -> float:
    """Stratified k-fold accuracy of the training recipe on these examples."""
    from sklearn.model_selection import (  # type: ignore[import-untyped]
        StratifiedKFold,
        cross_val_score,
    )

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(_pipeline(seed, c=c), list(texts), list(labels), cv=splitter)
    return float(np.mean(scores))
