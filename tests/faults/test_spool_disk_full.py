"""A relay whose spool's file system fills for real (a 256 KiB tmpfs, ENOSPC from the kernel) while Kafka is
down: it stays up, answers 503 for what it cannot store, and once Kafka is back drains every acknowledged
delivery exactly once. Needs root to mount (CI runs as root)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from localkafka import LocalKafka

from tests.conftest import tmpfs
from tests.faults.harness import REPORTS, RelayProcess, Sender, make_deliveries, reconcile
from tests.faults.test_spool import spool_empty, spooled_relay

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs for a real ENOSPC needs root (CI runs as root)"),
]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "256k") as disk:
        yield disk


async def test_a_full_disk_while_kafka_is_down_loses_nothing_and_writes_nothing_twice(
    broker: LocalKafka, relay_factory: Callable[..., RelayProcess], small_disk: Path
) -> None:
    """Without the spool's reserve, deletes failed with SQLITE_FULL too: the drainer republished the same rows
    every few seconds (169 duplicates of 13 acknowledged in one run) and the spool never emptied."""
    relay = spooled_relay(relay_factory, small_disk / "spool")
    await asyncio.to_thread(relay.start)
    await asyncio.to_thread(broker.stop)
    deliveries = make_deliveries(200, seed=77)
    sender = Sender(f"{relay.url}/webhooks/mytpe", attempts=1)
    await sender.run(deliveries, concurrency=4, deadline=time.monotonic() + 60)
    assert httpx.get(f"{relay.url}/healthz").status_code == 200
    await asyncio.to_thread(broker.start)
    await spool_empty(relay, 60)
    prefix = relay.env["RELAY_TOPIC_PREFIX"]
    report = await reconcile(
        "spool on a full disk (256 KiB tmpfs) while Kafka is down", broker.bootstrap, prefix, deliveries, sender
    )
    log = relay.log.read_text()
    assert report.acknowledged > 0 and report.status_503 > 0
    assert report.acknowledged_missing == 0 and report.duplicates_of_acknowledged == 0
    assert "disk is full" in log and "cannot rollback" not in log
    assert httpx.get(f"{relay.url}/healthz").status_code == 200


__all__ = ["REPORTS"]
