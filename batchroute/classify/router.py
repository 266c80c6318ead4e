"""The router: the job's rules and optional trained classifier, applied to a whole frame at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

from batchroute.classify.rules import HINT_RULES, MATCH_PREFIX, TEXT_COLUMN, RuleSet, text_expr
from batchroute.classify.signals import SIGNAL_TIERS, resolve_signals
from batchroute.errors import JobError
from batchroute.schema import INPUT_SCHEMA, TierSource

if TYPE_CHECKING:
    import numpy as np

    from batchroute.classify.learned import TrainedClassifier
    from batchroute.config import Job

__all__ = ["ROUTING_COLUMNS", "Router", "build_router", "frame_from_prompts"]

ROUTING_COLUMNS: dict[str, pl.DataType] = {
    "tier": pl.String(),
    "tier_source": pl.String(),
    "matched_signal": pl.String(),
    "classifier_confidence": pl.Float64(),
}
"""The columns `Router.classify` adds (and `invalid_reason`, which it may fill)."""

_RULE = "__batchroute_rule"
_CLF_TIER = "__batchroute_clf_tier"
_CLF_CONF = "__batchroute_clf_conf"
_CLF_OK = "__batchroute_clf_ok"


class Router:
    """Decides each row's tier: hints, then a confident classifier, then rules, then standard."""

    def __init__(
        self,
        rules: RuleSet,
        *,
        classifier: TrainedClassifier | None = None,
        min_confidence: float = 0.6,
    ) -> None:
        self.rules = rules
        self.classifier = classifier
        self.min_confidence = min_confidence

    def __repr__(self) -> str:
        clf = "rules only" if self.classifier is None else f"{self.classifier!r}"
        return f"<Router {self.rules!r} [{clf}, min_confidence: {self.min_confidence}]>"

    def classify(
        self,
        frame: pl.DataFrame,
        *,
        scores: np.ndarray[Any, Any] | None = None,
        bias: dict[str, float] | None = None,
    ) -> pl.DataFrame:
        """The frame with tier, tier_source, matched_signal and classifier_confidence added.

        `scores` (the classifier's probabilities for every row) and `bias` let calibration
        re-route one sample many times without scoring it again.
        """
        work = frame.with_columns(text_expr(frame).alias(TEXT_COLUMN))
        work = work.with_columns(self.rules.match_exprs())
        rules = self.rules.rules()
        steps = [rule.name for rule in rules]
        if self.classifier is not None:
            work = self._add_classifier(work, scores=scores, bias=bias)
            slot = next((i for i, name in enumerate(steps) if name not in HINT_RULES), len(steps))
            steps.insert(slot, "classifier")
        masks = {rule.name: rule.mask for rule in rules}
        masks["classifier"] = pl.col(_CLF_OK)
        chosen: Any = pl
        for step in steps:
            chosen = chosen.when(masks[step]).then(pl.lit(step))
        rule_expr = chosen.otherwise(pl.lit(None)) if steps else pl.lit(None)
        work = work.with_columns(rule_expr.cast(pl.String).alias(_RULE))

        rule = pl.col(_RULE)
        tier_of = {r.name: r.tier for r in rules if r.name != "metadata"}
        source_of = {r.name: r.source for r in rules}
        signal_of = {r.name: r.signal for r in rules if r.signal is not None}
        source_of["classifier"] = TierSource.CLASSIFIER
        signal_of["classifier"] = "classifier"
        tier_col = rule.replace_strict(tier_of, default="standard", return_dtype=pl.String)
        if "metadata" in steps:
            tier_col = pl.when(rule == "metadata").then(self.rules.hint_expr()).otherwise(tier_col)
        if "classifier" in steps:
            tier_col = pl.when(rule == "classifier").then(pl.col(_CLF_TIER)).otherwise(tier_col)
        signal_col = rule.replace_strict(
            signal_of, default=pl.lit(None, pl.String), return_dtype=pl.String
        )
        for step in steps:
            if step in SIGNAL_TIERS:
                labels = self._signal_labels(work, step)
                signal_col = pl.when(rule == step).then(labels).otherwise(signal_col)
        source_col = rule.replace_strict(
            source_of, default=TierSource.DEFAULT, return_dtype=pl.String
        )
        confidence = pl.col(_CLF_CONF) if self.classifier is not None else pl.lit(None)

        hint = self.rules.hint_expr()
        mapped = sorted(self.rules.tiers)
        bad_hint = (hint.is_not_null() & (hint != "") & ~hint.is_in(mapped)).fill_null(False)
        hint_reason = pl.when(bad_hint).then(
            pl.format(
                f"tier hint '{{}}' names no tier of this job (tiers: {', '.join(mapped)})", hint
            )
        )
        existing = (
            pl.col("invalid_reason").cast(pl.String)
            if "invalid_reason" in work.columns
            else pl.lit(None, pl.String)
        )
        out = work.with_columns(
            tier_col.cast(pl.String).alias("tier"),
            source_col.alias("tier_source"),
            signal_col.cast(pl.String).alias("matched_signal"),
            confidence.cast(pl.Float64).alias("classifier_confidence"),
            pl.coalesce(existing, hint_reason).alias("invalid_reason"),
        )
        private = [c for c in out.columns if c.startswith("__batchroute_")]
        return out.drop(private)

    def _signal_labels(self, work: pl.DataFrame, tier: str) -> pl.Expr:
        """The signal label of each row's match for `tier`, resolved over distinct matches."""
        column = MATCH_PREFIX + tier
        matches = work.filter(pl.col(_RULE) == tier)[column].unique()
        labels = self.rules.signal_labels(tier, matches)
        return pl.col(column).replace_strict(
            matches, labels, default=pl.lit(None, pl.String), return_dtype=pl.String
        )

    def _add_classifier(
        self,
        work: pl.DataFrame,
        *,
        scores: np.ndarray[Any, Any] | None,
        bias: dict[str, float] | None,
    ) -> pl.DataFrame:
        assert self.classifier is not None
        clf = self.classifier
        if scores is None:
            scores = clf.predict_proba(work[TEXT_COLUMN].fill_null("").to_list())
        tiers, confidence = clf.decide(scores, allowed=self.rules.tiers, bias=bias)
        return work.with_columns(
            pl.Series(_CLF_TIER, tiers, dtype=pl.String),
            pl.Series(_CLF_CONF, confidence, dtype=pl.Float64),
        ).with_columns((pl.col(_CLF_CONF) >= self.min_confidence).fill_null(False).alias(_CLF_OK))


