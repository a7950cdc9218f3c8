from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from relay.dedupe.memory import MemoryDedupeStore
from relay.errors import Unavailable
from relay.types import Claim


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock | None = None, *, ttl: float = 60, max_entries: int = 100) -> MemoryDedupeStore:
    return MemoryDedupeStore(ttl=ttl, max_entries=max_entries, clock=clock or Clock())


async def test_commit_makes_later_claims_duplicates() -> None:
    dedupe = store()
    assert await dedupe.claim("a", wait=0.1) is Claim.NEW
    await dedupe.commit("a")
    assert await dedupe.claim("a", wait=0.1) is Claim.DUPLICATE
    assert await dedupe.claim("b", wait=0.1) is Claim.NEW


async def test_release_lets_the_retry_through() -> None:
    dedupe = store()
    assert await dedupe.claim("a", wait=0.1) is Claim.NEW
    await dedupe.release("a")
    assert await dedupe.claim("a", wait=0.1) is Claim.NEW
    assert len(dedupe) == 0


async def test_second_claim_waits_for_the_first_outcome() -> None:
    dedupe = store()
    assert await dedupe.claim("a", wait=1) is Claim.NEW
    second = asyncio.create_task(dedupe.claim("a", wait=5))
    await asyncio.sleep(0.01)
    assert not second.done()
    await dedupe.commit("a")
    assert await second is Claim.DUPLICATE


async def test_second_claim_gets_the_id_when_the_first_fails() -> None:
    dedupe = store()
    await dedupe.claim("a", wait=1)
    second = asyncio.create_task(dedupe.claim("a", wait=5))
    await asyncio.sleep(0.01)
    await dedupe.release("a")
    assert await second is Claim.NEW


async def test_waiting_is_bounded_and_retryable() -> None:
    dedupe = MemoryDedupeStore(ttl=60, max_entries=10)
    await dedupe.claim("a", wait=1)
    with pytest.raises(Unavailable) as caught:
        await dedupe.claim("a", wait=0.05)
    assert (caught.value.status_code, caught.value.cause) == (503, "in_flight")


async def test_concurrent_deliveries_of_one_id_publish_once() -> None:
    dedupe = MemoryDedupeStore(ttl=60, max_entries=10)
    published: list[int] = []

    async def deliver(attempt: int) -> Claim:
        claim = await dedupe.claim("same", wait=2)
        if claim is Claim.NEW:
            await asyncio.sleep(0.01)
            published.append(attempt)
            await dedupe.commit("same")
        return claim

    results = await asyncio.gather(*(deliver(i) for i in range(20)))
    assert results.count(Claim.NEW) == 1
    assert results.count(Claim.DUPLICATE) == 19
    assert len(published) == 1


async def test_done_ids_expire_after_the_ttl() -> None:
    clock = Clock()
    dedupe = store(clock, ttl=60)
    await dedupe.claim("a", wait=0)
    await dedupe.commit("a")
    clock.now += 59
    assert await dedupe.claim("a", wait=0) is Claim.DUPLICATE
    clock.now += 2
    assert await dedupe.claim("a", wait=0) is Claim.NEW
    assert len(dedupe) == 0


async def test_size_cap_evicts_the_oldest_and_counts_it() -> None:
    dedupe = store(max_entries=3)
    for key in "abcd":
        await dedupe.claim(key, wait=0)
        await dedupe.commit(key)
    assert len(dedupe) == 3
    assert dedupe.evicted == 1
    assert await dedupe.claim("a", wait=0) is Claim.NEW
    assert await dedupe.claim("d", wait=0) is Claim.DUPLICATE


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl"):
        MemoryDedupeStore(ttl=0, max_entries=1)


async def test_an_id_remembered_costs_what_docs_guarantees_says() -> None:
    """docs/guarantees.md §6: about 115 to 125 B per id in the store, beside the id's own string; at
    RELAY_DEDUPE_MAX_ENTRIES' 1,000,000 UUID ids (85 B each), about 200 MB. A review found the bound unsaid,
    against the manifests' 512Mi limit. Counted at 44,000 ids, just after the store's tables grew (the most per
    id: 123.5 B measured; 115.4 at 25,000, 50,000 and 200,000), by what the store's own module allocated."""
    store = MemoryDedupeStore(ttl=86400, max_entries=100_000)
    ids = [f"{n:036d}" for n in range(44_000)]  # made first: their strings are not the store's
    mine = [tracemalloc.Filter(True, "*relay/dedupe/memory.py")]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(mine)
        for key in ids:
            assert await store.claim(key, wait=0) is Claim.NEW
            await store.commit(key)
        after = tracemalloc.take_snapshot().filter_traces(mine)
    finally:
        tracemalloc.stop()
    per_id = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / len(ids)
    assert 100 < per_id < 140, per_id
