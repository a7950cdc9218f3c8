"""JSON log lines: one object per line, structured fields from `extra`, nothing secret."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import logging.config
import ssl
from collections.abc import Iterator

import orjson
import pytest

from relay.http.webhook import log_request
from relay.logs import build_log_config
from relay.settings import ConfigError, Settings
from tests.helpers import SECRET


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The relay's JSON configuration, writing to a buffer; the loggers it touches are put back after."""
    stream = io.StringIO()
    config = build_log_config("DEBUG", "json")
    config["handlers"]["stderr"]["stream"] = stream
    loggers = [logging.getLogger(name) for name in config["loggers"]]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    logging.config.dictConfig(config)
    yield stream
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def test_request_line_carries_where_the_record_is(json_lines: io.StringIO) -> None:
    log_request(
        logging.DEBUG, "accepted", 200, 0.0123456, delivery_id="d-1", topic="mytpe.transaction", partition=2, offset=41
    )
    line = orjson.loads(json_lines.getvalue().splitlines()[-1])
    assert line["level"] == "debug"
    assert line["logger"] == "relay.requests"
    assert line["msg"] == "200 accepted delivery=d-1 -> mytpe.transaction[2]@41"
    assert {k: line[k] for k in ("delivery_id", "outcome", "http_status", "topic", "partition", "offset")} == {
        "delivery_id": "d-1",
        "outcome": "accepted",
        "http_status": 200,
        "topic": "mytpe.transaction",
        "partition": 2,
        "offset": 41,
    }
    assert line["duration_ms"] == 12.346
    assert line["ts"].endswith("+00:00")


def test_lifecycle_lines_and_exceptions_are_single_json_objects(json_lines: io.StringIO) -> None:
    logger = logging.getLogger("relay.app")
    logger.info("relay ready: %d secret(s)", 2)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("unexpected")
    lines = json_lines.getvalue().splitlines()
    assert len(lines) == 2
    ready, failed = (orjson.loads(line) for line in lines)
    assert (ready["level"], ready["msg"]) == ("info", "relay ready: 2 secret(s)")
    assert failed["level"] == "error"
    assert "RuntimeError: boom" in failed["exc"]


def test_request_lines_are_skipped_below_their_level(json_lines: io.StringIO) -> None:
    logging.getLogger("relay").setLevel(logging.INFO)
    log_request(logging.DEBUG, "accepted", 200, 0.001, delivery_id="d-2")
    assert json_lines.getvalue() == ""


def test_log_format_setting() -> None:
    base = {"RELAY_MYTPE_SECRETS": SECRET}
    assert Settings.from_env(base).log_format == "text"
    assert Settings.from_env({**base, "RELAY_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="RELAY_LOG_FORMAT"):
        Settings.from_env({**base, "RELAY_LOG_FORMAT": "xml"})


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING", "ERROR"])
def test_kafkas_client_never_logs_below_warning(level: str) -> None:
    """aiokafka.conn logs each request at DEBUG, SASL authentication bytes included: a PLAIN password in clear.
    tests/integration/test_kafka_security.py saw it, with the logger forced to DEBUG."""
    config = build_log_config(level, "json")
    assert config["loggers"]["aiokafka"]["level"] == "WARNING"
    assert config["loggers"]["aiokafka"]["propagate"] is False, "the root logger's level must not apply"


def test_a_streams_closed_future_holding_its_connection_error_is_not_logged_again(json_lines: io.StringIO) -> None:
    """CI saw a failed start with a refused client certificate print a traceback beside its one line: Python 3.11's
    stream protocol keeps the connection's SSL error in a `closed` future, which asyncio reports as never retrieved
    when the collector finalizes it before the protocol. Such an OSError is dropped; any other unread error is not."""
    loop = asyncio.new_event_loop()
    try:
        for error in (
            ssl.SSLError(1, "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate"),
            KeyError("bug"),
        ):
            future = loop.create_future()
            future.set_exception(error)
            del future
        gc.collect()
    finally:
        loop.close()
    lines = [orjson.loads(line) for line in json_lines.getvalue().splitlines()]
    assert [line["msg"].splitlines()[0] for line in lines] == ["Future exception was never retrieved"]
    assert "KeyError" in str(lines[0]) and "SSLV3_ALERT" not in json_lines.getvalue()
