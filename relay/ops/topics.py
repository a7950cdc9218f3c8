"""`mytpe-relay topics apply`: the relay's topics, created durable, and raised where they are below what is
wanted. Prints the diff; idempotent; never lowers a setting without `--allow-lower`."""

from __future__ import annotations

from aiokafka.errors import KafkaError

from relay.errors import StartupError
from relay.kafka.durability import Wanted, admin_client, apply, layouts, plan
from relay.kafka.topics import metadata_client
from relay.settings import Settings


async def apply_topics(settings: Settings, wanted: Wanted, *, dry_run: bool, allow_lower: bool) -> None:
    """Raises StartupError, in one line, when Kafka cannot be reached or refuses a change."""
    topics = settings.router().topics()
    servers, security = settings.kafka_bootstrap_servers, settings.kafka_security
    try:
        async with metadata_client(servers, security) as metadata, admin_client(servers, security) as admin:
            current = await layouts(admin, metadata, topics)
            steps = [step for topic in topics for step in plan(topic, current[topic], wanted, allow_lower=allow_lower)]
            for step in steps:
                print(step.line)
            changes = [step for step in steps if step.action is not None]
            if dry_run:
                print(f"dry run: {len(changes)} change(s), none applied")
                return
            await apply(admin, changes)
    except KafkaError as exc:
        raise StartupError(f"Kafka at {','.join(servers)}: {type(exc).__name__}: {exc}") from None
    print(f"applied {len(changes)} change(s)" if changes else "nothing to change")
