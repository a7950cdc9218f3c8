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


def build_log_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """A dictConfig for `level` and `fmt` (`json` or `text`). Kafka's client logs at WARNING and above."""
    formatters: dict[str, Any] = {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": JsonFormatter},
    }
    handler = {"class": "logging.StreamHandler", "formatter": fmt, "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {fmt: formatters[fmt]},
        "handlers": {"stderr": handler},
        "loggers": {
            "relay": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            # Never below WARNING, whatever `level` is: aiokafka.conn's DEBUG lines print every request,
            # the SASL authentication bytes among them (a PLAIN password in clear).
            "aiokafka": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            # The OTLP exporter says when spans could not be sent (tracing on); it never blocks a request.
            "opentelemetry": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }
