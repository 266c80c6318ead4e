"""batchroute's OpenAI-compatible simulator: rehearse jobs, costs and failures offline.

The server and its hosts are imported on first use, so that loading a job (whose schema includes
`SimConfig`) never pays for importing aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batchroute.sim.config import FaultRates, SimConfig, SimModelConfig

if TYPE_CHECKING:
    from batchroute.sim.hosting import EmbeddedSimulator, LocalSimulator, SimulatorProcess, serve
    from batchroute.sim.loader import load_sim_config
    from batchroute.sim.server import create_app
    from batchroute.sim.stats import SimStats

__all__ = [
    "EmbeddedSimulator",
    "FaultRates",
    "LocalSimulator",
    "SimConfig",
    "SimModelConfig",
    "SimStats",
    "SimulatorProcess",
    "create_app",
    "load_sim_config",
    "serve",
]

_LAZY = {
    "EmbeddedSimulator": "batchroute.sim.hosting",
    "LocalSimulator": "batchroute.sim.hosting",
    "SimulatorProcess": "batchroute.sim.hosting",
    "serve": "batchroute.sim.hosting",
    "load_sim_config": "batchroute.sim.loader",
    "create_app": "batchroute.sim.server",
    "SimStats": "batchroute.sim.stats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchroute.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
