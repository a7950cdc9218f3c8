"""A MyTPE Pay sandbox for a local loop (`mytpe-relay sandbox`): the documented management API of both
generations, and a sender that delivers signed webhooks as MyTPE documents it.

- Secrets are `whsec_` + 48 hex characters, masked as `****…` + their last 10 characters, and a
  regenerated secret replaces the old one at once.
- Each delivery gets `attempts` tries (3), `backoff` seconds apart, doubling (4 s, then 8 s); each
  try is signed with the endpoint's secret at that moment, so a regeneration mid-retry shows.
- Events follow MyTPE's lifecycles (spec §6); with `disorder` some neighbours swap, with `repeat`
  some deliveries are sent twice (same delivery id).
- Every try and its answer is recorded (`GET /sandbox/attempts`), so a test can say what was lost.

The HTTP side (MyTPE's API, and the sandbox's own control routes) is in `sandbox_api.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets as random_secrets
import ssl
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from relay.mytpe import samples, signatures

MASK_VISIBLE = 10


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_secret() -> str:
    return "whsec_" + random_secrets.token_hex(24)


def mask(secret: str) -> str:
    return "*" * (len(secret) - MASK_VISIBLE) + secret[-MASK_VISIBLE:]


@dataclass
class Hook:
    """Where one instance (legacy) or one endpoint (new generation) is delivered, and with which secret."""

    id: str
    url: str | None
    secret: str | None = field(default=None, repr=False)
    events: list[str] = field(default_factory=list)
    description: str | None = None
    is_active: bool = True
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)

    def public(self, *, with_secret: bool = False) -> dict[str, Any]:
        item = {k: v for k, v in asdict(self).items() if k != "secret"}
        if with_secret:
            item["secret"] = self.secret
        return item


@dataclass
class Attempt:
    hook: str
    delivery_id: str
    event: str
    attempt: int
    status: int | str
    at: float


@dataclass
class Delivery:
    id: str
    hook: str
    event: str
    body: bytes = field(repr=False)
    status: str = "pending"
    attempts: int = 0
    created_at: str = field(default_factory=now)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": self.created_at,
        }


@dataclass
class Faults:
    """Faults of the management API, each for its next N requests whose `METHOD /path` contains `match`.

    stall_next: the request waits `stall_seconds` before it is applied (a client that gave up meanwhile
        finds it applied late). fail_next: answered `fail_status`, not applied.
    lose_next: applied, then its answer is lost: held `stall_seconds` (the client times out), or, with
        `lose_status`, replaced by that status (a gateway's 502/504).
    """

    fail_next: int = 0
    fail_status: int = 503
    stall_next: int = 0
    stall_seconds: float = 30.0
    lose_next: int = 0
    lose_status: int = 0
    match: str = ""

    def take(self, name: str, request_line: str) -> bool:
        """Whether fault `name` hits this request (and count it)."""
        left = getattr(self, name)
        if left <= 0 or self.match not in request_line:
            return False
        setattr(self, name, left - 1)
        return True


class Sandbox:
    def __init__(
        self,
        *,
        api_key: str = "sandbox-key",
        api_secret: str = "sandbox-secret",  # noqa: S107 - a local sandbox's default, documented
        attempts: int = 3,
        backoff: float = 4.0,
        request_timeout: float = 10.0,
        allow_http_webhooks: bool = True,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.attempts = attempts
        self.backoff = backoff
        self.request_timeout = request_timeout
        self.allow_http_webhooks = allow_http_webhooks
        self.instances: dict[str, Hook] = {}
        self.endpoints: dict[str, Hook] = {}
        self.deliveries: dict[str, Delivery] = {}
        self.log: list[Attempt] = []
        self.faults = Faults()
        self._tasks: set[asyncio.Task[None]] = set()
        self.background: set[asyncio.Task[None]] = set()

    def add_instance(self, instance_id: str) -> Hook:
        return self.instances.setdefault(instance_id, Hook(instance_id, None))

    # Delivering

    def hook(self, hook_id: str) -> Hook | None:
        return self.instances.get(hook_id) or self.endpoints.get(hook_id)

    def deliver(self, delivery: Delivery) -> None:
        self.deliveries[delivery.id] = delivery
        task = asyncio.create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: Delivery) -> None:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            hook = self.hook(delivery.hook)
            if hook is None or not hook.url or not hook.secret or not hook.is_active:
                delivery.status = "failed"
                return
            status = await self._post(hook.url, hook.secret, delivery)
            delivery.attempts += 1
            self.log.append(Attempt(hook.id, delivery.id, delivery.event, attempt, status, time.time()))
            if isinstance(status, int) and 200 <= status < 300:
                delivery.status = "succeeded"
                return
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        delivery.status = "failed"

    async def _post(self, url: str, secret: str, delivery: Delivery) -> int | str:
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "MytpePay-Webhook/1.0",
            "X-MytpePay-Signature": signatures.sign(secret, stamp, delivery.body),
            "X-MytpePay-Timestamp": stamp,
            "X-MytpePay-Event": delivery.event,
            "X-MytpePay-Delivery-Id": delivery.id,
        }
        try:
            async with asyncio.timeout(self.request_timeout):
                return await post(url, headers, delivery.body)
        except (OSError, TimeoutError, ValueError) as exc:
            return type(exc).__name__

    def emit(self, hook_id: str, count: int, *, seed: int, disorder: float, repeat: float) -> list[Delivery]:
        """`count` deliveries for `hook_id`, in lifecycles: an entity's events in MyTPE's order, mostly."""
        rng = random.Random(seed)  # noqa: S311 - sample data
        instance = hook_id if hook_id in self.instances else "abc123-def456"
        made: list[Delivery] = []
        while len(made) < count:
            entity_seed = rng.getrandbits(32)
            for event in samples.lifecycle(rng):
                delivery_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                body = samples.build(event, delivery_id=delivery_id, seed=entity_seed, instance=instance)
                made.append(Delivery(delivery_id, hook_id, event, body))
        made = made[:count]
        for index in range(len(made) - 1):
            if rng.random() < disorder:
                made[index], made[index + 1] = made[index + 1], made[index]
        twice = [d for d in made if rng.random() < repeat]
        return made + [Delivery(d.id, d.hook, d.event, d.body) for d in twice]

    async def run_emission(self, deliveries: list[Delivery], rate: float) -> None:
        for delivery in deliveries:
            self.deliver(delivery)
            await asyncio.sleep(1 / rate)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def post(url: str, headers: dict[str, str], body: bytes) -> int:
    """One HTTP/1.1 POST on a fresh connection; the status code. Enough for a sandbox's deliveries."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80)
    reader, writer = await asyncio.open_connection(host, port, ssl=ssl.create_default_context() if tls else None)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status_line = await reader.readline()
        fields = status_line.split(b" ", 2)
        if len(fields) < 2 or not fields[1].isdigit():
            raise ValueError("not an HTTP answer")
        await reader.read()  # the rest, until the relay closes
        return int(fields[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
