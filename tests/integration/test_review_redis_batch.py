"""Review of the batched Redis dedupe (relay/dedupe/redis_batch.py): each test states what should hold
and fails on today's code where a finding says so."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from relay.dedupe.redis_store import RedisDedupeStore
from relay.errors import DedupeUnavailable, Unavailable
from relay.types import Claim
from tests.servers import LocalRedis

pytestmark = pytest.mark.integration


def _namespace() -> str:
    return f"review-{uuid.uuid4().hex[:8]}"


async def test_f1_single_shard_cluster_mode_serves_concurrent_claims(tmp_path: Path) -> None:
    """A cluster-mode server holding every slot (a managed single-shard Redis) served per-key commands;
    one script over keys of several slots is refused CROSSSLOT."""
    extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf")]
    with LocalRedis(tmp_path / "cluster", extra=extra) as server:
        admin = Redis.from_url(server.url, decode_responses=True)
        await admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
        for _ in range(100):
            if (await admin.execute_command("CLUSTER", "INFO")).find("cluster_state:ok") >= 0:  # type: ignore[no-untyped-call]
                break
            await asyncio.sleep(0.1)
        await admin.aclose()
        store = RedisDedupeStore(server.url, namespace=_namespace(), ttl=60, lease=30)
        await store.start()
        try:
            assert await store.claim("alone", wait=1) is Claim.NEW  # a batch of one: one slot
            results = await asyncio.gather(*(store.claim(f"d{n}", wait=1) for n in range(20)), return_exceptions=True)
        finally:
            await store.stop()
    assert results == [Claim.NEW] * 20, results


async def test_f2_a_line_the_script_cannot_read_does_not_shift_later_operations_to_its_key(redis: LocalRedis) -> None:
    """Batcher.execute accepts any int; a negative duration is skipped by the script's pattern, and the
    next operation then runs on KEYS[i] of the skipped one."""
    from relay.dedupe.redis_batch import Batcher

    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    key = f"review-{uuid.uuid4().hex}"
    try:
        await asyncio.gather(
            batcher.execute("extend", f"{key}-A", "inflight:a", -1),
            batcher.execute("commit", f"{key}-B", "", 60_000),
            return_exceptions=True,
        )
        a, b = await client.get(f"{key}-A"), await client.get(f"{key}-B")
        single = await batcher.execute("commit", f"{key}-C", "", -5)
        c = await client.get(f"{key}-C")
    finally:
        await batcher.close()
        await client.aclose()
    assert (a, b) == (None, "done"), f"A (never published) is {a!r}, B (published) is {b!r}"
    assert c == "done" or single != "", f"a lone unreadable commit answered {single!r} and wrote nothing"


async def test_f3_a_batch_that_failed_leaves_no_claim_behind(redis: LocalRedis) -> None:
    """'A batch succeeds or fails as one': a claim told it failed must not block its own retry."""
    namespace = _namespace()
    admin = Redis.from_url(redis.url, decode_responses=True)
    await admin.rpush(f"{namespace}:dedupe:poison", "not a dedupe mark")
    store = RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=30)
    await store.start()
    try:
        first = await asyncio.gather(store.claim("A", wait=1), store.claim("poison", wait=1), return_exceptions=True)
        assert all(isinstance(r, DedupeUnavailable) for r in first), first  # A's sender is answered 503
        left = await admin.get(f"{namespace}:dedupe:A")
        try:
            retry: object = await store.claim("A", wait=1)  # MyTPE's retry of A
        except Unavailable as exc:
            retry = exc.cause
    finally:
        await store.stop()
        await admin.aclose()
    assert retry is Claim.NEW, f"A's retry answered {retry!r}; Redis holds {left!r} for A after its 'failed' claim"


async def test_f4_an_answer_lost_to_a_timeout_does_not_block_the_retry(tmp_path: Path) -> None:
    """The script ran, its answer came after the socket timeout: the sender got 503, and its retry?"""
    with LocalRedis(tmp_path / "slow", extra=["--enable-debug-command", "yes"]) as server:
        namespace = _namespace()
        admin = Redis.from_url(server.url, decode_responses=True)
        store = RedisDedupeStore(server.url, namespace=namespace, ttl=60, lease=30, timeout=0.3)
        await store.start()
        try:
            await store.claim("warm", wait=1)
            sleeping = asyncio.create_task(admin.execute_command("DEBUG", "SLEEP", "1"))  # type: ignore[no-untyped-call]
            await asyncio.sleep(0.1)
            with pytest.raises(DedupeUnavailable):
                await store.claim("A", wait=1)
            await sleeping
            left = await admin.get(f"{namespace}:dedupe:A")
            try:
                retry: object = await store.claim("A", wait=1)
            except Unavailable as exc:
                retry = exc.cause
        finally:
            await store.stop()
            await admin.aclose()
    assert retry is Claim.NEW, f"retry answered {retry!r}; Redis holds {left!r} (lease 30 s) for the 503'd claim"


async def test_f5_one_unencodable_delivery_id_fails_others_with_a_store_error(redis: LocalRedis) -> None:
    """A signed body's delivery_id may be any JSON string (payload.parse), a lone surrogate too. The
    deliverer catches DedupeUnavailable only: other deliveries' claim and commit must raise that."""
    store = RedisDedupeStore(redis.url, namespace=_namespace(), ttl=60, lease=30)
    await store.start()
    try:
        assert await store.claim("published", wait=1) is Claim.NEW
        results = await asyncio.gather(
            store.claim("other", wait=1),
            store.commit("published"),
            store.claim("\ud800", wait=1),
            return_exceptions=True,
        )
    finally:
        await store.stop()
    other, commit, _ = results
    assert isinstance(other, DedupeUnavailable | Claim), repr(other)
    assert commit is None or isinstance(commit, DedupeUnavailable), repr(commit)


