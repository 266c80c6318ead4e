"""The router: the job's rules and optional trained classifier, applied to a whole frame at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import polars as pl

from batchroute.classify.decision import SERVES, TierCosts
from batchroute.classify.rules import (
    MATCH_PREFIX,
    TEXT_COLUMN,
    Rule,
    RuleSet,
    text_expr,
)
from batchroute.classify.signals import SIGNAL_TIERS, resolve_signals
from batchroute.errors import JobError
from batchroute.schema import INPUT_SCHEMA, TierSource

if TYPE_CHECKING:
    import numpy as np

    from batchroute.classify.model import RouterModel
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
_HINT = "__batchroute_hint"


_PARALLEL_ROWS = 50_000
"""From this many rows, a frame is classified in one slice per polars thread, side by side.

A regex scan of a string column runs on one thread whichever engine runs it; slicing the frame
and classifying the slices in threads (polars releases the GIL) keeps every core scanning, and
costs less CPU than the streaming engine's morsels.
"""


def _step_value(rules: list[Rule], step: str, field: str) -> str | None:
    """A step's fixed tier, source or signal (None where the row decides it, or for no rule)."""
    if step == "classifier":
        return {"tier": None, "source": TierSource.CLASSIFIER, "signal": "classifier"}[field]
    rule = next(r for r in rules if r.name == step)
    value: str | None = getattr(rule, field)
    return value or None


def _by_step(values: list[str | None]) -> pl.Expr:
    """The value of each row's deciding step, looked up by index (null for undecided rows)."""
    return pl.lit(pl.Series(values, dtype=pl.String)).gather(pl.col(_RULE))


