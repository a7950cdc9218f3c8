"""Durable topics: what the relay's topics are, what `acks=all` needs of them, and the changes that get there.

`acks=all` waits for the in-sync replicas only; with `min.insync.replicas=1` that is the leader alone, so an
acknowledged record dies with one disk. A durable topic has replication factor 3, `min.insync.replicas` 2
and unclean leader election off. `plan` never lowers a setting unless asked, and never touches what it
cannot change safely (the replication factor needs a partition reassignment; `min.insync.replicas` is not
raised to what the topic's replicas cannot hold).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code

from relay.kafka.security import client_options
from relay.kafka.topics import describe
from relay.settings import KafkaSecurity

MIN_INSYNC = "min.insync.replicas"
UNCLEAN = "unclean.leader.election.enable"
DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself


@dataclass(frozen=True, kw_only=True)
class Layout:
    """What a topic is. A config is None when it could not be read (DescribeConfigs refused): unknown."""

    partitions: int
    replication_factor: int
    min_insync_replicas: int | None = None
    unclean_leader_election: bool | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    """The topic's own configs, kept when one of them is changed (AlterConfigs replaces them all)."""


@dataclass(frozen=True, kw_only=True)
class Wanted:
    partitions: int = 6
    replication_factor: int = 3
    min_insync_replicas: int = 2


def warnings(layout: Layout) -> list[str]:
    """Why `acks=all` on this topic is not durable; nothing when it is."""
    found = []
    if layout.replication_factor < 3:
        found.append(f"replication factor {layout.replication_factor} < 3")
    if layout.min_insync_replicas is None:
        found.append(f"{MIN_INSYNC} unknown (DescribeConfigs refused)")
    elif layout.min_insync_replicas > layout.replication_factor:
        found.append(
            f"{MIN_INSYNC} {layout.min_insync_replicas} > replication factor {layout.replication_factor}:"
            " no acks=all write can succeed"
        )
    elif layout.min_insync_replicas < 2:
        found.append(f"{MIN_INSYNC} {layout.min_insync_replicas} < 2: acks=all waits for the leader alone")
    if layout.unclean_leader_election:
        found.append(f"{UNCLEAN}=true: an out-of-sync replica may become leader and drop acknowledged records")
    return found


@dataclass(frozen=True)
class Step:
    """One line of the diff; `action` is None for what is reported and left as it is."""

    topic: str
    line: str
    action: dict[str, Any] | None = None


def plan(topic: str, current: Layout | None, wanted: Wanted, *, allow_lower: bool = False) -> list[Step]:
    """The steps from `current` (None: absent) to `wanted`."""
    configs = {MIN_INSYNC: str(wanted.min_insync_replicas), UNCLEAN: "false"}
    if current is None:
        line = (
            f"+ {topic}: create, {wanted.partitions} partitions, replication factor {wanted.replication_factor},"
            f" {MIN_INSYNC} {wanted.min_insync_replicas}, {UNCLEAN} false"
        )
        create = NewTopic(topic, wanted.partitions, wanted.replication_factor, topic_configs=configs)
        return [Step(topic, line, {"create": create})]
    steps = [*_partitions(topic, current, wanted), *_configs(topic, current, wanted, allow_lower)]
    if current.replication_factor != wanted.replication_factor:
        steps.append(
            Step(
                topic,
                f"! {topic}: replication factor {current.replication_factor}, wanted"
                f" {wanted.replication_factor}: not changed (it needs a partition reassignment)",
            )
        )
    return steps or [Step(topic, f"= {topic}: as wanted")]


def _partitions(topic: str, current: Layout, wanted: Wanted) -> list[Step]:
    if current.partitions < wanted.partitions:
        line = f"~ {topic}: partitions {current.partitions} -> {wanted.partitions} (keys move to other partitions)"
        return [Step(topic, line, {"partitions": NewPartitions(wanted.partitions)})]
    if current.partitions > wanted.partitions:
        return [Step(topic, f"= {topic}: {current.partitions} partitions kept (Kafka cannot remove partitions)")]
    return []


