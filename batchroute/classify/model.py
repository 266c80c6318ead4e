"""The router model: a linear model over word uni- and bigrams, as a plain JSON file.

`batchroute train` fits TF-IDF word n-grams into a logistic regression with scikit-learn and
exports the fitted numbers here; predicting needs only numpy and polars, and loading a model file
is reading JSON, so it can never execute code. A model file is one JSON object::

    {"format": "batchroute-router", "format_version": 5, "tiers": [...],
     "token_pattern": "...", "markers": "...", "unigrams": [...], "bigrams": ARRAY,
     "idf": ARRAY, "coef": ARRAY, "intercept": [...],
     "tier_bias": {...}, "min_confidence": 0.0, "trained_on": N, "cv_accuracy": 0.9,
     "batchroute_version": "...", "sklearn_version": "..."}

An ARRAY is a numeric table as plain data, `{"dtype": "<f8", "shape": [rows, columns], "base64":
"..."}`: its little-endian bytes in base64, which loads ten times faster than the same numbers
written as JSON decimals (and every run loads the model).

`unigrams` are the vocabulary's single words; a bigram is a pair of unigram indices. Feature `f`
is `unigrams[f]` for `f < len(unigrams)`, then the bigrams in order; `idf[f]` and `coef[f]` (one
weight per tier) belong to it. A unigram whose idf is 0 weighs nothing: it is in the vocabulary
only so that the pairs it opens or closes can be read (the function words, see
`batchroute.classify.learned`). Training reads each text as `prepare` writes it: lowercased, common
word endings cut (`ENDINGS`), between marker words, followed by its head words (`HEAD_WORDS`),
through scikit-learn's `TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)` and a
multinomial `LogisticRegression`. Predicting gives the same numbers without writing that text:
each text is tokenised once in polars, the batch's distinct words are stemmed and looked up, the
marker and head words are laid out by index arithmetic in numpy, and the features are weighted by
`(1 + ln tf) · idf` and summed per row with `numpy.bincount`.

The package ships one such file, `batchroute/data/router.json`, which a job uses when it names
no other (`routing.classifier.kind: model`, the default).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from batchroute import __version__
from batchroute.errors import ClassifierModelError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "TOKEN_PATTERN",
    "RouterModel",
    "decode_array",
    "encode_array",
    "ENDINGS",
    "HEAD_WORDS",
    "load_model",
    "prepare",
    "prepare_expr",
    "save_model",
    "shipped_model",
]

FORMAT_NAME = "batchroute-router"
FORMAT_VERSION = 5
"""Bumped whenever the model file's layout or text preparation changes; other versions are refused.

Version 1 was a joblib pickle of a scikit-learn pipeline; version 2 was this plain JSON with
length markers; version 3 dropped them, cut word endings and added the head words (`prepare`);
version 4 writes the numeric tables as base64 arrays (see above); version 5 reads one-character
words too (`TOKEN_PATTERN`).
"""

TOKEN_PATTERN = r"\b\w+\b"
"""A word is any run of word characters, one character included, in polars' regex syntax.

scikit-learn's default pattern needs two, and so drops the single letters and digits that
carry a puzzle or a formula: "x+y = 4z, express x-y in z" kept only "4z", "express" and "in",
and "A is the father of B. B is the father of C" read as a question about fathers. With them,
pairs such as "x y" and "of b" are features. Chosen on the passes held out in `bench_classify.py
--penalty-sweep` (14 passes pooled, at the default penalty: 95.3% routed right and 1.5%
under-routed, against 95.0% and 1.7% with two-character words; the short-chat pass with maths
in symbols under-routed 3.2% instead of 4.5%). "a" and "i" are function words
(`batchroute.classify.learned`), features only inside pairs."""

MARKERS = "xxbos text xxeos xxqm hh*16"
"""The marker words added around a text before it is tokenised (see `prepare`).

