"""Fault-injection harness: relay processes, a MyTPE-like sender, and the reconciliation report."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

from relay.mytpe import samples
from tests.helpers import signed_headers
from tests.servers import free_port, read_topic, wait_ready

REPORTS: list[ScenarioReport] = []


class RelayProcess:
    """`python -m relay serve` on a fixed port, restartable, with its log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**env, "RELAY_PORT": str(self.port), "RELAY_HOST": "127.0.0.1"}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_ready(self.url, self.process, why_exited=lambda: self.log.read_text()[-2000:], timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else 0
        process.send_signal(sig)
        code = process.wait(timeout)
        self.process = None
        return code


@dataclass
class Delivery:
    delivery_id: str
    event: str
    body: bytes
    statuses: list[int | str] = field(default_factory=list)
    signed_at: list[float] = field(default_factory=list)
    """`time.monotonic()` as each attempt was signed (MytpeSender): which secret signed it, beside a change."""

    @property
    def acked(self) -> bool:
        return any(isinstance(s, int) and 200 <= s < 300 for s in self.statuses)


def make_deliveries(count: int, seed: int) -> list[Delivery]:
    rng = random.Random(seed)
    result = []
    for index in range(count):
        event = samples.EVENTS[index % len(samples.EVENTS)]
        delivery_id = f"fault-{seed}-{index:05d}"
        result.append(
            Delivery(delivery_id, event, samples.build(event, delivery_id=delivery_id, seed=rng.randrange(2**32)))
        )
    return result


class Sender:
    """Sends like MyTPE: signs at send time, retries non-2xx and connection failures with backoff."""

    def __init__(self, url: str, *, attempts: int = 10, max_backoff: float = 4.0, request_timeout: float = 20) -> None:
        self.url = url
        self.attempts = attempts
        self.max_backoff = max_backoff
        self.timeout = request_timeout
        self.requests = 0
        self.stopped = False

    def acked(self, deliveries: list[Delivery]) -> int:
        return sum(d.acked for d in deliveries)

    async def deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        backoff = 0.5
        for attempt in range(self.attempts):
            if self.stopped:  # the load balancer no longer routes here
                return
            status = await self.post_once(client, delivery)
            if isinstance(status, int) and 200 <= status < 300:
                return
            if attempt + 1 < self.attempts:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def post_once(self, client: httpx.AsyncClient, delivery: Delivery) -> int | str:
        headers = signed_headers(
            delivery.body, timestamp=int(time.time()), delivery_id=delivery.delivery_id, event=delivery.event
        )
        self.requests += 1
        try:
            response = await client.post(self.url, content=delivery.body, headers=headers, timeout=self.timeout)
            status: int | str = response.status_code
        except httpx.TransportError as exc:
            status = type(exc).__name__
        delivery.statuses.append(status)
        return status

    async def run(self, deliveries: list[Delivery], *, concurrency: int, deadline: float) -> None:
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        for delivery in deliveries:
            queue.put_nowait(delivery)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits) as client:

            async def worker() -> None:
                while not queue.empty() and time.monotonic() < deadline:
                    await self.deliver(client, queue.get_nowait())

            await asyncio.gather(*(worker() for _ in range(concurrency)))


class MytpeSender(Sender):
    """MyTPE as documented: 3 attempts with exponential backoff (4 s, then 8 s), each one signed with the
    secret the sender holds at that moment (`secret` may change under it: a regeneration); then it gives up."""

    def __init__(self, url: str, secret: str, *, backoff: tuple[float, ...] = (4.0, 8.0), timeout: float = 20) -> None:
        super().__init__(url, attempts=len(backoff) + 1, request_timeout=timeout)
        self.secret = secret
        self.backoff = backoff

    async def deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        for attempt in range(self.attempts):
            status = await self.post_once(client, delivery)
            if isinstance(status, int) and 200 <= status < 300:
                return
            if attempt < len(self.backoff):
                await asyncio.sleep(self.backoff[attempt])

    async def post_once(self, client: httpx.AsyncClient, delivery: Delivery) -> int | str:
        headers = signed_headers(
            delivery.body,
            secret=self.secret,
            timestamp=int(time.time()),
            delivery_id=delivery.delivery_id,
            event=delivery.event,
        )
        delivery.signed_at.append(time.monotonic())
        self.requests += 1
        try:
            response = await client.post(self.url, content=delivery.body, headers=headers, timeout=self.timeout)
            status: int | str = response.status_code
        except httpx.TransportError as exc:
            status = type(exc).__name__
        delivery.statuses.append(status)
        return status

    async def paced(self, deliveries: list[Delivery], *, per_second: float) -> None:
        """Each delivery started on schedule (as MyTPE's events happen), all retried concurrently."""
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits) as client:
            tasks = []
            for delivery in deliveries:
                tasks.append(asyncio.create_task(self.deliver(client, delivery)))
                await asyncio.sleep(1 / per_second)
            await asyncio.gather(*tasks)


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


@dataclass
class ScenarioReport:
    name: str
    deliveries: int
    requests: int
    ok_2xx: int
    status_503: int
    other: int
    acknowledged: int
    events_in_kafka: int
    acknowledged_missing: int
    duplicates_of_acknowledged: int
    never_in_kafka: int = 0
    """Deliveries (acknowledged or not) of which Kafka holds no record: lost, once the sender gave up."""

    def row(self) -> str:
        return (
            f"| {self.name} | {self.deliveries} | {self.requests} | {self.ok_2xx} | {self.status_503} | "
            f"{self.other} | {self.acknowledged} | {self.events_in_kafka} | {self.acknowledged_missing} | "
            f"{self.duplicates_of_acknowledged} | {self.never_in_kafka} |"
        )


HEADER = (
    "| scenario | deliveries | requests | 2xx | 503 | other | acknowledged | events in Kafka "
    "| acknowledged but missing | duplicates of acknowledged | never in Kafka |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


async def reconcile(
    name: str, bootstrap: str, prefix: str, deliveries: list[Delivery], sender: Sender
) -> ScenarioReport:
    """Read every relay topic to its end and compare with what the sender saw acknowledged."""
    ids: Counter[str] = Counter()
    events = 0
    for family in ("transaction", "pay_link", "dlq"):
        for record in await read_topic(bootstrap, f"{prefix}.{family}"):
            events += 1
            ids[json.loads(record.value)["id"] if family != "dlq" else (record.key or b"").decode()] += 1
    statuses = [s for d in deliveries for s in d.statuses]
    acked = [d.delivery_id for d in deliveries if d.acked]
    report = ScenarioReport(
        name=name,
        deliveries=len(deliveries),
        requests=sender.requests,
        ok_2xx=sum(1 for s in statuses if isinstance(s, int) and 200 <= s < 300),
        status_503=sum(1 for s in statuses if s == 503),
        other=sum(1 for s in statuses if not (isinstance(s, int) and (200 <= s < 300 or s == 503))),
        acknowledged=len(acked),
        events_in_kafka=events,
        acknowledged_missing=sum(1 for i in acked if ids[i] == 0),
        duplicates_of_acknowledged=sum(ids[i] - 1 for i in acked if ids[i] > 1),
        never_in_kafka=sum(1 for d in deliveries if ids[d.delivery_id] == 0),
    )
    REPORTS.append(report)
    return report
