"""One logging configuration shared by relay.* and uvicorn.* loggers, as JSON lines or plain text.

JSON lines carry `ts`, `level`, `logger`, `msg` and the structured fields a call passes in `extra`
(for the per-request line: `delivery_id`, `outcome`, `http_status`, `topic`, `partition`, `offset`...).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

FORMATS = ("json", "text")

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Fields from `extra` are kept as they are; other values become strings."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class ClosedStreams(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" for an OSError (an SSL alert, a reset): in Python
    3.11 a stream's `closed` future holds its connection's error, and when the garbage collector finalizes that
    future before its protocol (which would read it), asyncio logs the error again, with a traceback. The
    connection's user has had it (aiokafka closes the connection; the relay says why a start failed, in one line);
    a failed start with a refused client certificate printed one such traceback in CI. Any other exception left
    unread is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        unread = record.name == "asyncio" and record.getMessage().startswith("Future exception was never retrieved")
        return not (unread and isinstance(error, OSError))


def build_log_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """A dictConfig for `level` and `fmt` (`json` or `text`). Kafka's client logs at WARNING and above."""
    formatters: dict[str, Any] = {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": JsonFormatter},
    }
    handler = {
        "class": "logging.StreamHandler",
        "formatter": fmt,
        "stream": "ext://sys.stderr",
        "filters": ["closed_streams"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {fmt: formatters[fmt]},
        "filters": {"closed_streams": {"()": ClosedStreams}},
        "handlers": {"stderr": handler},
        "loggers": {
            "relay": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            # Never below WARNING, whatever `level` is: aiokafka.conn's DEBUG lines print every request,
            # the SASL authentication bytes among them (a PLAIN password in clear).
            "aiokafka": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            # The OTLP exporter says when spans could not be sent (tracing on); it never blocks a request.
            "opentelemetry": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            # The event loop's own reports (an exception nobody read), in this format (ClosedStreams).
            "asyncio": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }
