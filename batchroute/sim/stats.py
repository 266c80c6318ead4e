"""Server-side counts of chat-completion requests, per model and outcome, for tests to read."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

__all__ = ["SimStats"]


class SimStats:
    """Counts every chat-completion request exactly once, when its outcome is decided.

    `requests[model][outcome]` uses the HTTP status as a string ("200", "429", ...) for requests
    that get an answer, and "hang" or "disconnect" for those that never do. `faults[model][name]`
    counts injected faults separately (a malformed body or a content filter is still a "200"),
    and `limited[model]` counts the 429s the rpm/tpm windows caused, as distinct from injected
    ones, so a benchmark can tell a client's over-sending from the faults it asked for.
    """

    __slots__ = ("_faults", "_limited", "_requests", "total")

    def __init__(self) -> None:
        self.total = 0
        self._requests: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self._faults: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self._limited: defaultdict[str, int] = defaultdict(int)

    def count(self, model: str, outcome: str, *, fault: str | None = None) -> None:
        """Record one request's outcome, and the fault it drew if any."""
        self.total += 1
        self._requests[model][outcome] += 1
        if fault is not None:
            self._faults[model][fault] += 1

    def count_limited(self, model: str) -> None:
        """Record one 429 caused by the limits (call beside `count(model, "429")`)."""
        self._limited[model] += 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: `{"total", "requests", "faults", "limited"}`."""
        return {
            "total": self.total,
            "requests": {m: dict(c) for m, c in self._requests.items()},
            "faults": {m: dict(c) for m, c in self._faults.items()},
            "limited": dict(self._limited),
        }

    def reset(self) -> None:
        """Zero every count."""
        self.total = 0
        self._requests.clear()
        self._faults.clear()
        self._limited.clear()

    def __repr__(self) -> str:
        return f"<SimStats [total: {self.total}, models: {len(self._requests)}]>"
