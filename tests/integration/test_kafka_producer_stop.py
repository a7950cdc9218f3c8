"""A producer the relay gives up on is ended even when its stop is cut: on the real broker."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from relay.kafka import abandon
from relay.kafka.connection import new_producer
from relay.settings import KafkaSecurity

pytestmark = pytest.mark.integration


def _aiokafka_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "aiokafka" in getattr(task.get_coro(), "cr_code", compile("", "", "exec")).co_filename
    ]


async def test_a_producer_whose_stop_is_cut_leaves_no_sender_batch_or_connection(
    kafka: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: `quiet_stop` (`_quiet_stop` then) cut `stop()` after 5 s, which waits for the unsent
    batches (a partition with no leader keeps them for the delivery timeout): the producer was left closed in
    name, its sender task still retrying the batches (written later, after their claims were released), a task
    waiting on them, and its connections open. Once per broken producer replaced, and per failed start."""
    monkeypatch.setattr(abandon, "QUIET_STOP_SECONDS", 0.5)
    topic = f"stopcut{int(time.time() * 1000)}"
    producer = new_producer([kafka.bootstrap], "stop-cut", KafkaSecurity(), delivery_timeout=60)
    await producer.start()
    await producer.send_and_wait(topic, b"first")  # connected to the leader; the topic made
    monkeypatch.setattr(producer.client.cluster, "leader_for_partition", lambda tp: -1)  # leaderless from now on
    pending = await producer.send(topic, b"second")  # a batch that cannot drain before the delivery timeout
    [batch] = [batch for queue in producer._message_accumulator._batches.values() for batch in queue]
    await abandon.quiet_stop(producer)
    # a produce request's task the cut stop left (one per other broker) puts its batch back once its request failed
    producer._message_accumulator.reenqueue(batch)
    await asyncio.sleep(0.1)  # what the failed batch wakes settles
    assert pending.done() and isinstance(pending.exception(), Exception)
    assert producer._sender.sender_task.done()
    assert not any(conn.connected() for conn in producer.client._conns.values())
    assert _aiokafka_tasks() == []
    del producer, pending
    gc.collect()  # a failure never taken is logged by asyncio when its future is collected, with a traceback
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