`xxbos` and `xxeos` make the first and last words features of their own (as bigrams: "xxbos
translate" is a request, "xxbos which" a question), and `xxqm` marks a question mark, which the
word pattern would otherwise drop. The first `HEAD_WORDS` words follow again, each marked `hh`.

The prompt's length is deliberately not a feature. An earlier model had length-bucket markers,
and it learned that a long prompt is complex work, because the labelled data it saw had few long
everyday prompts. Long writing briefs, role-play set-ups and pasted emails then went to the
dearest tier. Length says how much there is to read, not how hard the work is.
"""

ENDINGS = r"\b(\w{3,}?)(ations?|ments?|ings?|ers?|ed|ly|ies|es|s)\b"
"""Common English endings cut from every word of four or more letters before tokenising.

"translated", "translates" and "translating" then count as one word ("translat"), so the model
learns what a prompt asks for from fewer examples and reads a word form it never saw. Training
cuts them from the text with Python's `re`; predicting cuts them from each distinct word with
polars' regex (`_WHOLE_WORD_ENDING`), which is the same, since a word is a whole run of word
characters.
"""

HEAD_WORDS = 16
"""The prompt's first words, repeated as features of their own (`hhexplain`, `hhtranslat`).

The request usually opens the prompt ("Explain this error to the analyst:", "Translate this
security review:"), and whatever is pasted after it (a stack trace, an email, a design document)
can hold far more words. Marked apart, the opening words keep their own weight however much
follows, so a pasted log no longer outvotes "explain".
"""

SHIPPED_MODEL = "router.json"
"""The trained model in `batchroute/data/` that a job uses by default."""

_CHUNK_ROWS = 4096
"""Texts scored together (see `RouterModel.predict_proba`)."""

_ROW = "row"
_WORD = "word"
_UNI = "uni"
_ENDINGS = re.compile(ENDINGS)
_WHOLE_WORD_ENDING = "^" + ENDINGS.replace(r"\b", "") + "$"
"""`ENDINGS` on one word at a time: a word is a whole run of word characters, so it is the same."""
_TOKEN = re.compile(TOKEN_PATTERN)
_TRAIN_HINT = "train one with `batchroute train LABELLED.csv --out MODEL.json`"


@dataclass(frozen=True, eq=False)
class RouterModel:
    """A fitted text → tier linear model, with the per-tier bias that calibration sets."""

    tiers: tuple[str, ...]
    """The model's classes, in the column order of `predict_proba`."""
    unigrams: tuple[str, ...]
    bigrams: np.ndarray[Any, Any]
    """(n_bigrams, 2) unigram indices."""
    idf: np.ndarray[Any, Any]
    coef: np.ndarray[Any, Any]
    """(n_features, n_tiers) weights."""
    intercept: np.ndarray[Any, Any]
    tier_bias: Mapping[str, float] = field(default_factory=dict)
    """Per tier, 0 when absent: a negative bias makes the tier harder to choose (see `decide`)."""
    min_confidence: float | None = None
    """The confidence gate calibration chose, replacing the job's; None when not calibrated."""
    trained_on: int = 0
    cv_accuracy: float | None = None
    sklearn_version: str = ""
    _tables: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n_uni = len(self.unigrams)
        self._tables[_UNI] = pl.DataFrame(
            {
                _WORD: pl.Series(self.unigrams, dtype=pl.String),
                _UNI: pl.Series(np.arange(n_uni, dtype=np.int64)),
            }
        )
        pairs = self.bigrams.astype(np.int64)
        self._tables["bi"] = pl.DataFrame(
            {
                "key": pl.Series(pairs[:, 0] * n_uni + pairs[:, 1], dtype=pl.Int64),
                "fid": pl.Series(np.arange(n_uni, n_uni + len(pairs), dtype=np.int64)),
            }
        )

    def __repr__(self) -> str:
        bias = {t: round(b, 3) for t, b in self.tier_bias.items() if b}
        return (
            f"<RouterModel tiers={list(self.tiers)} [features: {len(self.idf):,}, "
            f"examples: {self.trained_on}, bias: {bias}, gate: {self.min_confidence}]>"
        )

    @property
    def n_features(self) -> int:
        return len(self.idf)

    def predict_proba(self, texts: pl.Series | Sequence[str]) -> np.ndarray[Any, Any]:
        """Each text's probability per tier (columns in `tiers` order), over the whole column.

        The column is scored `_CHUNK_ROWS` texts at a time: a chunk's word and pair tables stay in
        the processor's cache, which makes a 200,000-row column 3-4x cheaper than in one piece.
        """
        series = texts if isinstance(texts, pl.Series) else pl.Series(list(texts), dtype=pl.String)
        series = series.cast(pl.String).fill_null("")
        if len(series) == 0:
            return np.zeros((0, len(self.tiers)))
        chunks = range(0, len(series), _CHUNK_ROWS)
        return np.concatenate([self._proba(series.slice(i, _CHUNK_ROWS)) for i in chunks])

    def _proba(self, texts: pl.Series) -> np.ndarray[Any, Any]:
        n = len(texts)
        rows, fids, counts = self._features(texts)
        weight = (1.0 + np.log(counts)) * self.idf[fids]
        norm = np.sqrt(np.bincount(rows, weights=weight * weight, minlength=n))
        norm[norm == 0.0] = 1.0
        logits = np.empty((n, len(self.tiers)))
        for j in range(len(self.tiers)):
            logits[:, j] = np.bincount(rows, weights=weight * self.coef[fids, j], minlength=n)
        logits /= norm[:, None]
        logits += self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs

    def _features(
        self, texts: pl.Series
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """(row, feature index, count) of every vocabulary n-gram present in each text.

        The same words as `prepare` and the tokeniser give in training, built without writing the
        prepared text: each text is tokenised once; the batch's distinct words are cut to their
        stems and looked up (as themselves and as head words) in one small join; then each row's
        sequence `xxbos, words, xxeos, [xxqm], head words` is laid out by index arithmetic in
        numpy, where its unigrams and word pairs are read off.
        """
        frame = pl.DataFrame({_WORD: texts}).select(
            pl.col(_WORD).str.to_lowercase().str.extract_all(TOKEN_PATTERN).alias(_WORD),
            pl.col(_WORD).str.contains("?", literal=True).alias("qm"),
        )
        flat = frame[_WORD].explode(empty_as_null=False).drop_nulls()
        lengths = frame[_WORD].list.len().to_numpy().astype(np.int64)
        question = frame["qm"].to_numpy().astype(np.int64)
        ids, head_ids = self._word_ids(flat)
        n = len(lengths)
        heads = np.minimum(lengths, HEAD_WORDS)
        sizes = lengths + 2 + question + heads  # xxbos, words, xxeos, xxqm?, head words
        ends = np.cumsum(sizes)
        starts = ends - sizes
        seq = np.full(int(ends[-1]) if n else 0, -1, dtype=np.int64)
        word_row = np.repeat(np.arange(n), lengths)
        word_pos = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        seq[starts[word_row] + 1 + word_pos] = ids
        markers = self._marker_ids
        seq[starts] = markers[0]
        seq[starts + 1 + lengths] = markers[1]
        asked = question.astype(bool)
        seq[(starts + 2 + lengths)[asked]] = markers[2]
        in_head = word_pos < HEAD_WORDS
        head_at = (starts + 2 + lengths + question)[word_row[in_head]] + word_pos[in_head]
        seq[head_at] = head_ids[in_head]
        row_of = np.repeat(np.arange(n), sizes)
        known = seq >= 0
        n_uni = len(self.unigrams)
        pair = known[:-1] & known[1:] & (row_of[:-1] == row_of[1:])
        pair_keys = seq[:-1][pair] * n_uni + seq[1:][pair]
        pairs = pl.DataFrame({"key": pair_keys, _ROW: row_of[:-1][pair]}).join(
            self._tables["bi"], on="key", how="inner"
        )
        rows = np.concatenate([row_of[known], pairs[_ROW].to_numpy()])
        fids = np.concatenate([seq[known], pairs["fid"].to_numpy()])
        # One integer key per (row, feature): counting one integer column is the cheapest group-by.
        n_features = self.n_features
        keys = pl.Series("key", rows * n_features + fids)
        counted = keys.to_frame().group_by("key").agg(pl.len().alias("n"))
        found = counted["key"].to_numpy()
        return found // n_features, found % n_features, counted["n"].to_numpy().astype(np.float64)

    def _word_ids(self, words: pl.Series) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Each word's feature index as a body word and as a head word (-1: not a feature)."""
        distinct = words.unique()
        stems = distinct.str.replace(_WHOLE_WORD_ENDING, "${1}")
        vocabulary = self._tables[_UNI]
        lookup = (
            pl.DataFrame({"raw": distinct, _WORD: stems})
            .with_columns(pl.concat_str(pl.lit("hh"), pl.col(_WORD)).alias("head"))
            .join(vocabulary, on=_WORD, how="left")
            .join(vocabulary.rename({_WORD: "head", _UNI: "head_id"}), on="head", how="left")
            .select("raw", pl.col(_UNI).fill_null(-1), pl.col("head_id").fill_null(-1))
        )
        mapped = words.to_frame("raw").join(lookup, on="raw", how="left", maintain_order="left")
        return mapped[_UNI].to_numpy(), mapped["head_id"].to_numpy()

    @cached_property
    def _marker_ids(self) -> tuple[int, int, int]:
        """The feature indices of `xxbos`, `xxeos` and `xxqm` (-1: not in the vocabulary)."""
        index = {word: i for i, word in enumerate(self.unigrams) if word.startswith("xx")}
        return index.get("xxbos", -1), index.get("xxeos", -1), index.get("xxqm", -1)

    def decide(
        self,
        scores: np.ndarray[Any, Any],
        *,
        allowed: Collection[str],
        bias: Mapping[str, float] | None = None,
        row_costs: np.ndarray[Any, Any] | None = None,
        serves: Mapping[str, Collection[str]] | None = None,
        penalty: float = 0.0,
    ) -> tuple[list[str | None], np.ndarray[Any, Any]]:
        """Each row's tier among the `allowed` tiers, and the probability of that tier.

        Without `row_costs` the most probable tier wins, after the bias is added to the
        log-probabilities. With them (n × allowed tiers, in `tiers` order) the tier of least
        expected cost wins (see `batchroute.classify.decision.least_expected_cost`), and the bias
        acts on prices instead: a tier's own price is multiplied by `exp(-bias)`, so a negative
        bias makes the tier dearer to choose, whatever its coverage of other tiers' work.
        """
        from batchroute.classify.decision import least_expected_cost

        bias = self.tier_bias if bias is None else bias
        cols = [i for i, tier in enumerate(self.tiers) if tier in allowed]
        if not cols or scores.shape[0] == 0:
            return [None] * scores.shape[0], np.full(scores.shape[0], np.nan)
        names = [self.tiers[i] for i in cols]
        shift = np.array([bias.get(tier, 0.0) for tier in names])
        logits = np.log(np.clip(scores[:, cols], 1e-12, None))
        if row_costs is None or serves is None:
            logits += shift
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        if row_costs is None or serves is None:
            best = probs.argmax(axis=1)
        else:
            best = least_expected_cost(
                probs,
                row_costs,
                tiers=names,
                serves=serves,
                penalty=penalty,
                price_scale=np.exp(-shift),
            )
        labels = np.array(names, dtype=object)
        return list(labels[best]), probs[np.arange(len(best)), best]

    def with_bias(
        self, bias: Mapping[str, float], *, min_confidence: float | None = None
    ) -> RouterModel:
        """A copy of this model with another per-tier bias (and confidence gate)."""
        return replace(self, tier_bias=dict(bias), min_confidence=min_confidence, _tables={})

    def to_json(self) -> dict[str, Any]:
        """The model as the JSON object of a model file."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "batchroute_version": __version__,
            "sklearn_version": self.sklearn_version,
            "tiers": list(self.tiers),
            "token_pattern": TOKEN_PATTERN,
            "markers": MARKERS,
            "tier_bias": dict(self.tier_bias),
            "min_confidence": self.min_confidence,
            "trained_on": self.trained_on,
            "cv_accuracy": self.cv_accuracy,
            "intercept": [float(x) for x in self.intercept],
            "unigrams": list(self.unigrams),
            "bigrams": encode_array(self.bigrams.astype("<i4")),
            "idf": encode_array(self.idf.astype("<f8")),
            "coef": encode_array(self.coef.astype("<f8")),
        }


_ARRAY_DTYPES = frozenset({"<f8", "<i4"})


def encode_array(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    """A numeric table as plain JSON data: dtype, shape and its bytes in base64."""
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "base64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii"),
    }


def decode_array(value: Any) -> np.ndarray[Any, Any]:
    """The table `encode_array` wrote; ValueError when it is not one (never runs code)."""
    if not isinstance(value, dict) or value.get("dtype") not in _ARRAY_DTYPES:
        raise ValueError("a table is not an array of a known dtype")
    shape = tuple(int(n) for n in value["shape"])
    data = np.frombuffer(base64.b64decode(value["base64"], validate=True), dtype=value["dtype"])
    return data.reshape(shape)


def prepare(text: str) -> str:
    """What the tokeniser reads (one text; for training): see `MARKERS`, `ENDINGS`, `HEAD_WORDS`."""
    body = _ENDINGS.sub(r"\1", text.lower())
    head = " ".join("hh" + word for word in _TOKEN.findall(body)[:HEAD_WORDS])
    question = " xxqm" if "?" in text else ""
    return f"xxbos {body} xxeos{question} {head}"


def prepare_expr(text: pl.Expr) -> pl.Expr:
    """`prepare` over a whole string column (polars; for predicting)."""
    body = text.str.to_lowercase().str.replace_all(ENDINGS, "${1}")
    words = body.str.extract_all(TOKEN_PATTERN).list.head(HEAD_WORDS)
    head = words.list.eval(pl.lit("hh") + pl.element()).list.join(" ")
    question = pl.when(text.str.contains("?", literal=True)).then(pl.lit(" xxqm"))
    return pl.concat_str(
        pl.lit("xxbos "), body, pl.lit(" xxeos"), question.otherwise(pl.lit("")), pl.lit(" "), head
    )


def save_model(model: RouterModel, path: Path | str) -> Path:
    """Write a model file that `load_model` (and a job's `classifier.path`) can read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def load_model(path: Path | str) -> RouterModel:
    """Read a model file, refusing a missing, corrupt or incompatible one with a clear message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClassifierModelError(f"no such model file; {_TRAIN_HINT}", path=path) from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise ClassifierModelError(
            f"is not a batchroute model file (not JSON text); {_TRAIN_HINT}", path=path
        ) from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClassifierModelError(
            f"is not a batchroute model file (invalid JSON at line {exc.lineno}); {_TRAIN_HINT}",
            path=path,
        ) from None
    return model_from_json(payload, path=path)


def model_from_json(payload: Any, *, path: Path | str) -> RouterModel:
    """A `RouterModel` from a model file's JSON object, checking its format and shapes."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ClassifierModelError(f"is not a batchroute model file; {_TRAIN_HINT}", path=path)
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ClassifierModelError(
            f"has model format {version!r}, but this batchroute ({__version__}) reads format "
            f"{FORMAT_VERSION}; retrain it with `batchroute train`",
            path=path,
        )
    if payload.get("token_pattern") != TOKEN_PATTERN or payload.get("markers") != MARKERS:
        raise ClassifierModelError(
            f"reads text with {payload.get('token_pattern')!r} and {payload.get('markers')!r}, "
            f"not {TOKEN_PATTERN!r} and {MARKERS!r}; retrain it with `batchroute train`",
            path=path,
        )
    try:
        tiers = tuple(str(t) for t in payload["tiers"])
        unigrams = tuple(str(w) for w in payload["unigrams"])
        bigrams = decode_array(payload["bigrams"]).astype(np.int64).reshape(-1, 2)
        idf = decode_array(payload["idf"]).astype(np.float64)
        coef = decode_array(payload["coef"]).astype(np.float64).reshape(-1, len(tiers))
        intercept = np.asarray(payload["intercept"], dtype=np.float64)
        bias = {str(k): float(v) for k, v in (payload.get("tier_bias") or {}).items()}
        gate = payload.get("min_confidence")
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ClassifierModelError(
            f"is a damaged model file ({type(exc).__name__}: {exc}); {_TRAIN_HINT}", path=path
        ) from None
    n_features = len(unigrams) + len(bigrams)
    if (
        len(idf) != n_features
        or coef.shape[0] != n_features
        or intercept.shape != (len(tiers),)
        or (len(bigrams) and (bigrams.min() < 0 or bigrams.max() >= len(unigrams)))
    ):
        raise ClassifierModelError(
            f"is a damaged model file (its tables disagree in size); {_TRAIN_HINT}", path=path
        )
    return RouterModel(
        tiers=tiers,
        unigrams=unigrams,
        bigrams=bigrams,
        idf=idf,
        coef=coef,
        intercept=intercept,
        tier_bias=bias,
        min_confidence=None if gate is None else float(gate),
        trained_on=int(payload.get("trained_on") or 0),
        cv_accuracy=payload.get("cv_accuracy"),
        sklearn_version=str(payload.get("sklearn_version") or ""),
    )


def shipped_model() -> RouterModel:
    """The trained model that ships with batchroute (`batchroute/data/router.json`)."""
    source = resources.files("batchroute") / "data" / SHIPPED_MODEL
    return model_from_json(json.loads(source.read_text(encoding="utf-8")), path=str(source))
