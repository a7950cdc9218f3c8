"""Parking's policy: bounded by room (entries per source, entries and bytes overall) and age, never by
rate; the oldest make room, taken from the source holding the most; the attempts of one delivery count once."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relay.sources.parking import ENTRY_OVERHEAD, Limits, MemoryParkingLot, Parked


def entry(source: str = "shop", n: int = 0, *, body: bytes = b"{}", at: float = 1000.0, digest: bytes = b"d") -> Parked:
    return Parked(source, f"d-{n}", "1700000000", digest, "transaction.completed", body, at)


async def ids(lot: MemoryParkingLot, source: str) -> list[str]:
    return [parked.delivery_id for parked in await lot.entries(source)]


async def test_the_attempts_of_one_delivery_take_one_entry() -> None:
    lot = MemoryParkingLot(Limits())
    assert await lot.park(entry(n=1, digest=b"attempt-1", at=1000.0)) is None
    assert await lot.park(entry(n=1, digest=b"attempt-2", at=1004.0)) is None  # re-signed 4 s later
    assert await lot.park(entry(n=1, digest=b"attempt-3", at=1012.0)) is None
    kept = await lot.entries("shop")
    expected = [(b"attempt-1", 1000.0), (b"attempt-2", 1004.0), (b"attempt-3", 1012.0)]
    assert [(p.digest, p.received_at) for p in kept] == expected
    usage = await lot.usage()
    assert (usage.entries, usage.oldest_received_at) == (1, 1012.0)


async def test_a_forger_who_knows_a_delivery_id_parks_beside_it_not_over_it() -> None:
    lot = MemoryParkingLot(Limits())
    assert await lot.park(entry(n=1, body=b'{"real":1}', digest=b"real")) is None
    assert await lot.park(entry(n=1, body=b'{"fake":1}', digest=b"forged")) is None
    assert sorted(p.digest for p in await lot.entries("shop")) == [b"forged", b"real"]


async def test_there_is_no_rate_limit() -> None:
    lot = MemoryParkingLot(Limits(rate_per_source=1.0, burst=3))  # accepted, no longer used
    assert [await lot.park(entry(n=n)) for n in range(1000)] == [None] * 1000


async def test_a_source_at_its_cap_pushes_out_its_own_oldest() -> None:
    lot = MemoryParkingLot(Limits(max_per_source=2))
    for n in range(3):
        assert await lot.park(entry("a", n)) is None
    assert await lot.park(entry("b", 0)) is None
    assert await ids(lot, "a") == ["d-1", "d-2"]
    assert await ids(lot, "b") == ["d-0"]
    assert lot.evicted() == {"a": 1}
    assert lot.evicted() == {}  # handed over once


async def test_when_full_the_source_holding_the_most_makes_room() -> None:
    lot = MemoryParkingLot(Limits(max_entries=4, max_per_source=3))
    for n in range(3):
        await lot.park(entry("flooded", n))
    await lot.park(entry("quiet", 0))
    assert await lot.park(entry("other", 0)) is None
    assert await ids(lot, "flooded") == ["d-1", "d-2"]
    assert await ids(lot, "quiet") == ["d-0"]  # a flood elsewhere takes nothing from a smaller source
    assert await ids(lot, "other") == ["d-0"]
    assert lot.evicted() == {"flooded": 1}


async def test_bytes_overall_pushes_out_the_source_holding_the_most_bytes() -> None:
    size = 1000 + ENTRY_OVERHEAD
    lot = MemoryParkingLot(Limits(max_bytes=3 * size))
    assert await lot.park(entry("big", 1, body=b"x" * 1000)) is None
    assert await lot.park(entry("big", 2, body=b"x" * 1000)) is None
    assert await lot.park(entry("small", 1, body=b"x" * 1000)) is None
    assert await lot.park(entry("small", 2, body=b"x" * 10)) is None
    assert await ids(lot, "big") == ["d-2"]
    assert (await lot.usage()).bytes <= 3 * size
    assert await lot.park(entry("huge", 1, body=b"x" * 3 * size)) == "full"  # alone above the bound


async def test_large_forgeries_push_out_each_other_not_the_deliveries_parked_before_them() -> None:
    """Review finding: past the bytes bound the source's oldest entries made room, so 260 unsigned requests of
    256 KiB (the default body bound) aimed at a source pushed out all 2,400 of its 1 KB deliveries parked before
    them: a rotation whose secret came later than a minute of such traffic lost every payment made in between."""
    lot = MemoryParkingLot(Limits())  # the defaults: 64 MiB, 10,000 entries, 5,000 per source
    real = [entry("shop", n, body=b"r" * 1000, at=1000.0 + n) for n in range(2400)]
    for parked in real:
        assert await lot.park(parked) is None
    forged = b"f" * (256 * 1024 - 1)
    for n in range(260):
        assert await lot.park(entry("shop", 10_000 + n, body=forged, digest=b"f", at=5000.0 + n)) is None
    held = set(await ids(lot, "shop"))
    assert held >= {parked.delivery_id for parked in real}
    assert 0 < len(held - {parked.delivery_id for parked in real}) < 260  # forgeries made room for forgeries
    usage = await lot.usage()
    assert usage.bytes <= Limits().max_bytes
    assert usage.bytes == sum(parked.size for parked in await lot.entries("shop"))


async def test_deliveries_about_the_forgeries_size_push_out_older_forgeries_not_each_other() -> None:
    """Review of the fix above: with the largest entry going first, 50 deliveries of 10 KB after 220 forgeries of
    9 KB filled the bytes bound pushed out each other: one was left. Sizes within a factor of two are one class,
    and within it the oldest goes."""
    lot = MemoryParkingLot(Limits(max_bytes=2_000_000))
    for n in range(220):
        assert await lot.park(entry("shop", 10_000 + n, body=b"f" * 9000, digest=b"f", at=float(n))) is None
    real = [entry("shop", n, body=b"r" * 10_000, at=1000.0 + n) for n in range(50)]
    for parked in real:
        assert await lot.park(parked) is None
    assert set(await ids(lot, "shop")) >= {parked.delivery_id for parked in real}


async def test_the_largest_class_goes_first_oldest_within_it_after_removals_and_new_attempts() -> None:
    large, small = entry(n=90, body=b"L" * 5000).size, entry(body=b"s" * 100).size  # ids of these lengths
    lot = MemoryParkingLot(Limits(max_bytes=4 * large + 10 * small))
    for n in range(4):
        assert await lot.park(entry("shop", 90 + n, body=b"L" * 5000, at=90.0 + n)) is None
    for n in range(10):
        assert await lot.park(entry("shop", n, body=b"s" * 100, at=float(n))) is None
    await lot.remove(entry("shop", 90, body=b"L" * 5000))
    assert await lot.park(entry("shop", 91, body=b"L" * 5000, at=95.0, digest=b"again")) is None  # now its newest
    assert lot.evicted() == {}
    parked = [f"d-{n}" for n in range(10)]
    gone = []
    for n in range(10, 80):  # small ones: the large make room first (oldest first, d-91 last), then the small
        assert await lot.park(entry("shop", n, body=b"s" * 100, at=float(n))) is None
        parked.append(f"d-{n}")
        held = set(await ids(lot, "shop"))
        gone += [name for name in ("d-92", "d-93", "d-91") if name not in held and name not in gone]
    assert gone == ["d-92", "d-93", "d-91"]
    assert await ids(lot, "shop") == parked[-len(await ids(lot, "shop")) :]  # then the oldest small ones


async def test_after_a_flood_a_rotation_still_parks_every_delivery() -> None:
    lot = MemoryParkingLot(Limits(max_entries=300, max_per_source=200))
    for n in range(10_000):  # forgeries: fresh ids, each once
        await lot.park(entry("shop", n, body=b"forged", digest=b"f", at=float(n)))
    await lot.park(entry("kiosk", 0, body=b"k"))
    genuine = [entry("shop", 100_000 + n, body=b"real", at=20_000.0 + n) for n in range(150)]
    for attempt in range(3):  # MyTPE's three attempts of each, re-signed
        for parked in genuine:
            await lot.park(replace(parked, digest=bytes([attempt]), received_at=parked.received_at + attempt))
    assert set(await ids(lot, "shop")) >= {p.delivery_id for p in genuine}
    assert await ids(lot, "kiosk") == ["d-0"]
    assert (await lot.usage()).entries <= 300


async def test_expiry_counts_per_source_and_frees_room() -> None:
    lot = MemoryParkingLot(Limits(max_age_seconds=60, max_per_source=1))
    await lot.park(entry("a", 1, at=1000.0))
    await lot.park(entry("b", 1, at=1030.0))
    assert await lot.expire(1059.0) == {}
    assert await lot.expire(1061.0) == {"a": 1}
    assert (await lot.usage()).oldest_received_at == 1030.0
    assert await lot.park(entry("a", 2, at=1061.0)) is None
    assert lot.evicted() == {}


async def test_remove_is_idempotent() -> None:
    lot = MemoryParkingLot(Limits())
    parked = entry(n=1)
    await lot.park(parked)
    await lot.remove(parked)
    await lot.remove(parked)
    usage = await lot.usage()
    assert (usage.entries, usage.bytes, usage.oldest_received_at) == (0, 0, None)
    assert await lot.entries("shop") == []


async def test_a_later_attempt_keeps_an_earlier_one_that_may_be_the_one_that_verifies() -> None:
    # a regenerate applied late: attempt 1 is signed with the secret rotate installs, attempt 2 with
    # one nobody holds; reverify must still find attempt 1 (review finding 1)
    lot = MemoryParkingLot(Limits())
    assert await lot.park(entry(n=1, digest=b"signed-with-B", at=1000.0)) is None
    assert await lot.park(entry(n=1, digest=b"signed-with-C", at=1004.0)) is None
    assert sorted(p.digest for p in await lot.entries("shop")) == [b"signed-with-B", b"signed-with-C"]
    assert (await lot.usage()).entries == 1


async def test_attempts_are_bounded_and_the_first_is_always_kept() -> None:
    lot = MemoryParkingLot(Limits())
    for n in range(10):  # a forger resending a body it saw, with junk signatures
        body = bytes(bytearray(b"{}"))  # a new body object each time, as from the wire
        assert await lot.park(entry(n=1, body=body, digest=f"try-{n}".encode(), at=1000.0 + n)) is None
    assert await lot.park(entry(n=1, digest=b"try-9", at=1020.0)) is None  # the same signature again: kept once
    assert [p.digest for p in await lot.entries("shop")] == [b"try-0", b"try-7", b"try-8", b"try-9"]
    usage = await lot.usage()
    assert (usage.entries, usage.bytes, usage.oldest_received_at) == (1, entry(n=1).size, 1009.0)
    assert len({id(p.body) for p in await lot.entries("shop")}) == 1  # the body held once
    await lot.remove(entry(n=1, digest=b"try-8"))  # any attempt names the entry: all of it leaves
    assert await lot.entries("shop") == []


async def test_a_flood_spread_over_other_sources_takes_nothing_from_a_source_within_its_fair_share() -> None:
    """Review finding 4, the documented limit: with forgeries on k other sources, a rotating source
    keeps all its entries while it holds at most RELAY_PARKING_MAX_ENTRIES / (k + 1) of them."""
    lot = MemoryParkingLot(Limits(max_entries=12_500))  # 12,500 / 5 sources = 2,500 >= 2,400
    forged = 0
    for second in range(60):  # a regeneration at 40/s for 60 s, and 200 forgeries/s over 4 other sources
        for n in range(40):
            assert await lot.park(entry("rotating", second * 40 + n, body=b"x" * 900, at=float(second))) is None
        for _ in range(200):
            forged += 1
            assert await lot.park(entry(f"forged-{forged % 4}", forged, body=b"", at=float(second))) is None
    assert len(await lot.entries("rotating")) == 2400
    assert "rotating" not in lot.evicted()


async def test_an_entry_counts_its_delivery_id_and_event_beside_its_body() -> None:
    """Review finding 9: 200-character ids and events (the most the headers allow) were not counted."""
    lot = MemoryParkingLot(Limits())
    big = Parked("shop", "i" * 200, "1700000000", b"d" * 32, "e" * 200, b"{}", 1000.0)
    assert await lot.park(big) is None
    assert (await lot.usage()).bytes == big.size == 2 + 200 + 200 + ENTRY_OVERHEAD


async def test_entries_that_end_with_the_process_are_said_at_stop(caplog: pytest.LogCaptureFixture) -> None:
    """Review finding: a memory lot's entries, one that verified and waited for Kafka included, ended with the
    process without a word."""
    lot = MemoryParkingLot(Limits())
    await lot.stop()
    assert "parked request" not in caplog.text  # nothing held: nothing said
    await lot.park(entry(n=1))
    await lot.park(entry(n=2))
    await lot.stop()
    assert "parking: 2 parked request(s) end with this process" in caplog.text


async def test_an_attempt_whose_event_header_differs_keeps_its_entry_in_its_class() -> None:
    """Review finding: an entry's key is its source, id and body, but its size counts its event too, and a new
    attempt looked its class up from its own size: the same id and body sent again with a longer event raised
    KeyError (a 500 and a traceback, every time)."""
    lot = MemoryParkingLot(Limits())
    first = entry("shop", 1, body=b"x" * 700)  # 980 B counted, 1,159 with the longer event: two classes
    assert await lot.park(first) is None
    again = Parked("shop", "d-1", "1700000001", b"e", "e" * 200, b"x" * 700, 1001.0)
    assert again.key == first.key and again.size != first.size
    assert await lot.park(again) is None
    assert [p.digest for p in await lot.entries("shop")] == [b"d", b"e"]
    await lot.remove(again)  # as the request gave it, its event's length included
    assert (await lot.usage()).entries == 0 and (await lot.usage()).bytes == 0
