"""Ending a producer given up on, on aiokafka's own sender, accumulator and client (no broker: the request's
answer is the one thing stood in for)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, NamedTuple, cast

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import MessageAccumulator
from aiokafka.producer.sender import Sender
from aiokafka.structs import TopicPartition

from relay.kafka import abandon


class Unstoppable:
    """A producer whose `stop()` never ends (its batches held by a Kafka that does not answer), with aiokafka's own
    parts in it."""

    def __init__(self, sender: Sender, accumulator: MessageAccumulator, client: AIOKafkaClient) -> None:
        self._sender, self._message_accumulator, self.client = sender, accumulator, client

    async def stop(self) -> None:
        await asyncio.Event().wait()


class Taken(NamedTuple):
    """One message's batch, taken for a request to broker 2: the producer's parts and the caller's future."""

    client: AIOKafkaClient
    accumulator: MessageAccumulator
    sender: Sender
    delivered: asyncio.Future[Any]
    batches: dict[TopicPartition, Any]

    def producer(self) -> Any:
        return cast(Any, Unstoppable(self.sender, self.accumulator, self.client))


async def taken(monkeypatch: pytest.MonkeyPatch) -> Taken:
    monkeypatch.setattr(abandon, "QUIET_STOP_SECONDS", 0.2)
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")
    monkeypatch.setattr(client.cluster, "leader_for_partition", lambda tp: 2)
    accumulator = MessageAccumulator(client.cluster, 16384, 0, 60)
    delivered = await accumulator.add_message(TopicPartition("t", 0), None, b"x", timeout=1)
    nodes, _ = accumulator.drain_by_nodes(ignore_nodes=set())
    sender = Sender(
        client,
        acks=-1,
        txn_manager=None,
        retry_backoff_ms=100,
        message_accumulator=accumulator,
        request_timeout_ms=60000,
    )
    return Taken(client, accumulator, sender, delivered, nodes[2])


def asyncio_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # a failure never taken is logged by asyncio when its future is collected, with a traceback
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def test_a_request_left_by_a_cut_sender_close_is_ended_and_asyncio_logs_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: with several brokers, `Sender.close` (which awaits the produce requests' tasks one by one)
    cut after QUIET_STOP_SECONDS leaves the others' tasks: each, once the closed connection failed its request,
    would put its batch back, or wait forever for the metadata a closed client never fetches, holding the
    producer's batches. Such a task, still waiting for its answer, is cancelled."""
    part = await taken(monkeypatch)
    sent = asyncio.Event()

    async def send(node_id: int, request: Any, group: Any = None) -> Any:  # the other broker does not answer
        sent.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(part.client, "send", send)
    left = asyncio.create_task(part.sender._send_produce_req(2, part.batches))  # what a cut Sender.close leaves
    await asyncio.wait_for(sent.wait(), 5)
    await abandon.quiet_stop(part.producer())
    await asyncio.sleep(0)  # a cancellation lands at the next turn
    assert left.done()
    assert isinstance(part.delivered.exception(), KafkaError)  # failed, not left to be sent later
    del left, part
    assert asyncio_lines(caplog) == []


async def test_a_batch_put_back_before_the_cut_fails_without_a_keyerror(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: a batch whose request failed while `stop()` still waited was put back (queued again, unlisted
    from the pending ones) but kept aiokafka's callback that unlists it once it settles: failing it raised a
    KeyError in that callback, which asyncio logged with a traceback."""
    part = await taken(monkeypatch)  # taken for a request...
    [batch] = part.batches.values()
    part.accumulator.reenqueue(batch)  # ...which failed: put back, as aiokafka does after its backoff
    await abandon.quiet_stop(part.producer())
    await asyncio.sleep(0)  # the batch's callbacks run
    assert isinstance(part.delivered.exception(), KafkaError)
    assert asyncio_lines(caplog) == []