class Router:
    """Decides each row's tier: hints, then the precise rules, then the model, then standard.

    With a model, the rules of `routing.order` run first (they decide only where they are
    nearly always right) and the model decides every other row, by least expected cost when
    `costs` are given (see `batchroute.classify.decision`), else by its most probable tier.
    `long_prompt` applies only without a model: the model reads a long prompt itself.
    """

    def __init__(
        self,
        rules: RuleSet,
        *,
        classifier: RouterModel | None = None,
        min_confidence: float = 0.0,
        costs: TierCosts | None = None,
        under_routing_penalty: float = 0.0,
    ) -> None:
        self.rules = rules
        self.classifier = classifier
        self.min_confidence = min_confidence
        self.costs = costs
        self.under_routing_penalty = under_routing_penalty

    def __repr__(self) -> str:
        clf = "rules only" if self.classifier is None else f"{self.classifier!r}"
        decision = "most probable" if self.costs is None else "least expected cost"
        return (
            f"<Router {self.rules!r} [{clf}, min_confidence: {self.min_confidence}, "
            f"decision: {decision}, under_routing_penalty: {self.under_routing_penalty}]>"
        )

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
        threads = pl.thread_pool_size()
        if frame.height < _PARALLEL_ROWS or threads < 2:
            return self._classify(frame, scores=scores, bias=bias)
        size = -(-frame.height // threads)
        starts = range(0, frame.height, size)
        with ThreadPoolExecutor(len(starts)) as pool:
            parts = pool.map(
                lambda start: self._classify(
                    frame.slice(start, size),
                    scores=None if scores is None else scores[start : start + size],
                    bias=bias,
                ),
                starts,
            )
            return pl.concat(list(parts))

    def _classify(
        self,
        frame: pl.DataFrame,
        *,
        scores: np.ndarray[Any, Any] | None,
        bias: dict[str, float] | None,
    ) -> pl.DataFrame:
        rules = self.rules.rules()
        if self.classifier is not None:
            rules = [rule for rule in rules if rule.name != "long_prompt"]
        steps = [rule.name for rule in rules]
        masks = {rule.name: rule.mask for rule in rules}
        work = frame.with_columns(text_expr(frame).alias(TEXT_COLUMN))
        if self.classifier is not None:
            work = self._add_classifier(work, scores=scores, bias=bias)
            steps.append("classifier")
            masks["classifier"] = pl.col(_CLF_OK)
        decided = self._decide(work, steps=steps, masks=masks)

        rule = pl.col(_RULE)
        tier_of = [_step_value(rules, step, "tier") for step in steps]
        source_of = [_step_value(rules, step, "source") for step in steps]
        signal_of = [_step_value(rules, step, "signal") for step in steps]
        tier_col = _by_step(tier_of).fill_null("standard")
        if "metadata" in steps:
            tier_col = (
                pl.when(rule == steps.index("metadata")).then(pl.col(_HINT)).otherwise(tier_col)
            )
        if "classifier" in steps:
            at = steps.index("classifier")
            tier_col = pl.when(rule == at).then(pl.col(_CLF_TIER)).otherwise(tier_col)
        signal_col = self._signal_expr(decided, steps=steps, fixed=signal_of)
        source_col = _by_step(source_of).fill_null(TierSource.DEFAULT)
        confidence = pl.col(_CLF_CONF) if self.classifier is not None else pl.lit(None, pl.Float64)

        hint = pl.col(_HINT)
        mapped = sorted(self.rules.tiers)
        bad_hint = (hint.is_not_null() & (hint != "") & ~hint.is_in(mapped)).fill_null(False)
        hint_reason = pl.when(bad_hint).then(
            pl.format(
                f"tier hint '{{}}' names no tier of this job (tiers: {', '.join(mapped)})", hint
            )
        )
        existing = (
            pl.col("invalid_reason").cast(pl.String)
            if "invalid_reason" in frame.columns
            else pl.lit(None, pl.String)
        )
        routing = (
            decided.lazy()
            .select(
                tier_col.cast(pl.String).alias("tier"),
                source_col.cast(pl.String).alias("tier_source"),
                signal_col.cast(pl.String).alias("matched_signal"),
                confidence.cast(pl.Float64).alias("classifier_confidence"),
                pl.coalesce(existing, hint_reason).alias("invalid_reason"),
            )
            .collect(engine="in-memory")
        )
        return frame.with_columns(routing.get_columns())

    def _decide(
        self, work: pl.DataFrame, *, steps: list[str], masks: dict[str, pl.Expr]
    ) -> pl.DataFrame:
        """Each row's deciding step (its index in `steps`, null: none) and the tiers' matches.

        The steps run in order, each over only the rows still undecided, so a row settled early
        is never scanned by a later tier's regex.
        """
        rule = pl.col(_RULE)
        lazy = work.lazy().with_columns(
            self.rules.hint_expr().alias(_HINT), pl.lit(None, pl.UInt8).alias(_RULE)
        )
        keep = (
            [_RULE, _HINT, "invalid_reason"] if "invalid_reason" in work.columns else [_RULE, _HINT]
        )
        if self.classifier is not None:
            keep += [_CLF_TIER, _CLF_CONF]
        for i, step in enumerate(steps):
            if step in SIGNAL_TIERS:
                lazy = lazy.with_columns(self.rules.match_expr(step, pending=rule.is_null()))
                keep.append(MATCH_PREFIX + step)
            mask = masks[step]
            lazy = lazy.with_columns(
                pl.when(rule.is_null() & mask)
                .then(pl.lit(i, pl.UInt8))
                .otherwise(rule)
                .alias(_RULE)
            )
        return lazy.select(keep).collect(engine="in-memory")

    def _signal_expr(
        self, decided: pl.DataFrame, *, steps: list[str], fixed: list[str | None]
    ) -> pl.Expr:
        """Each row's matched_signal: its signal tier's label, or its deciding step's own.

        A tier's match column is non-null exactly on the rows that tier decided. Its label is
        resolved over the distinct matches only; rows pick theirs up by an integer code (an
        Enum over those matches), and one gather from the table of all labels ends the lookup.
        """
        table: list[str | None] = list(fixed)
        codes: list[pl.Expr] = []
        for step in steps:
            if step not in SIGNAL_TIERS:
                continue
            column = MATCH_PREFIX + step
            matches = decided[column].drop_nulls().unique()
            code = pl.col(column).cast(pl.Enum(matches.to_list())).to_physical()
            codes.append(code.cast(pl.UInt32) + len(table))
            table.extend(self.rules.signal_labels(step, matches).to_list())
        index = pl.coalesce(*codes, pl.col(_RULE).cast(pl.UInt32))
        return pl.lit(pl.Series(table, dtype=pl.String)).gather(index)

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
            scores = clf.predict_proba(work[TEXT_COLUMN])
        allowed = [tier for tier in clf.tiers if tier in self.rules.tiers]
        row_costs = None
        if self.costs is not None and allowed:
            row_costs = self.costs.row_costs(work[TEXT_COLUMN], tiers=allowed)
        tiers, confidence = clf.decide(
            scores,
            allowed=allowed,
            bias=bias,
            row_costs=row_costs,
            serves=SERVES,
            penalty=self.under_routing_penalty,
        )
        return work.with_columns(
            pl.Series(_CLF_TIER, tiers, dtype=pl.String),
            pl.Series(_CLF_CONF, confidence, dtype=pl.Float64),
        ).with_columns((pl.col(_CLF_CONF) >= self.min_confidence).fill_null(False).alias(_CLF_OK))


def build_router(job: Job, *, model: RouterModel | None = None) -> Router:
    """The router a job describes, with its model (the shipped one unless it names a file).

    `model` replaces the job's model (and makes a `kind: rules` job use one), to evaluate it.
    """
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
    if model is None and clf_cfg.kind != "model":
        return Router(rules)
    from batchroute.classify.model import load_model, shipped_model

    if model is None:
        model = shipped_model() if clf_cfg.path is None else load_model(job.resolve(clf_cfg.path))
    gate = clf_cfg.min_confidence if model.min_confidence is None else model.min_confidence
    return Router(
        rules,
        classifier=model,
        min_confidence=gate,
        costs=TierCosts.from_job(job),
        under_routing_penalty=routing.under_routing_penalty,
    )


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
