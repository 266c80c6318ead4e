"""Routing: which tier each row goes to, by rules, a trained classifier, or a hint.

The runner calls `build_router(job)` once and `router.classify(frame)` per batch. The trained
classifier (`learned`), its evaluation (`evaluate`) and calibration (`calibrate`) import
scikit-learn only when used.
"""

from batchroute.classify.router import ROUTING_COLUMNS, Router, build_router, frame_from_prompts

__all__ = ["ROUTING_COLUMNS", "Router", "build_router", "frame_from_prompts"]
