"""Parking's bounds, each one: rate per source, entries per source, entries and bytes overall, age."""

from __future__ import annotations

from relay.sources.parking import ENTRY_OVERHEAD, Limits, MemoryParkingLot, Parked, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(source: str = "shop", n: int = 0, *, body: bytes = b"{}", at: float = 1000.0, digest: bytes = b"d") -> Parked:
    return Parked(source, f"d-{n}", "1700000000", digest, "transaction.completed", body, at)


async def test_the_same_request_parks_once_and_a_forgery_cannot_displace_it() -> None:
    lot = MemoryParkingLot(Limits())
    assert await lot.park(entry(n=1)) is None
    assert await lot.park(entry(n=1)) is None
    assert await lot.park(entry(n=1, digest=b"forged")) is None  # same id, other signature: its own entry
    assert (await lot.usage()).entries == 2


async def test_the_rate_is_per_source() -> None:
    clock = Clock()
    lot = MemoryParkingLot(Limits(rate_per_source=1.0, burst=3), clock=clock)
    assert [await lot.park(entry("flood", n)) for n in range(5)] == [None, None, None, "rate_limited", "rate_limited"]
    assert await lot.park(entry("shop", 1)) is None  # another source is not slowed by the flood
    clock.now += 1.0
    assert await lot.park(entry("flood", 9)) is None


async def test_entries_per_source_and_overall() -> None:
    lot = MemoryParkingLot(Limits(max_entries=3, max_per_source=2, burst=100))
    assert [await lot.park(entry("a", n)) for n in range(3)] == [None, None, "source_full"]
    assert await lot.park(entry("b", 1)) is None
    assert await lot.park(entry("c", 1)) == "full"


async def test_bytes_overall() -> None:
    size = 1000 + ENTRY_OVERHEAD
    lot = MemoryParkingLot(Limits(max_bytes=2 * size, burst=100))
    assert await lot.park(entry(n=1, body=b"x" * 1000)) is None
    assert await lot.park(entry(n=2, body=b"x" * 1000)) is None
    assert await lot.park(entry(n=3, body=b"x" * 10)) == "full"
    assert (await lot.usage()).bytes == 2 * size


async def test_expiry_counts_per_source_and_frees_room() -> None:
    lot = MemoryParkingLot(Limits(max_age_seconds=60, max_per_source=1, burst=100))
    await lot.park(entry("a", 1, at=1000.0))
    await lot.park(entry("b", 1, at=1030.0))
    assert await lot.expire(1059.0) == {}
    assert await lot.expire(1061.0) == {"a": 1}
    assert (await lot.usage()).oldest_received_at == 1030.0
    assert await lot.park(entry("a", 2, at=1061.0)) is None


async def test_remove_is_idempotent() -> None:
    lot = MemoryParkingLot(Limits())
    parked = entry(n=1)
    await lot.park(parked)
    await lot.remove(parked)
    await lot.remove(parked)
    usage = await lot.usage()
    assert (usage.entries, usage.bytes, usage.oldest_received_at) == (0, 0, None)
    assert await lot.entries("shop") == []


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 2, clock)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 0.5
    assert [bucket.take(), bucket.take()] == [True, False]
    clock.now += 100
    assert [bucket.take() for _ in range(3)] == [True, True, False]
