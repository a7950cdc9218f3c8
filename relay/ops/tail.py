"""`mytpe-relay tail`: consume relay topics and pretty-print each record."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from relay.errors import StartupError
from relay.kafka.security import client_options
from relay.kafka.topics import TopicUnreadable, metadata_client, state_of
from relay.mytpe.payload import Unusable, members
from relay.settings import KafkaSecurity

_RAW_PREVIEW = 600
TOPIC_RETRY_SECONDS = 5.0  # how long a topic's retriable metadata error may last before tail gives up


async def tail(
    bootstrap_servers: Sequence[str],
    topics: Sequence[str],
    *,
    security: KafkaSecurity,
    from_beginning: bool,
    limit: int | None,
    timeout: float | None,
) -> int:
    """Print records until `limit` records or `timeout` seconds; 0 if a limit was reached or none was set.

    Raises StartupError when Kafka cannot be reached, when a topic's metadata cannot be read, or when
    the broker fails while records are read: an error is never shown as "no records".
    """
    for topic in await _absent(bootstrap_servers, topics, security):
        print(f"mytpe-relay tail: {topic} does not exist yet; waiting for it", file=sys.stderr)
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=list(bootstrap_servers),
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        metadata_max_age_ms=2000,
        **client_options(security),
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise StartupError(f"Kafka at {','.join(bootstrap_servers)} not reachable: {exc}") from None
    try:
        seen = await _print_records(consumer, limit=limit, timeout=timeout)
    except KafkaError as exc:
        raise StartupError(f"reading failed: {type(exc).__name__}: {exc}") from None
    finally:
        await consumer.stop()
    if seen == 0:  # nothing arrived: make sure that is not a broker that stopped answering meanwhile
        await _absent(bootstrap_servers, topics, security)
    return 0 if limit is None or seen >= limit else 1


async def _print_records(consumer: AIOKafkaConsumer, *, limit: int | None, timeout: float | None) -> int:
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    seen = 0
    while (limit is None or seen < limit) and (deadline is None or loop.time() < deadline):
        batches = await consumer.getmany(timeout_ms=500)
        for record in (record for records in batches.values() for record in records):
            if limit is not None and seen >= limit:
                return seen  # --max: a poll may hold more
            print(render(record), flush=True)
            seen += 1
    return seen


async def _absent(bootstrap_servers: Sequence[str], topics: Sequence[str], security: KafkaSecurity) -> list[str]:
    """The topics that do not exist (yet). Raises StartupError when one cannot be read or Kafka does not answer."""
    absent = []
    try:
        async with metadata_client(bootstrap_servers, security) as client:
            for topic in topics:
                if (await state_of(client, topic, bound=TOPIC_RETRY_SECONDS)).absent:
                    absent.append(topic)
    except KafkaError as exc:
        raise StartupError(f"Kafka at {','.join(bootstrap_servers)} not reachable: {exc}") from None
    except TopicUnreadable as exc:
        raise StartupError(f"cannot read {topic}: {exc}") from None
    return absent


def render(record: Any) -> str:
    """A CloudEvent one attribute per line, `data` as the bytes on the wire (5000.00 stays 5000.00). Anything
    else raw, with its headers: a DLQ record (a `reason`, whatever its content type: a spooled CloudEvent the
    drainer moved there keeps its own), or a value that is not what its content type says."""
    headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
    key = record.key.decode("utf-8", "replace") if record.key is not None else "-"
    title = f"--- {record.topic}[{record.partition}]@{record.offset} key={key}"
    value: bytes = record.value or b""
    if headers.get("content-type", "").startswith("application/cloudevents+json") and "reason" not in headers:
        try:
            text = value.decode("utf-8")
            found = members(text)
        except (Unusable, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; too deep: shown raw below
            pass
        else:
            attributes = "\n".join(f"  {name}: {v}" for name, (v, _, _) in found.items() if name != "data")
            _, start, end = found.get("data", (None, 0, 0))
            return f"{title}\n{attributes}\n  data: {text[start:end]}"
    raw = value.decode("utf-8", "replace")
    preview = raw if len(raw) <= _RAW_PREVIEW else raw[:_RAW_PREVIEW] + f"... ({len(raw)} chars)"
    return f"{title}\n  reason: {headers.get('reason', '-')}\n  headers: {headers}\n  body: {preview}"
