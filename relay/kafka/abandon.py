"""Ending a producer the relay gives up on (a failed start, a broken producer replaced, a half-started one): what
aiokafka's `stop()` leaves when it is cut.

aiokafka's private parts are used here, and only here: it is pinned (requirements/constraints.txt).
tests/integration/test_kafka_producer_stop.py fails if the producer's parts move (its sender, accumulator,
client), tests/kafka/test_abandon.py if the sender's or accumulator's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.sender import Sender

logger = logging.getLogger("relay.kafka.connection")  # the name these lines had before this module was split out

QUIET_STOP_SECONDS = 5.0


async def quiet_stop(producer: AIOKafkaProducer) -> None:
    """Stop a producer the relay gives up on; never raises but a cancellation.

    `stop()` first waits for the producer's unsent batches, which a Kafka that does not answer keeps for the
    delivery timeout. Cut after QUIET_STOP_SECONDS, it would leave the producer marked closed with its sender
    task still retrying those batches (written later, after their claims were released: duplicates), the task
    that waits for them, and its connections open, for every producer given up on. So what is left is ended,
    each wait cut after QUIET_STOP_SECONDS too: nothing is put back in its accumulator any more; the sender
    stops (aiokafka's `Sender.close`); the produce requests' tasks that close, cut, left are cancelled; the
    connections close; the batches fail. A batch already sent may still be written, and a connection to a peer
    that reads nothing may keep its socket until the process ends.
    """
    try:
        await asyncio.wait_for(producer.stop(), QUIET_STOP_SECONDS)
        return
    except Exception:  # whatever stop() raised, what is left is ended below
        logger.debug("producer stop after failed start raised", exc_info=True)
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:  # a request failing from now on (its connection closed) puts nothing back
        accumulator.reenqueue = _nothing_back
    sender = getattr(producer, "_sender", None)
    with contextlib.suppress(Exception):
        if sender is not None:
            await asyncio.wait_for(sender.close(), QUIET_STOP_SECONDS)
    _cancel_requests(sender)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.client.close(), QUIET_STOP_SECONDS)
    with contextlib.suppress(Exception):
        _fail_batches(accumulator)


def _cancel_requests(sender: object) -> None:
    """Cancel the produce requests' tasks of `sender`. `Sender.close` awaits them one by one; cut, it leaves the
    others (one per other broker), each of which, once the closed connection fails its request, would wait
    forever for the metadata a closed client never fetches, holding the producer's batches."""
    if sender is None:
        return
    code = getattr(getattr(Sender, "_send_produce_req", None), "__code__", None)
    if code is None:
        return
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if getattr(coro, "cr_code", None) is code and frame is not None and frame.f_locals.get("self") is sender:
            task.cancel()


def _fail_batches(accumulator: object) -> None:
    """Fail the batches a stopped sender left (`fail_all`), which ends the task `stop()` left waiting on them, and
    take their failures, which asyncio would otherwise log, each with a traceback, as never retrieved. A batch
    put back before the cut (its request failed) is queued again, and unlisted from the pending ones, but keeps
    the callback that unlists it once it settles: listed there again first, or that callback's KeyError would be
    logged the same way."""
    if accumulator is None:
        return
    queued = [batch for queue in getattr(accumulator, "_batches", {}).values() for batch in queue]
    pending = getattr(accumulator, "_pending_batches", None)
    if isinstance(pending, set):
        pending.update(queued)
    accumulator.fail_all(KafkaError("producer given up on"))  # type: ignore[attr-defined]
    for batch in [*queued, *(pending or ())]:
        for future in (batch.future, getattr(batch, "_drain_waiter", None)):
            if future is not None and future.done() and not future.cancelled():
                future.exception()


def _nothing_back(batch: object) -> None:
    """The reenqueue of a producer given up on: its batches fail."""
