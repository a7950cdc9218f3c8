"""Per-key order across the direct path and the spool, with publishes in flight at the same time.

A pure-logic property on a real SQLite spool: a fake producer, driven step by step, keeps each key's
records in append order (as one partition does), acknowledges the oldest, times a publish out (it stays
in the producer: PublishPending), or fails every record of the key still in it (as an idempotent
producer fails the later batches of a partition after one fails). Sends, timeouts, failures and drain
passes interleave at random; whatever Kafka finally holds must be in arrival order per key, once each.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.errors import PublishPending, Unavailable
from relay.metrics import Metrics
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.spooler import Spooled, Spooler
from relay.types import Ack

KEYS = [b"a", b"b"]
Step = tuple[str, int]


@dataclass(eq=False)
class _InProducer:
    value: bytes
    result: asyncio.Future[Ack]
    timed_out: asyncio.Event = field(default_factory=asyncio.Event)


class SteppedKafka:
    def __init__(self) -> None:
        self.log: list[tuple[bytes, int]] = []
        self.queued: dict[bytes, deque[_InProducer]] = defaultdict(deque)

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        sent = _InProducer(value, asyncio.get_running_loop().create_future())
        sent.result.add_done_callback(lambda f: f.cancelled() or f.exception())  # read: no "never retrieved"
        self.queued[key].append(sent)
        timeout: asyncio.Future[object] = asyncio.ensure_future(sent.timed_out.wait())
        either: list[asyncio.Future[object]] = [sent.result, timeout]  # type: ignore[list-item]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        timeout.cancel()
        if sent.result.done():
            return sent.result.result()
        raise PublishPending(_outcome(sent.result), 1.0)

    def ack(self, key: bytes) -> None:
        if self.queued[key]:
            sent = self.queued[key].popleft()
            self.log.append((key, int(sent.value)))
            sent.result.set_result(Ack("t", 0, len(self.log)))

    def fail(self, key: bytes) -> None:
        while self.queued[key]:
            self.queued[key].popleft().result.set_exception(Unavailable("kafka_error", "KafkaConnectionError"))

    def time_out(self, key: bytes) -> None:
        """The oldest publish of `key` still waiting for its answer gives up waiting (its record stays)."""
        for sent in self.queued[key]:
            if not sent.timed_out.is_set():
                sent.timed_out.set()
                return

    async def ping(self, *, timeout: float = 2.0) -> bool:
        return True

    async def start(self, *, timeout: float, background: bool = False) -> None:
        return None

    async def stop(self, *, timeout: float = 10.0) -> None:
        return None


async def _outcome(result: asyncio.Future[Ack]) -> Ack:
    return await result


async def _settle() -> None:
    for _ in range(6):  # the spool's writes run on its thread: let them and their waiters finish
        await asyncio.sleep(0.002)


async def scenario(steps: list[Step], directory: Path) -> tuple[list[tuple[bytes, int]], list[object]]:
    kafka = SteppedKafka()
    spool = Spool(directory, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    drainer = Drainer(spool, kafka, Metrics())
    spooler = Spooler(spool, drainer, kafka, after=1.0, hold_bound=3600)
    requests: list[asyncio.Task[Ack | Spooled]] = []
    passes: list[asyncio.Task[bool]] = []
    for action, k in steps:
        key = KEYS[k]
        if action == "send":
            requests.append(asyncio.create_task(spooler.publish("t", key, b"%d" % len(requests), [])))
        elif action == "timeout":
            kafka.time_out(key)
        elif action == "ack":
            kafka.ack(key)
        elif action == "fail":
            kafka.fail(key)
        elif not any(not p.done() for p in passes):
            passes.append(asyncio.create_task(drainer.pass_once()))
        await _settle()
    for _ in range(400):  # bounded: Kafka is healthy from here on, until everything is in it
        for key in KEYS:
            while kafka.queued[key]:
                kafka.ack(key)
        if all(p.done() for p in passes) and all(r.done() for r in requests):
            if not spool.entries:
                break
            passes.append(asyncio.create_task(drainer.pass_once()))
        await _settle()
    answers: list[object] = [r.result() if r.done() and not r.exception() else r for r in requests]
    await spool.close()
    return kafka.log, answers


step = st.tuples(st.sampled_from(["send", "send", "timeout", "ack", "fail", "drain"]), st.integers(0, len(KEYS) - 1))


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=25))
@example(  # the case: a's first record in flight, b times out, a's second is spooled, a's first fails
    steps=[("send", 0), ("send", 1), ("timeout", 1), ("send", 0), ("timeout", 0), ("drain", 0), ("fail", 0)]
)
def test_what_kafka_finally_holds_is_in_arrival_order_per_key_once_each(
    steps: list[Step], tmp_path_factory: pytest.TempPathFactory
) -> None:
    log, answers = asyncio.run(scenario(steps, tmp_path_factory.mktemp("order")))
    sent = sum(action == "send" for action, _ in steps)
    assert all(isinstance(a, Ack | Spooled) for a in answers), answers  # every record answered 2xx
    assert sorted(n for _, n in log) == list(range(sent)), f"not each once: {log}"
    for key in KEYS:
        numbers = [n for k, n in log if k == key]
        assert numbers == sorted(numbers), f"{key!r} out of order: {numbers} (log {log})"