async def test_f6_close_right_after_execute_fails_the_waiter_instead_of_leaving_it(redis: LocalRedis) -> None:
    from relay.dedupe.redis_batch import Batcher

    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    try:
        reply = batcher.execute("claim", f"review-{uuid.uuid4().hex}", "inflight:a", 30_000)
        await batcher.close()  # the sending task was cancelled before it ever ran
        done, _ = await asyncio.wait([reply], timeout=3)
    finally:
        await client.aclose()
    assert done, "the waiter was neither answered nor failed: it waits forever"


async def test_f7_under_oom_a_known_duplicate_is_still_answered_duplicate(tmp_path: Path) -> None:
    """noeviction and a full Redis: a new claim cannot be written, but a delivery already done is still
    readable. It must stay a duplicate, not fail with the new ones (fail-open would publish it again)."""
    with LocalRedis(tmp_path / "oom", extra=["--maxmemory-policy", "noeviction"]) as server:
        namespace = _namespace()
        admin = Redis.from_url(server.url, decode_responses=True)
        store = RedisDedupeStore(server.url, namespace=namespace, ttl=60, lease=30)
        await store.start()
        try:
            assert await store.claim("done-before", wait=1) is Claim.NEW
            await store.commit("done-before")
            await admin.config_set("maxmemory", 1)  # full: writes refused with OOM
            results = await asyncio.gather(
                store.claim("done-before", wait=1), store.claim("new", wait=1), return_exceptions=True
            )
        finally:
            await store.stop()
            await admin.config_set("maxmemory", 0)
            await admin.aclose()
    assert results[0] is Claim.DUPLICATE, [repr(r) for r in results]


async def test_f8_under_oom_a_pending_publish_still_gets_its_lease_extended(tmp_path: Path) -> None:
    """guarantees.md §3: a claim whose record is still in the producer is kept in flight (extend, a
    PEXPIRE, which a full Redis still allows). A new claim in the same batch must not cost it that."""
    with LocalRedis(tmp_path / "oom", extra=["--maxmemory-policy", "noeviction"]) as server:
        namespace = _namespace()
        admin = Redis.from_url(server.url, decode_responses=True)
        store = RedisDedupeStore(server.url, namespace=namespace, ttl=60, lease=15)
        await store.start()
        try:
            assert await store.claim("pending", wait=1) is Claim.NEW
            await admin.config_set("maxmemory", 1)
            results = await asyncio.gather(
                store.claim("new", wait=1), store.extend("pending", 135), return_exceptions=True
            )
            lease_ms = await admin.pttl(f"{namespace}:dedupe:pending")
        finally:
            await store.stop()
            await admin.config_set("maxmemory", 0)
            await admin.aclose()
    assert lease_ms > 60_000, f"lease left {lease_ms} ms after extend answered {results[1]!r}"
