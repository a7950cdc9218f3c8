"""Topic metadata against the real broker: present, absent (and left absent), or refused with a reason."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from relay.kafka.topics import TopicUnreadable, metadata_client, state_of
from relay.ops.captured import DlqReader
from tests.integration.conftest import read_topic
from tests.integration.test_cli import relay_env, run
from tests.integration.test_replay import quarantine

pytestmark = pytest.mark.integration


async def topic_names(bootstrap: str) -> set[str]:
    async with metadata_client([bootstrap]) as client:
        return set((await client.fetch_all_metadata()).topics())


async def test_an_absent_topic_is_absent_and_stays_absent(kafka: Any) -> None:
    """aiokafka's describe_topics would create it on this auto-creating broker, and answer LEADER_NOT_AVAILABLE."""
    topic = f"absent-{uuid.uuid4().hex[:8]}"
    async with metadata_client([kafka.bootstrap]) as client:
        assert (await state_of(client, topic)).absent
    assert topic not in await topic_names(kafka.bootstrap)


async def test_a_present_topic_has_every_partition(kafka: Any, kafka_settings: Any) -> None:
    settings = kafka_settings()
    await quarantine(settings, [b"not json"])
    async with metadata_client([kafka.bootstrap]) as client:
        state = await state_of(client, f"{settings.topic_prefix}.dlq")
    assert state.partitions == (0, 1, 2)  # the test broker's num.partitions


async def test_an_error_from_the_broker_is_named_not_read_as_empty(kafka: Any) -> None:
    """A name Kafka refuses: the broker answers INVALID_TOPIC_EXCEPTION, which the old reader took for 'no DLQ'."""
    reader = DlqReader([kafka.bootstrap], "not a topic!", stall_timeout=2.0)
    try:
        with pytest.raises(TopicUnreadable, match=r"^InvalidTopicError \(not retriable\)$"):
            await reader.open()
    finally:
        await reader.close()


async def test_replay_from_an_absent_dlq_has_nothing_to_do_and_creates_no_topic(kafka: Any) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    result = run(["replay", "--from-dlq"], relay_env(kafka.bootstrap, prefix))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"replay: 0 entries from {prefix}.dlq: nothing to do"
    assert f"{prefix}.dlq" not in await topic_names(kafka.bootstrap), "replay created the DLQ it was to read"


async def test_read_topic_of_an_absent_topic_is_empty_without_creating_it(kafka: Any) -> None:
    """The suite's own reader: `== []` must mean absent or empty, never an error, and must not create."""
    topic = f"absent-{uuid.uuid4().hex[:8]}"
    assert await read_topic(kafka.bootstrap, topic) == []
    assert topic not in await topic_names(kafka.bootstrap)


async def test_check_reports_each_topic_and_creates_none(kafka: Any) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    result = run(["check"], relay_env(kafka.bootstrap, prefix))
    assert result.returncode == 0, result.stdout + result.stderr
    missing = "missing (created on first publish only if the broker auto-creates)"
    assert f"topic {prefix}.dlq: {missing}" in result.stdout.splitlines()
    assert f"{prefix}.dlq" not in await topic_names(kafka.bootstrap)


def test_tail_of_a_topic_the_broker_refuses_exits_3_with_one_line(kafka: Any) -> None:
    result = run(["tail", "not a topic!", "--timeout", "2"], relay_env(kafka.bootstrap, "unused"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "mytpe-relay tail: cannot start: cannot read not a topic!: InvalidTopicError (not retriable)"
    ]


def test_tail_notes_a_topic_that_does_not_exist_yet(kafka: Any) -> None:
    topic = f"absent-{uuid.uuid4().hex[:8]}"
    result = run(["tail", topic, "--timeout", "1"], relay_env(kafka.bootstrap, "unused"))
    assert result.returncode == 0, result.stderr
    assert f"mytpe-relay tail: {topic} does not exist yet; waiting for it" in result.stderr.splitlines()


async def test_the_dlq_reader_starts_at_the_beginning_every_time(kafka: Any, kafka_settings: Any) -> None:
    """Issue 14's CI failure: assign() starts a reset to the default (latest) offset, and when its answer came
    after seek_to_beginning()'s request, the reader started at the end and replay said "nothing to do"."""
    settings = kafka_settings()
    await quarantine(settings, [b"not json 1", b"not json 2", b"not json 3", b"not json 4"])
    seen = []
    for _ in range(20):  # bounded: each open is one snapshot of 4 records
        reader = DlqReader([kafka.bootstrap], f"{settings.topic_prefix}.dlq", stall_timeout=10.0)
        try:
            await reader.open()
            seen.append(len([entry async for entry in reader.records()]))
        finally:
            await reader.close()
    assert seen == [4] * 20
