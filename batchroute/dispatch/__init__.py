"""Sending rows to models: the fleet, each row's walk down its chain, the policy, the limits."""

from batchroute.dispatch.dispatcher import Dispatcher
from batchroute.dispatch.policy import Action
from batchroute.dispatch.rows import AttemptRecord, RowOutcome, RowRequest

__all__ = ["Action", "AttemptRecord", "Dispatcher", "RowOutcome", "RowRequest"]
