"""batchroute's OpenAI-compatible simulator: rehearse jobs, costs and failures offline."""

from batchroute.sim.config import FaultRates, SimConfig, SimModelConfig

__all__ = ["FaultRates", "SimConfig", "SimModelConfig"]
