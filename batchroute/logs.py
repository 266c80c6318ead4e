"""Logging for people and for machines: plain text on a terminal, one JSON object per line with
`--log-format json`. Every record carries the run id of the run that wrote it.

Log records never contain API keys (batchroute never holds one in a message) nor, by default,
prompt text: messages name rows by id and line, not by content.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

__all__ = ["LogFormat", "configure_logging", "run_id_var"]

LogFormat = Literal["text", "json"]

run_id_var: ContextVar[str | None] = ContextVar("batchroute_run_id", default=None)
"""The run id of the run in progress; the runner sets it, every log record carries it."""

_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "run_id"):
            record.run_id = run_id_var.get()
        return True


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, run_id, msg, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": getattr(record, "run_id", None),
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{stamp} batchroute: {level}{record.getMessage()}"


def configure_logging(*, log_format: LogFormat = "text", quiet: bool = False) -> None:
    """Send batchroute's log records to stderr in the chosen format (idempotent)."""
    logger = logging.getLogger("batchroute")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    handler.addFilter(_RunIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
