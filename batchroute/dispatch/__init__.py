"""Sending rows to models: the clients, the per-model limits, and each row's walk down its chain."""

from batchroute.dispatch.dispatcher import Action, AttemptRecord, Dispatcher, RowOutcome, RowRequest

__all__ = ["Action", "AttemptRecord", "Dispatcher", "RowOutcome", "RowRequest"]
