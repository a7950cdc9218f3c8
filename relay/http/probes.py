"""HTTP endpoints besides the webhook (`webhook.py`): health, readiness and metrics."""

from __future__ import annotations

import asyncio

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response

from relay.http.responses import ORJSONResponse
from relay.metrics import Metrics
from relay.settings import Settings
from relay.spool.spool import Spool
from relay.types import DedupeStore, Publisher


async def healthz(request: Request) -> Response:
    return ORJSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    publisher: Publisher = request.state.publisher
    store: DedupeStore = request.state.dedupe
    spool: Spool | None = request.state.spool
    settings: Settings = request.state.settings
    kafka, dedupe = await asyncio.gather(publisher.ping(), store.ping())
    checks: dict[str, bool] = {"kafka": kafka, "dedupe": dedupe, "stopping": request.app.state.stopping}
    durable = kafka
    reasons: dict[str, str] = {}
    if spool is not None:  # with a spool, Kafka down is survivable while the spool has room
        checks["spool"] = spool.has_room(settings.max_body_bytes) and spool.problem is None
        durable = kafka or checks["spool"]
        if spool.problem is not None:  # e.g. acknowledged records it cannot delete: never a republish loop
            durable = False
            reasons["spool_problem"] = spool.problem
    ready = durable and (dedupe or settings.dedupe_fail_open) and not request.app.state.stopping
    relay_metrics: Metrics = request.state.metrics
    relay_metrics.ready.set(1 if ready else 0)
    body = {"status": "ready" if ready else "not_ready", **checks, **reasons}
    return ORJSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    """The classic text format, or OpenMetrics (with the latency exemplars: trace ids) to a scraper whose
    Accept header asks for it, as Prometheus does when exemplar storage is on."""
    relay_metrics: Metrics = request.state.metrics
    encode, media_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(relay_metrics.registry), headers={"content-type": media_type})
