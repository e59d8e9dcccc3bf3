"""Log output: readable text lines (`make run`) or one JSON object per line (REPLENISH_LOG_FORMAT=json, for a log
collector), both carrying the correlation id of the work that logged them.

A small formatter of our own rather than a library: the fields are few and fixed, and json.dumps does the rest.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

from replenish.observability import correlation

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(correlation)s"
# Libraries that log every connection or job run at INFO; the platform's own lines stay readable.
QUIET_LOGGERS = ("amqtt", "apscheduler", "transitions", "alembic.runtime.plugins")


class CorrelationFilter(logging.Filter):
    """Stamps each record with the correlation id of the code that logged it. On the handler, not on a logger: a
    logger's filters see only the records logged on that very logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        correlation_id = correlation.current()
        record.correlation_id = correlation_id
        record.correlation = f" [cid={correlation_id}]" if correlation_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line. Keys: ts (UTC, ISO 8601), level, logger, message, correlation_id
    (null when none), thread; exception (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None),
            "thread": record.threadName,
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        # default=str: an argument that is not JSON (a datetime, a Decimal) must not lose the line.
        return json.dumps(document, ensure_ascii=False, default=str)


def make_handler(log_format: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(*, level: str, log_format: LogFormat) -> None:
    """The process's logging: one handler on the root logger, replacing any there."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(make_handler(log_format))
    root.setLevel(level.upper())
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
