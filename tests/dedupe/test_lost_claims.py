from __future__ import annotations

from relay.dedupe.lost_claims import LostClaims


def test_a_lost_token_is_taken_once_and_only_by_its_own_value() -> None:
    lost = LostClaims(lease=30)
    lost.add("a", "inflight:1")
    assert not lost.take("a", "inflight:2")  # another attempt's mark: not ours to release
    assert not lost.take("b", "inflight:1")
    assert lost.take("a", "inflight:1")
    assert not lost.take("a", "inflight:1")


def test_a_later_loss_of_the_same_key_replaces_the_token() -> None:
    lost = LostClaims(lease=30)
    lost.add("a", "inflight:1")
    lost.add("a", "inflight:2")
    assert not lost.take("a", "inflight:1")
    assert lost.take("a", "inflight:2")


def test_tokens_older_than_the_lease_are_forgotten() -> None:
    lost = LostClaims(lease=0)  # every mark has expired in Redis by the next loss
    lost.add("a", "inflight:1")
    lost.add("b", "inflight:2")
    assert not lost.take("a", "inflight:1")
