"""HTTP endpoints besides the webhook (`webhook.py`): health, readiness and metrics."""

from __future__ import annotations

import asyncio

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response

from relay.http.responses import ORJSONResponse
from relay.pipeline import Relay


async def healthz(request: Request) -> Response:
    return ORJSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    relay: Relay = request.state.relay
    kafka, dedupe = await asyncio.gather(relay.publisher.ping(), relay.dedupe.ping())
    checks: dict[str, bool] = {"kafka": kafka, "dedupe": dedupe, "stopping": request.app.state.stopping}
    durable = kafka
    reasons: dict[str, str] = {}
    if relay.spooler is not None:  # with a spool, Kafka down is survivable while the spool has room
        spool = relay.spooler.spool
        checks["spool"] = spool.room_for(relay.settings.max_body_bytes) and spool.problem is None
        durable = kafka or checks["spool"]
        if spool.problem is not None:  # e.g. acknowledged records it cannot delete: never a republish loop
            durable = False
            reasons["spool_problem"] = spool.problem
    ready = durable and (dedupe or relay.settings.dedupe_fail_open) and not request.app.state.stopping
    relay.metrics.ready.set(1 if ready else 0)
    body = {"status": "ready" if ready else "not_ready", **checks, **reasons}
    return ORJSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    """The classic text format, or OpenMetrics (with the latency exemplars: trace ids) to a scraper whose
    Accept header asks for it, as Prometheus does when exemplar storage is on."""
    relay: Relay = request.state.relay
    encode, media_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(relay.metrics.registry), headers={"content-type": media_type})
