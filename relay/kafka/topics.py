"""Topic metadata, read without side effects: a topic is present (with its partitions), absent, or
unreadable for a reason that is named. An error is never read as "absent".

aiokafka's admin `describe_topics` asks with `allow_auto_topic_creation` on, so on a broker that
auto-creates, describing an absent topic creates it, and answers LEADER_NOT_AVAILABLE while it does.
These requests turn auto-creation off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    KafkaError,
    LeaderNotAvailableError,
    NodeNotReadyError,
    NoError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from relay.kafka.security import client_options
from relay.settings import KafkaSecurity

DEFAULT_BOUND = 30.0  # seconds a retriable error may last before the topic is reported unreadable
BACKOFF = 0.5


class TopicUnreadable(Exception):
    """The topic's metadata could not be read: a non-retriable error, or a retriable one past its bound
    (`retriable`: worth asking again later, e.g. a partition with no leader during a broker restart)."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


@dataclass(frozen=True, slots=True)
class TopicState:
    name: str
    partitions: tuple[int, ...] | None
    """Its partition ids; None when the topic does not exist."""
    problem: type[KafkaError] | None = None
    """Why it cannot be read now (then `partitions` is empty)."""
    replication_factor: int = 0
    """The fewest replicas of any of its partitions."""

    @property
    def absent(self) -> bool:
        return self.partitions is None

    @property
    def retriable(self) -> bool:
        return self.problem is not None and self.problem.retriable


def topic_state(entry: dict[str, Any]) -> TopicState:
    """One topic of a MetadataResponse (`to_object()` form)."""
    name, error = entry["topic"], for_code(entry["error_code"])
    if error is UnknownTopicOrPartitionError:
        return TopicState(name, None)
    if error is not NoError:
        return TopicState(name, (), error)
    if any(partition["leader"] < 0 for partition in entry["partitions"]):
        return TopicState(name, (), LeaderNotAvailableError)
    partitions = entry["partitions"]
    replicas = min((len(partition["replicas"]) for partition in partitions), default=0)
    return TopicState(name, tuple(sorted(p["partition"] for p in partitions)), replication_factor=replicas)


@contextlib.asynccontextmanager
async def metadata_client(
    bootstrap_servers: Sequence[str], security: KafkaSecurity | None = None
) -> AsyncIterator[AIOKafkaClient]:
    """A bootstrapped client for metadata requests. Raises KafkaError when no broker answers."""
    options = client_options(security or KafkaSecurity())
    client = AIOKafkaClient(bootstrap_servers=list(bootstrap_servers), **options)
    try:
        await client.bootstrap()
        yield client
    finally:
        await client.close()


async def describe(client: AIOKafkaClient, topics: Sequence[str]) -> dict[str, TopicState]:
    """One metadata request for `topics`, creating none of them. Raises KafkaError on a failed request."""
    node = client.get_random_node()
    if node is None:
        raise NodeNotReadyError("no broker is known")
    response = await client.send(node, MetadataRequest(list(topics), allow_auto_topic_creation=False))
    states = {state.name: state for state in map(topic_state, response.to_object()["topics"])}
    return {topic: states.get(topic, TopicState(topic, (), UnknownTopicOrPartitionError)) for topic in topics}


async def readable(
    read: Callable[[], Awaitable[TopicState]],
    *,
    bound: float = DEFAULT_BOUND,
    backoff: float = BACKOFF,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> TopicState:
    """The topic's state once it is present or absent, retrying retriable errors for up to `bound` seconds.

    Raises TopicUnreadable with the reason: at once for a non-retriable error (an ACL refusal), after
    `bound` for a retriable one (no leader, a failed request).
    """
    now = clock or asyncio.get_running_loop().time
    deadline = now() + bound
    while True:
        try:
            state = await read()
        except (KafkaError, OSError, TimeoutError) as exc:
            reason, retriable = _reason(exc), not isinstance(exc, KafkaError) or exc.retriable
        else:
            if state.problem is None:
                return state
            reason, retriable = state.problem.__name__, state.retriable
        if not retriable:
            raise TopicUnreadable(f"{reason} (not retriable)")
        if now() + backoff > deadline:
            raise TopicUnreadable(f"{reason}, still after {bound:g}s", retriable=True)
        await sleep(backoff)


def _reason(exc: BaseException) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


async def state_of(client: AIOKafkaClient, topic: str, *, bound: float = DEFAULT_BOUND) -> TopicState:
    """`topic` present or absent, its retriable errors retried for up to `bound` seconds. Raises TopicUnreadable."""

    async def read() -> TopicState:
        return (await describe(client, [topic]))[topic]

    return await readable(read, bound=bound)
