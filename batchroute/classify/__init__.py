"""Routing: which tier each row goes to, by a hint, the narrow rules, or the router model.

The runner calls `build_router(job)` once and `router.classify(frame)` per batch. The model
(`model`, shipped in `batchroute/data/router.json`) predicts with polars and numpy; the decision
(`decision`) picks the tier of least expected cost. Only training (`learned`) needs scikit-learn.
"""

from batchroute.classify.router import ROUTING_COLUMNS, Router, build_router, frame_from_prompts

__all__ = ["ROUTING_COLUMNS", "Router", "build_router", "frame_from_prompts"]
