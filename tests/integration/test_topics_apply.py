"""`mytpe-relay topics apply` and `check`'s durability warnings against the real (single-node) broker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from relay.kafka.durability import admin_client, layouts
from relay.kafka.topics import metadata_client
from relay.settings import KafkaSecurity
from tests.integration.test_cli import relay_env, run

pytestmark = pytest.mark.integration
SINGLE_NODE = ["--replication-factor", "1", "--min-insync-replicas", "1", "--partitions", "2"]


async def create(bootstrap: str, topic: str, partitions: int, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


def test_apply_creates_the_topics_then_has_nothing_to_do(kafka: Any) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = relay_env(kafka.bootstrap, prefix)
    topics = [f"{prefix}.pay_link", f"{prefix}.transaction", f"{prefix}.dlq"]

    dry = run(["topics", "apply", "--dry-run", *SINGLE_NODE], env)
    assert dry.returncode == 0, dry.stderr
    created = [
        f"+ {topic}: create, 2 partitions, replication factor 1, min.insync.replicas 1,"
        " unclean.leader.election.enable false"
        for topic in topics
    ]
    assert dry.stdout.splitlines() == [*created, "dry run: 3 change(s), none applied"]

    first = run(["topics", "apply", *SINGLE_NODE], env)
    assert first.stdout.splitlines() == [*created, "applied 3 change(s)"], first.stderr
    again = run(["topics", "apply", *SINGLE_NODE], env)
    assert again.stdout.splitlines() == [*(f"= {topic}: as wanted" for topic in topics), "nothing to change"]


async def test_apply_raises_what_is_below_keeps_what_is_above_and_the_topics_own_configs(kafka: Any) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = relay_env(kafka.bootstrap, prefix)
    await create(
        kafka.bootstrap,
        f"{prefix}.transaction",
        1,
        {"unclean.leader.election.enable": "true", "retention.ms": "86400000"},
    )
    await create(kafka.bootstrap, f"{prefix}.pay_link", 2, {"min.insync.replicas": "1"})
    await create(kafka.bootstrap, f"{prefix}.dlq", 2, {"min.insync.replicas": "2"})  # above the wanted 1

    result = run(["topics", "apply", *SINGLE_NODE], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"= {prefix}.pay_link: as wanted",
        f"~ {prefix}.transaction: partitions 1 -> 2 (keys move to other partitions)",
        f"~ {prefix}.transaction: unclean.leader.election.enable true -> false",
        f"= {prefix}.dlq: min.insync.replicas 2 kept, above 1 (--allow-lower to lower it)",
        "applied 2 change(s)",
    ]
    lowered = run(["topics", "apply", *SINGLE_NODE, "--allow-lower"], env)
    assert f"~ {prefix}.dlq: min.insync.replicas 2 -> 1" in lowered.stdout.splitlines()
    check = run(["check"], env)
    assert f"topic {prefix}.transaction: WARNING: replication factor 1 < 3" in check.stdout.splitlines()
    assert not [line for line in check.stdout.splitlines() if "unclean" in line], "unclean election was turned off"
    kept = run(["topics", "apply", *SINGLE_NODE], env)
    assert kept.stdout.splitlines()[-1] == "nothing to change"

    async with (
        metadata_client([kafka.bootstrap]) as metadata,
        admin_client([kafka.bootstrap], KafkaSecurity()) as admin,
    ):
        layout = (await layouts(admin, metadata, [f"{prefix}.transaction"]))[f"{prefix}.transaction"]
    assert layout is not None and layout.overrides["retention.ms"] == "86400000", "its own config survived"


async def test_check_warns_on_a_topic_with_min_insync_replicas_1(kafka: Any) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    await create(kafka.bootstrap, f"{prefix}.transaction", 1, {"min.insync.replicas": "1"})
    result = run(["check"], relay_env(kafka.bootstrap, prefix))
    assert result.returncode == 0, "warnings do not fail the check"
    assert (
        f"topic {prefix}.transaction: WARNING: min.insync.replicas 1 < 2: acks=all waits for the leader alone"
        in result.stdout.splitlines()
    )