def build_router(job: Job) -> Router:
    """The router a job describes; loads its trained classifier if it names one."""
    routing = job.config.routing
    tiers = tuple(job.config.tiers)
    for tier in routing.signals:
        if tier not in SIGNAL_TIERS:
            raise JobError(
                f"the '{tier}' tier has no signals (only structured, complex and bulk do); "
                "remove this entry",
                path=job.path,
                key=f"routing.signals.{tier}",
            )
    overrides = {str(tier): override for tier, override in routing.signals.items()}
    signals = resolve_signals(overrides, tiers=tiers, path=job.path)
    _check_patterns(signals, job=job)
    rules = RuleSet(
        order=routing.order,
        tiers=tiers,
        signals=signals,
        long_prompt_words=routing.long_prompt_words,
        hint_column=job.config.input.tier_hint_column,
    )
    clf_cfg = routing.classifier
    if clf_cfg.kind != "model" or clf_cfg.path is None:
        return Router(rules)
    from batchroute.classify.learned import load_model

    model = load_model(job.resolve(clf_cfg.path))
    gate = clf_cfg.min_confidence if model.min_confidence is None else model.min_confidence
    return Router(rules, classifier=model, min_confidence=gate)


def _check_patterns(signals: dict[str, Any], *, job: Job) -> None:
    probe = pl.Series([""], dtype=pl.String)
    for tier, sigs in signals.items():
        for sig in sigs:
            try:
                probe.str.contains("(?i)" + sig.pattern)
            except pl.exceptions.PolarsError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise JobError(
                    f"the signal {sig.label!r} is not a valid regex ({first}); polars' regex has "
                    "no lookarounds or backreferences",
                    path=job.path,
                    key=f"routing.signals.{tier}",
                ) from None


def frame_from_prompts(prompts: list[str], **hints: list[Any]) -> pl.DataFrame:
    """An INPUT_SCHEMA frame of bare prompts (e.g. a labelled set), with optional hint columns."""
    n = len(prompts)
    data: dict[str, Any] = {
        "row_index": list(range(n)),
        "line": list(range(1, n + 1)),
        "id": [str(i + 1) for i in range(n)],
        "prompt": prompts,
        "system_prompt": [None] * n,
        "messages": [None] * n,
        "tier_hint": hints.get("tier_hint", [None] * n),
        "json_output": hints.get("json_output", [None] * n),
        "invalid_reason": [None] * n,
    }
    return pl.DataFrame(data, schema=INPUT_SCHEMA)
