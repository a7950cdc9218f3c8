"""The durable spool against a real broker and real relay processes: a Kafka outage longer than the
producer's delivery timeout under a MyTPE-like sender, SIGKILL while spooling and while draining, and a
full spool. Every acknowledged delivery is read back from Kafka."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest
from localkafka import LocalKafka

from relay.metrics import Metrics
from relay.spool.spool import Spool
from relay.spool.store import Pending
from tests.conftest import FIGURES
from tests.faults.harness import REPORTS, Delivery, MytpeSender, RelayProcess, Sender, make_deliveries, reconcile
from tests.helpers import SECRET
from tests.servers import read_topic

pytestmark = pytest.mark.faults
SPOOL_FULL = 'mytpe_relay_publish_errors_total{reason="spool_full"}'


def spooled_relay(factory: Callable[..., RelayProcess], directory: Path, **extra: str) -> RelayProcess:
    return factory(
        RELAY_SPOOL_DIR=str(directory),
        RELAY_SPOOL_AFTER_SECONDS="1",
        RELAY_PUBLISH_TIMEOUT_SECONDS="3",
        RELAY_KAFKA_DELIVERY_TIMEOUT_SECONDS="8",
        RELAY_STARTUP_TIMEOUT_SECONDS="3",
        **extra,
    )


async def kafka_ids(broker: LocalKafka, prefix: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    for family in ("transaction", "pay_link", "dlq"):
        for record in await read_topic(broker.bootstrap, f"{prefix}.{family}"):
            seen[json.loads(record.value)["id"] if family != "dlq" else (record.key or b"").decode()] += 1
    return seen


async def spool_empty(relay: RelayProcess, seconds: float) -> None:
    for _ in range(int(seconds / 0.2)):  # bounded
        text = httpx.get(f"{relay.url}/metrics").text
        if "mytpe_relay_spool_entries 0.0" in text:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the spool did not drain")


async def test_outage_longer_than_the_delivery_timeout_loses_nothing(
    broker: LocalKafka, relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    relay = spooled_relay(relay_factory, tmp_path / "spool")
    await asyncio.to_thread(relay.start)
    deliveries = make_deliveries(200, seed=18)
    sender = MytpeSender(f"{relay.url}/webhooks/mytpe", relay.env["RELAY_MYTPE_SECRETS"])
    load = asyncio.create_task(sender.paced(deliveries, per_second=10))
    await asyncio.sleep(5)
    await asyncio.to_thread(broker.stop)
    await asyncio.sleep(15)  # longer than the producer's delivery timeout (8 s) and MyTPE's retries (12 s)
    await asyncio.to_thread(broker.start)
    await load
    await spool_empty(relay, 60)
    prefix = relay.env["RELAY_TOPIC_PREFIX"]
    report = await reconcile(
        "Kafka down 15 s > delivery timeout 8 s, spool on, MyTPE-like sender",
        broker.bootstrap,
        prefix,
        deliveries,
        sender,
    )
    seen = await kafka_ids(broker, prefix)
    assert report.acknowledged == len(deliveries), "every delivery acknowledged (spooled during the outage)"
    assert report.acknowledged_missing == 0 and report.never_in_kafka == 0
    assert [d.delivery_id for d in deliveries if seen[d.delivery_id] > 1] == []


BACKLOG = 2_000  # rows the spool holds before each kill with Kafka back, on BACKLOG_KEYS keys
BACKLOG_KEYS = 4  # a drain pass takes one row per key: 2,000 rows on 4 keys take 500 passes, each marked and sent


def backlog_rows(directory: Path) -> int:
    """The backlog's rows in the spool file (no relay on it; after a SIGKILL: what the killed relay left)."""
    db = sqlite3.connect(directory / "spool.db")
    try:
        found = db.execute("SELECT count(*) FROM spool WHERE substr(key, 1, 8) = ?", (b"backlog-",))
        return int(found.fetchone()[0])
    finally:
        db.close()


async def top_up(directory: Path, topic: str, run: int) -> list[str]:
    """Rows put into the stopped relay's spool (by the Spool itself) until its backlog holds BACKLOG: an outage's
    backlog on a few busy keys, so that a drain is still under way seconds after it started. Their ids."""
    ids = [f"backlog-{run}-{n}" for n in range(BACKLOG - await asyncio.to_thread(backlog_rows, directory))]
    spool = Spool(directory, max_bytes=1 << 30, metrics=Metrics())
    await spool.open()
    try:
        headers = [("content-type", b"application/json")]
        keys = [b"backlog-%d" % (n % BACKLOG_KEYS) for n in range(len(ids))]
        values = [json.dumps({"id": i}).encode() for i in ids]
        await asyncio.gather(*(spool.put(Pending(topic, k, v, headers)) for k, v in zip(keys, values, strict=True)))
    finally:
        await spool.close()
    return ids


async def drain_under_way(relay: RelayProcess, seconds: float) -> None:
    """Until this relay has drained a record: Kafka is back and the spool's row count is going down."""
    for _ in range(int(seconds / 0.05)):  # bounded
        if _metric(relay, "mytpe_relay_spool_drained_total") >= 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the relay did not start draining its spool")


