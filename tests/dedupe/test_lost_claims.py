from __future__ import annotations

from relay.dedupe.lost_claims import LostClaims


def test_a_lost_token_is_taken_once_and_only_by_its_own_value() -> None:
    lost = LostClaims(lease=30)
    lost.add("a", "inflight:1")
    assert not lost.take("a", "inflight:2")  # another attempt's mark: not ours to release
    assert not lost.take("b", "inflight:1")
    assert lost.take("a", "inflight:1")
    assert not lost.take("a", "inflight:1")


def test_a_later_loss_of_the_same_key_keeps_the_earlier_token() -> None:
    """The retry's own claim lost too found the first mark and wrote nothing: the first must stay ours."""
    lost = LostClaims(lease=30)
    lost.add("a", "inflight:1")
    lost.add("a", "inflight:2")
    assert lost.take("a", "inflight:1")
    assert lost.take("a", "inflight:2")


def test_the_remembered_tokens_are_bounded_oldest_first() -> None:
    lost = LostClaims(lease=30, max_tokens=3)
    for n in range(5):
        lost.add(f"k{n}", f"inflight:{n}")
    assert len(lost) == 3
    assert not lost.take("k0", "inflight:0") and not lost.take("k1", "inflight:1")
    assert lost.take("k4", "inflight:4")


def test_tokens_older_than_the_lease_are_forgotten() -> None:
    lost = LostClaims(lease=0)  # every mark has expired in Redis by the next loss
    lost.add("a", "inflight:1")
    lost.add("b", "inflight:2")
    assert not lost.take("a", "inflight:1")
