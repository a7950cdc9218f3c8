"""HTTP endpoints: the webhook, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from relay.errors import BodyTimeout, BodyTooLarge, ClientGone
from relay.pipeline import Relay
from relay.publisher import Ack
from relay.responses import ORJSONResponse

logger = logging.getLogger("relay.requests")


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The raw body: 413 as soon as it is known to exceed `limit` bytes, 408 if not complete in `timeout`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone from None
    except TimeoutError:
        raise BodyTimeout(timeout) from None
    return b"".join(chunks)


async def receive_webhook(request: Request) -> Response:
    relay: Relay = request.state.relay
    request.state.started = time.perf_counter()
    with relay.admission():
        body = await read_body(request, relay.settings.max_body_bytes, relay.settings.body_timeout_seconds)
        outcome = await relay.handle(request.headers, body)
    content: dict[str, Any] = {"status": outcome.status, "delivery_id": outcome.delivery_id}
    if outcome.reason is not None:
        content["reason"] = outcome.reason
    level = logging.WARNING if outcome.status == "quarantined" else logging.DEBUG
    answered(
        request, outcome.status, 200, level, ack=outcome.ack, delivery_id=outcome.delivery_id, reason=outcome.reason
    )
    return ORJSONResponse(content)


def answered(
    request: Request, outcome: str, http_status: int, level: int, *, ack: Ack | None = None, **fields: Any
) -> None:
    """The one account of a finished webhook request: its outcome count, its duration and its log line."""
    relay: Relay = request.state.relay
    relay.metrics.requests.labels(outcome).inc()
    started = getattr(request.state, "started", None)
    elapsed = None if started is None else time.perf_counter() - started
    if elapsed is not None:
        relay.metrics.request_duration.observe(elapsed)
    if logger.isEnabledFor(level):
        if ack is not None:
            fields.update(topic=ack.topic, partition=ack.partition, offset=ack.offset)
        log_request(level, outcome, http_status, elapsed, **fields)


def log_request(level: int, outcome: str, http_status: int, elapsed: float | None, **fields: Any) -> None:
    """The one log line per webhook request: its outcome and, once published, where the record is."""
    if not logger.isEnabledFor(level):
        return
    extra = {k: v for k, v in fields.items() if v not in (None, "")}
    duration_ms = None if elapsed is None else round(elapsed * 1000, 3)
    extra.update(outcome=outcome, http_status=http_status, duration_ms=duration_ms)
    where = f" -> {extra['topic']}[{extra['partition']}]@{extra['offset']}" if "topic" in extra else ""
    logger.log(level, "%d %s delivery=%s%s", http_status, outcome, extra.get("delivery_id", "-"), where, extra=extra)


async def healthz(request: Request) -> Response:
    return ORJSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    relay: Relay = request.state.relay
    kafka, dedupe = await asyncio.gather(relay.publisher.ping(), relay.dedupe.ping())
    ready = kafka and (dedupe or relay.settings.dedupe_fail_open) and not request.app.state.stopping
    relay.metrics.ready.set(1 if ready else 0)
    checks = {"kafka": kafka, "dedupe": dedupe, "stopping": request.app.state.stopping}
    return ORJSONResponse({"status": "ready" if ready else "not_ready", **checks}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    relay: Relay = request.state.relay
    return Response(generate_latest(relay.metrics.registry), media_type=CONTENT_TYPE_LATEST)
