"""batchroute: send each row of a dataset to the cheapest model that can handle it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batchroute")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
