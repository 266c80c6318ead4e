"""batchroute: send each row of a dataset to the cheapest model that can handle it."""

__version__ = "0.1.0"
"""The one place the version is written: pyproject.toml reads it from here."""

__all__ = ["__version__"]