@pytest.mark.timeout(600)  # its bounded waits (60 s per drain start, 120 s for the last drain) exceed 180 s
async def test_sigkill_while_spooling_and_while_draining(
    broker: LocalKafka, relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """20 runs on one spool directory: 10 killed while Kafka is down, 10 while the spool drains (Kafka back, a
    backlog of BACKLOG rows: each kill once the relay drained a record; the rows it left are counted)."""
    rng = random.Random(20)
    directory = tmp_path / "spool"
    prefix = ""
    deliveries: list[Delivery] = []
    backlog: list[str] = []
    sender = Sender("", attempts=1)
    interrupted = draining = 0
    left: list[int] = []
    check = {"RELAY_SPOOL_RECOVERY_CHECK": "true"}  # a pass in flight at a kill is not drained again
    await asyncio.to_thread(broker.stop)
    for run in range(20):
        if run == 10:
            await asyncio.to_thread(broker.start)
        if run >= 10:  # no relay on the spool: it was killed
            backlog += await top_up(directory, f"{prefix}.transaction", run)
        relay = spooled_relay(relay_factory, directory, **check, **({"RELAY_TOPIC_PREFIX": prefix} if prefix else {}))
        prefix = relay.env["RELAY_TOPIC_PREFIX"]
        await asyncio.to_thread(relay.start)
        if run >= 10:
            await drain_under_way(relay, 60)
        sender.url = f"{relay.url}/webhooks/mytpe"
        batch = make_deliveries(300, seed=1000 + run)
        for delivery in batch:
            delivery.delivery_id = f"kill-{run}-{delivery.delivery_id}"
            delivery.body = delivery.body.replace(b"fault-", b"kill-%d-fault-" % run)
        deliveries += batch
        load = asyncio.create_task(sender.run(batch, concurrency=16, deadline=time.monotonic() + 20))
        wanted = rng.randint(1, 100)  # kill once this many are answered: mid-load, at a random point
        for _ in range(2000):  # bounded: 20 s
            if sum(d.acked for d in batch) >= wanted or load.done():
                break
            await asyncio.sleep(0.01)
        relay.stop(sig=signal.SIGKILL)
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        interrupted += sum(d.acked for d in batch) < len(batch)
        if run >= 10:  # it had drained a record: did it leave some of the backlog, i.e. die mid-drain?
            left.append(await asyncio.to_thread(backlog_rows, directory))
            draining += left[-1] > 0
    FIGURES.append(
        f"relay SIGKILLed x20: {draining} of the 10 kills with Kafka back landed while the spool drained"
        f" (backlog rows left at each: {', '.join(map(str, left))}; {len(backlog)} backlog rows put in all)"
    )
    final = spooled_relay(relay_factory, directory, RELAY_TOPIC_PREFIX=prefix, **check)
    await asyncio.to_thread(final.start)
    await spool_empty(final, 120)
    report = await reconcile(
        f"relay SIGKILLed x20, while spooling (Kafka down) and while draining (a backlog of {BACKLOG:,} rows)",
        broker.bootstrap,
        prefix,
        deliveries,
        sender,
    )
    seen = await kafka_ids(broker, prefix)
    assert interrupted == 20, "each kill must land while deliveries are in flight"
    assert draining == 10, f"a kill landed after the drain ({left} backlog rows left): the scenario did not test it"
    assert report.acknowledged > 0
    assert report.acknowledged_missing == 0, "an acknowledged delivery is missing from Kafka"
    assert report.duplicates_of_acknowledged <= report.acknowledged * 0.02, "the recovery check drops a killed pass"
    twice = sum(seen[i] - 1 for i in backlog if seen[i] > 1)
    FIGURES.append(f"the backlog's {len(backlog)} rows: {sum(1 for i in backlog if seen[i])} in Kafka, {twice} twice")
    assert [i for i in backlog if not seen[i]] == [], "a spooled record is missing from Kafka"
    assert twice <= len(backlog) * 0.02, "the recovery check drops a killed pass"


def _metric(relay: RelayProcess, name: str) -> float:
    for line in httpx.get(f"{relay.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


async def drained(relay: RelayProcess, target: int, seconds: float) -> None:
    for _ in range(int(seconds / 0.01)):  # bounded
        if _metric(relay, "mytpe_relay_spool_drained_total") >= target:
            return
        await asyncio.sleep(0.01)


def left_at_exit(relay: RelayProcess) -> int:
    """The records the relay said it left in the spool when it stopped (0 when it said nothing)."""
    found = re.findall(r"(\d+) record\(s\) left in the spool", relay.log.read_text())
    return int(found[-1]) if found else 0


async def test_sigterm_while_draining_writes_no_duplicate(
    broker: LocalKafka, relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """Kafka down: 10,000 deliveries spooled. Twice: Kafka comes back, and once the relay drained a record
    it is stopped (SIGTERM; RELAY_SPOOL_DRAIN_SECONDS=0: only the pass in flight settles), then started
    again on the same spool while Kafka is down (RELAY_SHUTDOWN_DELAY_SECONDS=0: the drainer does not go on
    while the load balancer lets go). Each stop must land mid-drain: records left at exit. Between the first
    drained record and the drainer's stop, the drain goes on: 1,600 to 3,000 records in the runs seen (a CI
    run with 5,000 spooled drained 2,800 at the first stop, and all 2,200 left at the second), so the
    backlog is more than three times that."""
    directory = tmp_path / "spool"
    drain = {"RELAY_SPOOL_DRAIN_SECONDS": "0", "RELAY_SHUTDOWN_DELAY_SECONDS": "0"}
    await asyncio.to_thread(broker.stop)
    relay = spooled_relay(relay_factory, directory, **drain)
    prefix = relay.env["RELAY_TOPIC_PREFIX"]
    await asyncio.to_thread(relay.start)
    deliveries = make_deliveries(10_000, seed=77)
    sender = Sender(f"{relay.url}/webhooks/mytpe", attempts=5)
    await sender.run(deliveries, concurrency=16, deadline=time.monotonic() + 90)
    assert sender.acked(deliveries) == len(deliveries), "every delivery spooled while Kafka is down"
    left = []
    for _ in range(2):  # SIGTERM as soon as this process drained something: it drains thousands a second
        await asyncio.to_thread(broker.start)
        await drained(relay, 1, 30)
        assert await asyncio.to_thread(relay.stop) == 0
        left.append(left_at_exit(relay))
        await asyncio.to_thread(broker.stop)  # so the next relay does not drain it all before it is ready
        relay = spooled_relay(relay_factory, directory, RELAY_TOPIC_PREFIX=prefix, **drain)
        await asyncio.to_thread(relay.start)
    await asyncio.to_thread(broker.start)
    await spool_empty(relay, 60)
    name = f"relay stopped (SIGTERM) twice while the spool drains ({' and '.join(map(str, left))} left at exit)"
    report = await reconcile(name, broker.bootstrap, prefix, deliveries, sender)
    assert all(n > 0 for n in left), f"each stop must land mid-drain: {left} left at exit"
    assert report.acknowledged_missing == 0
    assert report.duplicates_of_acknowledged == 0


async def test_a_full_spool_answers_503_and_loses_nothing(
    broker: LocalKafka, relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    # a body bound the 30 kB cap holds (RELAY_SPOOL_MAX_BYTES below it is refused: /readyz asks room for one)
    relay = spooled_relay(
        relay_factory, tmp_path / "spool", RELAY_SPOOL_MAX_BYTES="30000", RELAY_MAX_BODY_BYTES="16384"
    )
    await asyncio.to_thread(relay.start)
    await asyncio.to_thread(broker.stop)
    deliveries = make_deliveries(60, seed=60)
    sender = Sender(f"{relay.url}/webhooks/mytpe", attempts=30, max_backoff=2.0)
    load = asyncio.create_task(sender.run(deliveries, concurrency=4, deadline=time.monotonic() + 90))
    full = ""
    for _ in range(300):  # bounded: until the spool is full
        full = httpx.get(f"{relay.url}/metrics").text
        if f"{SPOOL_FULL} 0.0" not in full:
            break
        await asyncio.sleep(0.1)
    await asyncio.to_thread(broker.start)
    await load
    await spool_empty(relay, 60)
    prefix = relay.env["RELAY_TOPIC_PREFIX"]
    report = await reconcile("spool full (30 kB cap) while Kafka is down", broker.bootstrap, prefix, deliveries, sender)
    (full_count,) = [float(ln.split()[-1]) for ln in full.splitlines() if ln.startswith(SPOOL_FULL + " ")]
    assert full_count > 0, "the 503s were not spool_full"
    assert report.status_503 > 0
    assert report.acknowledged == len(deliveries) and report.acknowledged_missing == 0 and report.never_in_kafka == 0


__all__ = ["REPORTS"]


async def test_spool_drain_publishes_an_orphaned_spool(broker: LocalKafka, tmp_path: Path) -> None:
    """A PVC left by a scale-in: `mytpe-relay spool drain --dir D` publishes it, in order per key, and exits 0."""
    prefix = f"orphan{int(time.time())}"
    spool = Spool(tmp_path / "orphan", max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    for n in range(30):
        value = json.dumps({"id": f"orphan-{n}"}).encode()
        await spool.put(Pending(f"{prefix}.transaction", b"k%d" % (n % 4), value, [("content-type", b"json")]))
    await spool.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, RELAY_MYTPE_SECRETS=SECRET, RELAY_TOPIC_PREFIX=prefix)
    command = [sys.executable, "-m", "relay", "spool", "drain", "--dir", str(tmp_path / "orphan")]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "30 record(s) published, 0 left" in done.stdout
    records = await read_topic(broker.bootstrap, f"{prefix}.transaction")
    by_key: dict[bytes, list[int]] = {}
    for record in records:
        by_key.setdefault(record.key or b"", []).append(int(json.loads(record.value)["id"].split("-")[1]))
    assert sorted(n for ns in by_key.values() for n in ns) == list(range(30))
    assert all(ns == sorted(ns) for ns in by_key.values())
    again = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert again.returncode == 0 and "0 record(s) published, 0 left" in again.stdout
