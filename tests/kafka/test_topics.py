"""Topic metadata: present, absent, or unreadable with its reason. An error is never an empty topic."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    LeaderNotAvailableError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from relay.kafka.topics import TopicState, TopicUnreadable, readable, topic_state


def entry(error_code: int = 0, leaders: tuple[int, ...] = (1, 1, 1)) -> dict[str, Any]:
    partitions = [
        {"error_code": 0, "partition": p, "leader": leader, "replicas": [1, 2]}
        for p, leader in reversed(list(enumerate(leaders)))
    ]
    return {"error_code": error_code, "topic": "t.dlq", "is_internal": False, "partitions": partitions}


def test_a_present_topic_has_its_partitions_sorted() -> None:
    assert topic_state(entry()) == TopicState("t.dlq", (0, 1, 2), replication_factor=2)


def test_only_unknown_topic_means_absent() -> None:
    state = topic_state(entry(UnknownTopicOrPartitionError.errno, leaders=()))
    assert state.absent and state.problem is None


@pytest.mark.parametrize("error", [LeaderNotAvailableError, TopicAuthorizationFailedError])
def test_any_other_error_is_a_problem_not_an_empty_topic(error: type[Exception]) -> None:
    state = topic_state(entry(error.errno))  # type: ignore[attr-defined]
    assert state == TopicState("t.dlq", (), error)
    assert not state.absent


def test_a_partition_without_a_leader_makes_the_topic_unreadable_for_now() -> None:
    state = topic_state(entry(leaders=(1, -1, 1)))
    assert state.problem is LeaderNotAvailableError and state.retriable


class Script:
    """Answers `read()` from a list of states or exceptions, on a clock that only `sleep` moves."""

    def __init__(self, *answers: TopicState | Exception) -> None:
        self._answers: Iterator[TopicState | Exception] = iter(answers)
        self.now = 0.0
        self.reads = 0

    async def read(self) -> TopicState:
        self.reads += 1
        answer = next(self._answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    async def run(self, bound: float = 10.0) -> TopicState:
        return await readable(self.read, bound=bound, backoff=1.0, clock=lambda: self.now, sleep=self.sleep)


PRESENT = TopicState("t.dlq", (0, 1, 2))
ABSENT = TopicState("t.dlq", None)
LEADERLESS = TopicState("t.dlq", (), LeaderNotAvailableError)


async def test_a_transient_error_is_retried_until_the_topic_reads() -> None:
    """The CI failure of issue 14: a transient metadata error was read as "the DLQ is empty"."""
    script = Script(LEADERLESS, KafkaConnectionError("reset"), PRESENT)
    assert await script.run() == PRESENT
    assert script.reads == 3


async def test_absent_is_an_answer_and_is_not_retried() -> None:
    script = Script(ABSENT)
    assert (await script.run()).absent
    assert script.reads == 1


async def test_a_retriable_error_that_lasts_past_the_bound_says_which() -> None:
    script = Script(*[LEADERLESS] * 20)
    with pytest.raises(TopicUnreadable, match=r"^LeaderNotAvailableError, still after 5s$"):
        await script.run(bound=5.0)
    assert script.reads == 6 and script.now == 5.0


async def test_a_refusal_is_not_retried() -> None:
    script = Script(TopicState("t.dlq", (), TopicAuthorizationFailedError), PRESENT)
    with pytest.raises(TopicUnreadable, match=r"^TopicAuthorizationFailedError \(not retriable\)$"):
        await script.run()
    assert script.reads == 1


async def test_a_failed_request_is_retried_and_named() -> None:
    script = Script(*[OSError("connection refused")] * 20)
    with pytest.raises(TopicUnreadable, match=r"^OSError: connection refused, still after 3s$"):
        await script.run(bound=3.0)
