"""batchroute: send each row of a dataset to the cheapest model that can handle it.

The Python API (`run`, `run_async`, `plan`, `load_job`, `RunResult`) lives in `batchroute.api`
and is imported on first use, so `import batchroute` and the command line stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchroute.api import RunResult, load_job, plan, run, run_async

__version__ = "0.1.0"
"""The one place the version is written: pyproject.toml reads it from here."""

__all__ = ["RunResult", "__version__", "load_job", "plan", "run", "run_async"]

_API = frozenset({"RunResult", "load_job", "plan", "run", "run_async"})


def __getattr__(name: str) -> Any:
    if name in _API:
        from batchroute import api

        return getattr(api, name)
    raise AttributeError(f"module 'batchroute' has no attribute {name!r}")
