"""The vectorised rule engine: each precedence rule as a polars mask over the whole frame.

Every rule of `routing.order` becomes one boolean mask, and the first rule that holds decides a
row. A signal tier runs one combined case-insensitive regex (`str.extract`, which also keeps the
matched text) over only the rows that no earlier rule decided: the regex scan is nearly all of
the cost, so a row settled by a hint or an earlier tier is never scanned again. The label of the
signal that fired is recovered from the *distinct* matched texts only (a capture pass over a few
thousand short strings, not the column), then mapped back onto the rows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from batchroute.classify.signals import SIGNAL_TIERS, Signal
from batchroute.schema import TierSource

__all__ = ["MATCH_PREFIX", "TEXT_COLUMN", "Rule", "RuleSet", "text_expr"]

TEXT_COLUMN = "__batchroute_text"
"""The private column holding the text a row is classified by."""

MATCH_PREFIX = "__batchroute_match_"
"""Private columns holding each signal tier's matched text."""

_RULE_TIER = {"json_output": "structured", "long_prompt": "complex"}


def text_expr(frame: pl.DataFrame) -> pl.Expr:
    """The text to classify: the prompt, or the joined message contents for chat-form rows."""
    prompt = pl.col("prompt").cast(pl.String)
    if "messages" not in frame.columns or frame["messages"].null_count() == frame.height:
        return prompt
    contents = pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\n")
    return pl.coalesce(prompt, contents)


@dataclass(frozen=True, slots=True)
class Rule:
    """One step of the precedence order: a row matching `mask` gets `tier`."""

    name: str
    tier: str
    source: str
    mask: pl.Expr
    signal: str | None
    """The matched_signal of rows this rule decides; None for signal tiers (see `signal_labels`)."""


class RuleSet:
    """The job's rules, compiled: which rules run, in what order, with which signals."""

    def __init__(
        self,
        *,
        order: Sequence[str],
        tiers: Collection[str],
        signals: Mapping[str, Sequence[Signal]],
        long_prompt_words: int,
        hint_column: str = "tier",
    ) -> None:
        self.tiers = frozenset(tiers)
        self.long_prompt_words = long_prompt_words
        self.hint_column = hint_column
        self.signals = {tier: tuple(signals.get(tier, ())) for tier in SIGNAL_TIERS}
        self.order = tuple(name for name in order if self._is_live(name))
        self._combined = {
            tier: "(?i)" + "|".join(f"(?:{s.pattern})" for s in sigs)
            for tier, sigs in self.signals.items()
            if sigs
        }
        # Anchored: run over a match of `_combined`, it names the alternative that produced it.
        self._grouped = {
            tier: "(?i)^(?:" + "|".join(f"(?P<s{i}>{s.pattern})" for i, s in enumerate(sigs)) + ")"
            for tier, sigs in self.signals.items()
            if sigs
        }

    def _is_live(self, name: str) -> bool:
        if name == "metadata":
            return True
        tier = _RULE_TIER.get(name, name)
        if tier not in self.tiers:
            return False  # a rule for a tier the job does not map never fires
        return name not in SIGNAL_TIERS or bool(self.signals.get(name))

    def __repr__(self) -> str:
        counts = ", ".join(f"{tier}: {len(sigs)}" for tier, sigs in self.signals.items() if sigs)
        return f"<RuleSet order={list(self.order)} [signals: {counts}]>"

    def hint_expr(self) -> pl.Expr:
        """The normalised tier hint of each row."""
        return pl.col("tier_hint").cast(pl.String).str.strip_chars().str.to_lowercase()

    def match_expr(self, tier: str, *, pending: pl.Expr) -> pl.Expr:
        """The text the tier's combined pattern matched, on `pending` rows only (null: no match).

        One `str.extract` pass serves as both the rule's mask and the evidence for its label, so
        no second (capturing) pass over the column is needed. Rows outside `pending` are null
        before the regex runs, so it never scans them.
        """
        text = pl.when(pending).then(pl.col(TEXT_COLUMN))
        return text.str.extract(self._combined[tier], 0).alias(MATCH_PREFIX + tier)

    def rules(self) -> list[Rule]:
        """The live rules in precedence order; signal rules read `match_expr`'s columns."""
        text = pl.col(TEXT_COLUMN)
        built: list[Rule] = []
        for name in self.order:
            if name == "metadata":
                mask = self.hint_expr().is_in(sorted(self.tiers)).fill_null(False)
                signal = f"metadata:{self.hint_column}"
                built.append(Rule(name, "", TierSource.METADATA, mask, signal))
            elif name == "json_output":
                mask = pl.col("json_output").cast(pl.Boolean).fill_null(False)
                built.append(Rule(name, "structured", TierSource.RULE, mask, "json_output"))
            elif name == "long_prompt":
                n = self.long_prompt_words
                # A prompt of more than n words has at least 2n+1 bytes: count words only there.
                candidate = pl.when(text.str.len_bytes() >= 2 * n + 1).then(text)
                mask = (candidate.str.count_matches(r"\S+") > n).fill_null(False)
                signal = f"long_prompt:>{n} words"
                built.append(Rule(name, "complex", TierSource.RULE, mask, signal))
            else:
                mask = pl.col(MATCH_PREFIX + name).is_not_null()
                built.append(Rule(name, name, TierSource.RULE, mask, None))
        return built

    def signal_labels(self, tier: str, matches: pl.Series) -> pl.Series:
        """The `tier:label` of each distinct matched text of a tier (same order as `matches`)."""
        groups = matches.str.extract_groups(self._grouped[tier])
        labels = self.signals[tier]
        expr: pl.Expr = pl.lit(None, pl.String)
        for i in reversed(range(len(labels))):
            fired = pl.col("g").struct.field(f"s{i}").is_not_null()
            expr = pl.when(fired).then(pl.lit(f"{tier}:{labels[i].label}")).otherwise(expr)
        return pl.DataFrame({"g": groups}).select(expr.alias("label"))["label"]
