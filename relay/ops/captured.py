"""Signed deliveries captured earlier, to replay: from a JSON Lines file, or from the DLQ topic.

File format, one delivery per line (blank lines are skipped):

    {"headers": {"X-MytpePay-Signature": "sha256=…", "X-MytpePay-Timestamp": "1712678400",
                 "X-MytpePay-Event": "transaction.completed", "X-MytpePay-Delivery-Id": "…"},
     "body": "<the raw body, exactly as sent>"}

`body_base64` may replace `body` when the bytes are not UTF-8 text. Header names are case-insensitive.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.kafka.security import client_options
from relay.kafka.topics import metadata_client, state_of
from relay.settings import KafkaSecurity


@dataclass(frozen=True, slots=True)
class Captured:
    origin: str
    """Where it came from, for the report: `FILE:LINE` or `TOPIC[PARTITION]@OFFSET`."""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    received_at: datetime | None = None
    problem: str | None = None
    """Why the entry could not be read (the others are still replayed)."""

    def getlist(self, key: str) -> list[str]:
        value = self.headers.get(key.lower())
        return [] if value is None else [value]


def count_lines(path: Path) -> int | None:
    """The entries to come, for the progress bar; None when the file cannot be read (`read_file` says so)."""
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def read_file(path: Path) -> Iterator[Captured]:
    """Each non-blank line's entry. A read that fails midway (EIO) ends the file with an unreadable entry
    saying so: a one-line problem in the report, never a traceback."""
    number = 0
    try:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _entry(f"{path.name}:{number}", line)
    except OSError as exc:
        problem = f"unreadable entry: the file could not be read from here on: {exc.strerror or exc}"
        yield Captured(f"{path.name}:{number + 1}", problem=problem)


def _entry(origin: str, line: bytes) -> Captured:
    try:
        entry = json.loads(line)
        headers = entry["headers"]
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise TypeError("headers must be an object of strings")
        if isinstance(entry.get("body_base64"), str):
            body = base64.b64decode(entry["body_base64"], validate=True)
        elif isinstance(entry.get("body"), str):
            body = entry["body"].encode("utf-8")
        else:
            raise TypeError("body (a string) or body_base64 is required")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        return Captured(origin, problem=f"unreadable entry: {exc}")
    except RecursionError:  # `[[[[…` past the parser's depth
        return Captured(origin, problem="unreadable entry: nested too deep")
    return Captured(origin, {name.lower(): value for name, value in headers.items()}, body)


class DlqStalled(Exception):
    """The DLQ could not be read to its end offsets: the broker stopped answering."""


class DlqReader:
    """Every record of the DLQ up to the end offsets seen at `open()`: a fixed snapshot, so records the
    relay quarantines during the replay wait for the next run."""

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        topic: str,
        *,
        security: KafkaSecurity | None = None,
        stall_timeout: float = 30.0,
    ) -> None:
        self.topic = topic
        self.total = 0
        self._bootstrap_servers = list(bootstrap_servers)
        self._security = security or KafkaSecurity()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # any reset aiokafka makes on its own starts at the beginning too
            **client_options(self._security),
        )
        self._start: dict[TopicPartition, int] = {}
        self._end: dict[TopicPartition, int] = {}
        self._stall_timeout = stall_timeout

    async def open(self) -> None:
        await self._consumer.start()
        partitions = await self._partitions()
        if not partitions:
            return
        self._consumer.assign(partitions)
        self._start = await self._consumer.beginning_offsets(partitions)
        self._end = await self._consumer.end_offsets(partitions)
        self.total = sum(self._end[tp] - self._start[tp] for tp in partitions)
        for tp in partitions:
            # An explicit position, not seek_to_beginning(): assign() starts a reset with the default strategy,
            # and its answer, arriving after seek_to_beginning()'s request, put the reader at the end (issue 14).
            self._consumer.seek(tp, self._start[tp])

    async def close(self) -> None:
        await self._consumer.stop()

    async def _partitions(self) -> list[TopicPartition]:
        """The topic's partitions; none when it does not exist (nothing was ever quarantined).

        Raises TopicUnreadable when its metadata cannot be read: an error is not an empty DLQ.
        """
        async with metadata_client(self._bootstrap_servers, self._security) as client:
            state = await state_of(client, self.topic, bound=self._stall_timeout)
        return [TopicPartition(self.topic, partition) for partition in state.partitions or ()]

    async def records(self) -> AsyncIterator[Captured]:
        loop = asyncio.get_running_loop()
        pending = {tp for tp, end in self._end.items() if end > self._start[tp]}
        last_progress = loop.time()
        while pending:
            batches = await self._consumer.getmany(*pending, timeout_ms=500)
            for tp, batch in batches.items():
                for record in batch:
                    if record.offset < self._end[tp]:
                        yield _dlq_entry(record)
            for tp in list(pending):
                if await self._consumer.position(tp) >= self._end[tp]:
                    pending.discard(tp)
            if batches:
                last_progress = loop.time()
            elif loop.time() - last_progress > self._stall_timeout:
                raise DlqStalled(f"no record from {self.topic} for {self._stall_timeout:.0f}s")


def _dlq_entry(record: Any) -> Captured:
    headers = {name.lower(): value.decode("utf-8", "replace") for name, value in record.headers or ()}
    stamp = record.timestamp
    received = datetime.fromtimestamp(stamp / 1000, UTC) if isinstance(stamp, int) and stamp > 0 else None
    return Captured(f"{record.topic}[{record.partition}]@{record.offset}", headers, record.value or b"", received)
