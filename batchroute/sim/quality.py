"""Answer quality faults, and a judge mode: every verify-and-escalate path, rehearsed offline.

Unlike the transport faults (`faults`), these are drawn from a hash of the seed, the knob and the
request's digest, never from a shared generator: the same request to the same model always gets
the same verdict, whatever else the server is doing, so a resumed run meets the same answers.

    invalid_json_rate   a JSON answer is wrapped in chatter, so it no longer parses
    truncate_rate       the answer is cut in half and ends with finish_reason length
    refusal_rate        the answer is a polite refusal
    judge               the model answers every request as a judge (strict JSON), failing the
                        answers of each graded model at its `fail_rates` rate (else `fail_rate`),
                        and replying garbage at `garbage_rate`
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from batchroute.sim.config import SimModelConfig

__all__ = ["GRADED_MODEL_MARK", "QualityDraws", "REFUSAL_TEXT"]

REFUSAL_TEXT: Final = "I'm sorry, but I can't help with that request."
GRADED_MODEL_MARK: Final = "graded model:"
"""The judge mode finds the graded model's name after this mark in the judge's prompt."""
_GRADED = re.compile(re.escape(GRADED_MODEL_MARK) + r"\s*([\w.:/@-]+)")
_CHATTER: Final = "Sure! Here is the JSON you asked for:\n"


class QualityDraws:
    """One model's quality knobs, resolved once; deterministic draws per request digest."""

    __slots__ = (
        "_seed",
        "garbage_rate",
        "invalid_json_rate",
        "judge",
        "judge_fail",
        "judge_fail_rates",
        "refusal_rate",
        "truncate_rate",
    )

    def __init__(self, settings: SimModelConfig, *, seed: int) -> None:
        self._seed = seed.to_bytes(8, "little", signed=True)
        self.invalid_json_rate = settings.invalid_json_rate
        self.truncate_rate = settings.truncate_rate
        self.refusal_rate = settings.refusal_rate
        judge = settings.judge
        self.judge = judge is not None
        self.judge_fail = judge.fail_rate if judge is not None else 0.0
        self.judge_fail_rates: Mapping[str, float] = dict(judge.fail_rates) if judge else {}
        self.garbage_rate = judge.garbage_rate if judge is not None else 0.0

    def __repr__(self) -> str:
        return (
            f"<QualityDraws [invalid_json: {self.invalid_json_rate}, truncate: "
            f"{self.truncate_rate}, refusal: {self.refusal_rate}, judge: {self.judge}]>"
        )

    @property
    def active(self) -> bool:
        return bool(self.invalid_json_rate or self.truncate_rate or self.refusal_rate or self.judge)

    def _draw(self, knob: bytes, digest: bytes) -> float:
        """A uniform number in [0, 1) from the seed, the knob and the request."""
        h = hashlib.blake2b(self._seed + knob + digest, digest_size=8).digest()
        return int.from_bytes(h, "little") / 2**64

    def degrade(
        self, content: str, finish_reason: str, *, digest: bytes, wants_json: bool
    ) -> tuple[str, str]:
        """The answer after this model's quality faults: (content, finish_reason)."""
        if self.refusal_rate and self._draw(b"refusal", digest) < self.refusal_rate:
            return REFUSAL_TEXT, "stop"
        if wants_json and self.invalid_json_rate:
            if self._draw(b"invalid_json", digest) < self.invalid_json_rate:
                content = _CHATTER + content
        if self.truncate_rate and self._draw(b"truncate", digest) < self.truncate_rate:
            return content[: max(1, len(content) // 2)], "length"
        return content, finish_reason

    def verdict(self, messages: Sequence[Mapping[str, Any]], *, digest: bytes) -> str:
        """The judge mode's reply to a grading request: strict JSON, or garbage at its rate."""
        if self.garbage_rate and self._draw(b"garbage", digest) < self.garbage_rate:
            return "The answer looks fine to me, I would give it a solid pass."
        text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, Mapping))
        found = _GRADED.search(text)
        rate = (
            self.judge_fail_rates.get(found.group(1), self.judge_fail) if found else self.judge_fail
        )
        u = self._draw(b"judge", digest)
        passed = u >= rate
        score = round(0.7 + 0.3 * u, 3) if passed else round(0.4 * u, 3)
        reason = "meets the rubric" if passed else "misses what the rubric asks for"
        return json.dumps({"score": score, "pass": passed, "reason": reason})
