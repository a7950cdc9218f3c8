"""What a durable topic needs, and the steps from what a topic is: nothing is lowered unless asked."""

from __future__ import annotations

from relay.kafka.durability import Layout, Wanted, plan, warnings

WANTED = Wanted(partitions=6, replication_factor=3, min_insync_replicas=2)
DURABLE = Layout(partitions=6, replication_factor=3, min_insync_replicas=2, unclean_leader_election=False)


def lines(current: Layout | None, *, allow_lower: bool = False) -> list[str]:
    return [step.line for step in plan("t.x", current, WANTED, allow_lower=allow_lower)]


def test_an_absent_topic_is_created_durable() -> None:
    (step,) = plan("t.x", None, WANTED)
    assert step.line == (
        "+ t.x: create, 6 partitions, replication factor 3, min.insync.replicas 2, unclean.leader.election.enable false"
    )
    assert step.action is not None
    create = step.action["create"]
    assert (create.num_partitions, create.replication_factor) == (6, 3)
    assert create.topic_configs == {"min.insync.replicas": "2", "unclean.leader.election.enable": "false"}


def test_a_durable_topic_needs_nothing() -> None:
    assert lines(DURABLE) == ["= t.x: as wanted"]
    assert warnings(DURABLE) == []


def test_what_is_below_is_raised_and_the_topics_own_configs_are_kept() -> None:
    weak = Layout(
        partitions=3,
        replication_factor=3,
        min_insync_replicas=1,
        unclean_leader_election=True,
        overrides={"retention.ms": "604800000", "min.insync.replicas": "1"},
    )
    steps = plan("t.x", weak, WANTED)
    assert [s.line for s in steps] == [
        "~ t.x: partitions 3 -> 6 (keys move to other partitions)",
        "~ t.x: min.insync.replicas 1 -> 2, unclean.leader.election.enable true -> false",
    ]
    assert steps[1].action is not None
    assert steps[1].action["configs"] == {
        "retention.ms": "604800000",
        "min.insync.replicas": "2",
        "unclean.leader.election.enable": "false",
    }


def test_nothing_is_lowered_without_allow_lower() -> None:
    strict = Layout(partitions=12, replication_factor=3, min_insync_replicas=3, unclean_leader_election=False)
    assert lines(strict) == [
        "= t.x: 12 partitions kept (Kafka cannot remove partitions)",
        "= t.x: min.insync.replicas 3 kept, above 2 (--allow-lower to lower it)",
    ]
    assert all(step.action is None for step in plan("t.x", strict, WANTED))
    assert lines(strict, allow_lower=True)[-1] == "~ t.x: min.insync.replicas 3 -> 2"


def test_the_replication_factor_and_unknown_configs_are_reported_not_changed() -> None:
    unknown = Layout(partitions=6, replication_factor=1)
    steps = plan("t.x", unknown, WANTED)
    assert [s.line for s in steps] == [
        "! t.x: min.insync.replicas unknown (DescribeConfigs refused): not changed",
        "! t.x: replication factor 1, wanted 3: not changed (it needs a partition reassignment)",
    ]
    assert all(step.action is None for step in steps)


def test_warnings_name_each_reason_acks_all_is_not_durable() -> None:
    weak = Layout(partitions=1, replication_factor=1, min_insync_replicas=1, unclean_leader_election=True)
    assert warnings(weak) == [
        "replication factor 1 < 3",
        "min.insync.replicas 1 < 2: acks=all waits for the leader alone",
        "unclean.leader.election.enable=true: an out-of-sync replica may become leader and drop acknowledged records",
    ]
    assert warnings(Layout(partitions=1, replication_factor=3)) == [
        "min.insync.replicas unknown (DescribeConfigs refused)"
    ]


def test_min_insync_replicas_is_never_raised_to_what_the_topics_replicas_cannot_hold() -> None:
    """Review finding: on a topic of replication factor 1 (auto-created, Kafka's default), `topics apply` raised
    min.insync.replicas to 2: every acks=all write then failed (NOT_ENOUGH_REPLICAS), every delivery was 503
    until MyTPE gave up. At 2 replicas, 2 stops every write while one is out of sync (a broker's restart)."""
    for replicas in (1, 2):
        single = Layout(partitions=6, replication_factor=replicas, min_insync_replicas=1, unclean_leader_election=False)
        steps = plan("t.x", single, WANTED)
        assert all(step.action is None or "configs" not in step.action for step in steps), [s.line for s in steps]
        assert any(f"min.insync.replicas not raised to 2: replication factor {replicas}" in s.line for s in steps)
    chosen = Wanted(partitions=6, replication_factor=2, min_insync_replicas=2)  # asked for as it is: done
    two = Layout(partitions=6, replication_factor=2, min_insync_replicas=1, unclean_leader_election=False)
    assert [s.action for s in plan("t.x", two, chosen)] == [{"configs": {"min.insync.replicas": "2"}}]
    stuck = Layout(partitions=6, replication_factor=1, min_insync_replicas=2, unclean_leader_election=False)
    assert "min.insync.replicas 2 > replication factor 1: no acks=all write can succeed" in warnings(stuck)
