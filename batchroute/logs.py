"""Logging for people and for machines: plain text on a terminal, one JSON object per line with
`--log-format json`. Every record carries the run id of the run that wrote it.

A JSON line follows the OpenTelemetry log data model's names where one fits (`timestamp`,
`severity_text`, `severity_number`) and structlog's otherwise (`level`, `logger`), and carries a
typed `event`: `run_started`, `progress`, `warning`, `rows_rejected`, `run_finished`, `error`.
Figures travel as fields (`done`, `failed`, `rows_per_s`, `cost_usd`, ...), never only inside the
human `message`, so a log collector can graph them without parsing text. Money is written as a
decimal string, so no float rounds it.

Log records never contain API keys (batchroute never holds one in a message) nor, by default,
prompt text: messages name rows by id and line, not by content.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["LogFormat", "configure_logging", "is_json_logging", "log_event", "run_id_var"]

LogFormat = Literal["text", "json"]

run_id_var: ContextVar[str | None] = ContextVar("batchroute_run_id", default=None)
"""The run id of the run in progress; the runner sets it, every log record carries it."""

_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_SEVERITY_NUMBER = {"DEBUG": 5, "INFO": 9, "WARNING": 13, "ERROR": 17, "CRITICAL": 21}
"""OpenTelemetry's severity numbers for Python's levels."""

_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}
"""OpenTelemetry's short names where they differ from Python's."""

_format: LogFormat = "text"


class _RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "run_id"):
            record.run_id = run_id_var.get()
        return True


def _default_event(record: logging.LogRecord) -> str:
    if record.levelno >= logging.ERROR:
        return "error"
    return "warning" if record.levelno >= logging.WARNING else "message"


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, severity, event, run_id, message, and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, object] = {
            "timestamp": stamp.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "severity_text": _SEVERITY_TEXT.get(record.levelname, record.levelname),
            "severity_number": _SEVERITY_NUMBER.get(record.levelname, 9),
            "event": getattr(record, "event", None) or _default_event(record),
            "logger": record.name,
            "run_id": getattr(record, "run_id", None),
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{stamp} batchroute: {level}{record.getMessage()}"


def configure_logging(*, log_format: LogFormat = "text", quiet: bool = False) -> None:
    """Send batchroute's log records to stderr in the chosen format (idempotent)."""
    global _format
    _format = log_format
    logger = logging.getLogger("batchroute")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    handler.addFilter(_RunIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    # A library's warning printed as plain text would break a JSON log: route it here too.
    logging.captureWarnings(log_format == "json")
    warnings_logger = logging.getLogger("py.warnings")
    for old in list(warnings_logger.handlers):
        warnings_logger.removeHandler(old)
    if log_format == "json":
        warnings_logger.addHandler(handler)
        warnings_logger.propagate = False


def is_json_logging() -> bool:
    """Whether `configure_logging` last chose JSON lines (the CLI then keeps stderr pure JSON)."""
    return _format == "json"


def log_event(
    logger: logging.Logger,
    event: str,
    message: str,
    *,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """Log `message` as a typed `event`; `fields` become JSON fields (text logs show `message`)."""
    logger.log(level, message, extra={"event": event, **fields})
