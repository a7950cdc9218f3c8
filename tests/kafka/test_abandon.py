"""Ending a producer given up on, on aiokafka's own sender, accumulator and client (no broker: the request's
answer is the one thing stood in for)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, cast

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


async def test_a_request_left_by_a_cut_sender_close_is_ended_and_asyncio_logs_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: with several brokers, `Sender.close` (which awaits the produce requests' tasks one by one)
    cut after QUIET_STOP_SECONDS leaves the others' tasks. Once the closed connection failed its request, such a
    task put its batch back, which the batches' failure had unlisted (a KeyError, logged by asyncio with a
    traceback); with nothing put back, it waited forever for the metadata a closed client never fetches,
    holding the producer's batches (logged as a task destroyed while pending)."""
    monkeypatch.setattr(abandon, "QUIET_STOP_SECONDS", 0.2)
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")
    monkeypatch.setattr(client.cluster, "leader_for_partition", lambda tp: 2)
    accumulator = MessageAccumulator(client.cluster, 16384, 0, 60)
    partition = TopicPartition("t", 0)
    delivered = await accumulator.add_message(partition, None, b"x", timeout=1)  # the caller's future
    nodes, _ = accumulator.drain_by_nodes(ignore_nodes=set())
    sent = asyncio.Event()

    async def send(node_id: int, request: Any, group: Any = None) -> Any:  # the other broker does not answer
        sent.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(client, "send", send)
    sender = Sender(
        client,
        acks=-1,
        txn_manager=None,
        retry_backoff_ms=100,
        message_accumulator=accumulator,
        request_timeout_ms=60000,
    )
    left = asyncio.create_task(sender._send_produce_req(2, nodes[2]))  # what a cut Sender.close leaves
    await asyncio.wait_for(sent.wait(), 5)
    await abandon.quiet_stop(cast(Any, Unstoppable(sender, accumulator, client)))
    await asyncio.sleep(0.3)  # past the retry backoff
    assert left.done()
    assert isinstance(delivered.exception(), KafkaError)  # failed, not left to be sent later
    del left, nodes, delivered
    gc.collect()
    await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
