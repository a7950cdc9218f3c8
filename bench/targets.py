"""The apps the relay is measured against, served the way the relay is served.

    python bench/targets.py bare  --port P
    python bench/targets.py naive --port P --bootstrap HOST:PORT --secret whsec_...
    python bench/targets.py floor --port P --bootstrap HOST:PORT --secret whsec_...
    RELAY_...=... python bench/targets.py relay-plain --port P

`bare`: Starlette+uvicorn that reads the body and answers 200, the ceiling of the stack.
`naive`: what MyTPE's docs suggest, written plainly: verify the signature, parse the JSON, then
`send_and_wait` one record per request (the same durability as the relay: idempotent, acks=all).
`relay-plain`: the relay itself (memory or Redis dedupe, RELAY_* from the environment) served by uvicorn's
own httptools protocol instead of relay.http.server.GuardedHttpTools: an A/B of the header time and size
bounds and the BODY_RECEIVED extension, everything else as `mytpe-relay serve` configures it.
`floor`: the least a correct handler does, written plainly: verify, parse, then publish the body through
the relay's own publisher (relay.kafka: idempotent, acks=all, batched per partition). No dedupe, no
envelope, no metrics, no admission, no header bounds: what the relay spends above it is its features.
All use the relay's own uvicorn choices (event loop, HTTP parser), so only the handler differs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import uvicorn
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.http.app import create_app
from relay.http.server import HTTP_IMPLEMENTATION, LOOP_IMPLEMENTATION, server_config, tune_gc
from relay.kafka.publisher import KafkaPublisher
from relay.settings import Settings

ACCEPTED = b'{"status":"accepted"}'


def bare_app() -> Starlette:
    async def webhook(request: Request) -> Response:
        await request.body()
        return Response(b'{"status":"accepted"}', media_type="application/json")

    return Starlette(routes=[Route("/webhooks/mytpe", webhook, methods=["POST"])])


def verified(request: Request, body: bytes, key: bytes) -> bool:
    """MyTPE's signature over `timestamp.body`, within 5 minutes."""
    timestamp = request.headers.get("x-mytpepay-timestamp", "")
    signature = request.headers.get("x-mytpepay-signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
        return False
    expected = "sha256=" + hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def naive_app(bootstrap: str, secret: str) -> Starlette:
    key = secret.encode()
    producer: AIOKafkaProducer | None = None

    async def webhook(request: Request) -> Response:
        body = await request.body()
        if not verified(request, body, key):
            return JSONResponse({"error": "signature"}, status_code=401)
        event = orjson.loads(body)
        family = event["event"].split(".", 1)[0]
        entity = event["data"][family]["id"]
        assert producer is not None  # noqa: S101 - set by the lifespan before any request
        await producer.send_and_wait(f"mytpe.{family}", body, key=entity.encode())
        return JSONResponse({"status": "accepted"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal producer
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            yield
        finally:
            await producer.stop()

    return Starlette(routes=[Route("/webhooks/mytpe", webhook, methods=["POST"])], lifespan=lifespan)


def floor_app(bootstrap: str, secret: str) -> Starlette:
    key = secret.encode()
    headers = [("content-type", b"application/json")]
    publisher = KafkaPublisher(bootstrap_servers=[bootstrap], publish_timeout=10.0)

    async def webhook(request: Request) -> Response:
        body = await request.body()
        if not verified(request, body, key):
            return Response(b'{"error":"signature"}', status_code=401, media_type="application/json")
        event = orjson.loads(body)
        family = event["event"].split(".", 1)[0]
        entity = event["data"][family]["id"]
        await publisher.publish(f"mytpe.{family}", entity.encode(), body, headers)
        return Response(ACCEPTED, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await publisher.start(timeout=30)
        try:
            yield
        finally:
            await publisher.stop()

    return Starlette(routes=[Route("/webhooks/mytpe", webhook, methods=["POST"])], lifespan=lifespan)


def serve_relay_plain(port: int) -> None:
    """The relay's app and uvicorn configuration, with uvicorn's stock HttpToolsProtocol (bench only)."""
    settings = Settings.from_env({**os.environ, "RELAY_PORT": str(port)})
    config = server_config(create_app(settings), settings, http=HTTP_IMPLEMENTATION, log_level="warning")
    tune_gc()
    uvicorn.Server(config).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", choices=("bare", "naive", "floor", "relay-plain"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--secret", default="")
    args = parser.parse_args()
    if args.app == "relay-plain":
        serve_relay_plain(args.port)
        return
    if args.app == "bare":
        app = bare_app()
    else:
        app = (naive_app if args.app == "naive" else floor_app)(args.bootstrap, args.secret)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop=LOOP_IMPLEMENTATION,
        http=HTTP_IMPLEMENTATION,
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
