"""The two apps the relay is measured against, served the way the relay is served.

    python bench/targets.py bare  --port P
    python bench/targets.py naive --port P --bootstrap HOST:PORT --secret whsec_...

`bare`: Starlette+uvicorn that reads the body and answers 200, the ceiling of the stack.
`naive`: what MyTPE's docs suggest, written plainly: verify the signature, parse the JSON, then
`send_and_wait` one record per request (the same durability as the relay: idempotent, acks=all).
Both use the relay's own uvicorn choices (event loop, HTTP parser), so only the handler differs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
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

from relay.http.server import HTTP_IMPLEMENTATION, LOOP_IMPLEMENTATION


def bare_app() -> Starlette:
    async def webhook(request: Request) -> Response:
        await request.body()
        return Response(b'{"status":"accepted"}', media_type="application/json")

    return Starlette(routes=[Route("/webhooks/mytpe", webhook, methods=["POST"])])


def naive_app(bootstrap: str, secret: str) -> Starlette:
    key = secret.encode()
    producer: AIOKafkaProducer | None = None

    async def webhook(request: Request) -> Response:
        body = await request.body()
        timestamp = request.headers.get("x-mytpepay-timestamp", "")
        signature = request.headers.get("x-mytpepay-signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            return JSONResponse({"error": "stale"}, status_code=401)
        expected = "sha256=" + hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", choices=("bare", "naive"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--secret", default="")
    args = parser.parse_args()
    app = bare_app() if args.app == "bare" else naive_app(args.bootstrap, args.secret)
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