def _configs(topic: str, current: Layout, wanted: Wanted, allow_lower: bool) -> list[Step]:
    changes: dict[str, str] = {}
    notes = []
    isr = current.min_insync_replicas
    if isr is None:
        notes.append(Step(topic, f"! {topic}: {MIN_INSYNC} unknown (DescribeConfigs refused): not changed"))
    elif isr < wanted.min_insync_replicas and not _holds(current, wanted):
        notes.append(
            Step(topic, f"! {topic}: {MIN_INSYNC} not raised to {wanted.min_insync_replicas}: {_why(current, wanted)}")
        )
    elif isr < wanted.min_insync_replicas or (isr > wanted.min_insync_replicas and allow_lower):
        changes[MIN_INSYNC] = str(wanted.min_insync_replicas)
    elif isr > wanted.min_insync_replicas:
        notes.append(
            Step(
                topic,
                f"= {topic}: {MIN_INSYNC} {isr} kept, above {wanted.min_insync_replicas} (--allow-lower to lower it)",
            )
        )
    if current.unclean_leader_election:
        changes[UNCLEAN] = "false"
    if not changes:
        return notes
    shown = ", ".join(f"{name} {_was(current, name)} -> {value}" for name, value in changes.items())
    return [*notes, Step(topic, f"~ {topic}: {shown}", {"configs": {**current.overrides, **changes}})]


def _holds(current: Layout, wanted: Wanted) -> bool:
    """Whether the topic's replicas can hold the wanted min.insync.replicas: above its replication factor no
    acks=all write succeeds; equal to it (fewer replicas than wanted), every write stops while one replica is out
    of sync, a broker's restart. Equal is taken only when the replication factor is the one asked for."""
    factor, wanted_isr = current.replication_factor, wanted.min_insync_replicas
    return wanted_isr < factor or (wanted_isr == factor and factor >= wanted.replication_factor)


def _why(current: Layout, wanted: Wanted) -> str:
    factor = current.replication_factor
    effect = (
        "no acks=all write could succeed"
        if wanted.min_insync_replicas > factor
        else "every write would stop while one replica is out of sync (a broker's restart)"
    )
    return f"replication factor {factor}: {effect}; raise the replication factor first (a partition reassignment)"


def _was(current: Layout, name: str) -> str:
    return str(current.min_insync_replicas) if name == MIN_INSYNC else str(current.unclean_leader_election).lower()


async def layouts(
    admin: AIOKafkaAdminClient, metadata: AIOKafkaClient, topics: Sequence[str]
) -> dict[str, Layout | None]:
    """Each topic's layout, None when it does not exist. Raises KafkaError when one cannot be read."""
    states = await describe(metadata, topics)
    result: dict[str, Layout | None] = {}
    for topic, state in states.items():
        if state.absent:
            result[topic] = None
            continue
        if state.problem is not None:
            raise state.problem(f"cannot read {topic}")
        configs = await _configs_of(admin, topic)
        isr, unclean = configs.get(MIN_INSYNC), configs.get(UNCLEAN)
        result[topic] = Layout(
            partitions=len(state.partitions or ()),
            replication_factor=state.replication_factor,
            min_insync_replicas=int(isr[0]) if isr else None,
            unclean_leader_election=unclean[0] == "true" if unclean else None,
            overrides={name: value for name, (value, source) in configs.items() if source == DYNAMIC_TOPIC_CONFIG},
        )
    return result


async def _configs_of(admin: AIOKafkaAdminClient, topic: str) -> dict[str, tuple[str, int]]:
    """name -> (value, source); empty when DescribeConfigs is refused (then the configs are unknown)."""
    (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    (resource,) = response.to_object()["resources"]
    if resource["error_code"] != 0:
        return {}
    return {e["config_names"]: (e["config_value"], e["config_source"]) for e in resource["config_entries"]}


async def apply(admin: AIOKafkaAdminClient, steps: Sequence[Step]) -> None:
    """Carry out the steps that change something. Raises KafkaError with the broker's reason."""
    for step in steps:
        action = step.action or {}
        if "create" in action:
            response = await admin.create_topics([action["create"]])
            _raise_for(response.to_object()["topic_errors"], step.topic)
        if "partitions" in action:
            response = await admin.create_partitions({step.topic: action["partitions"]})
            _raise_for(response.to_object()["topic_errors"], step.topic)
        if "configs" in action:
            resource = ConfigResource(ConfigResourceType.TOPIC, step.topic, action["configs"])
            (response,) = await admin.alter_configs([resource])
            _raise_for(response.to_object()["resources"], step.topic)


def _raise_for(results: list[dict[str, Any]], topic: str) -> None:
    for result in results:
        if result["error_code"] != 0:
            message = result.get("error_message") or ""
            raise for_code(result["error_code"])(f"{topic}: {message}".rstrip(": "))


@contextlib.asynccontextmanager
async def admin_client(bootstrap_servers: Sequence[str], security: KafkaSecurity) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client with the project's security options. Raises KafkaError when no broker answers."""
    admin = AIOKafkaAdminClient(bootstrap_servers=list(bootstrap_servers), **client_options(security))
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()
