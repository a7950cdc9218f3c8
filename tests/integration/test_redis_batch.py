"""Dedupe operations of concurrent deliveries share one script call to a real redis-server, each with its own reply."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from relay.dedupe.factory import dedupe_from_settings
from relay.dedupe.factory import namespace as key_namespace
from relay.dedupe.redis_batch import Batcher
from relay.dedupe.redis_script import SCRIPT, replies
from relay.dedupe.redis_store import RedisDedupeStore
from relay.errors import DedupeUnavailable, Unavailable
from relay.types import Claim
from tests.conftest import make_settings
from tests.lossy_proxy import LossyProxy
from tests.servers import NO_SYNC_DELAY, LocalRedis, free_port

pytestmark = pytest.mark.integration


async def test_concurrent_deliveries_take_fewer_commands_than_deliveries(
    redis: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cost is per command, in a pipeline too: count the commands it packs."""
    packed: list[Any] = []
    pack = AbstractConnection.pack_command

    def counting(self: AbstractConnection, *args: Any) -> list[bytes]:
        packed.append(args[0])
        return pack(self, *args)

    monkeypatch.setattr(AbstractConnection, "pack_command", counting)
    store = RedisDedupeStore(redis.url, namespace=f"test-{uuid.uuid4().hex[:8]}", ttl=60, lease=30)
    await store.start()
    try:
        await store.claim("warm-up", wait=1)  # connects, loads the script
        packed.clear()
        ids = [f"d{n}" for n in range(200)]
        claims = await asyncio.gather(*(store.claim(i, wait=1) for i in ids))
        await asyncio.gather(*(store.commit(i) for i in ids))
        again = await asyncio.gather(*(store.claim(i, wait=1) for i in ids))
    finally:
        await store.stop()
    assert claims == [Claim.NEW] * 200 and again == [Claim.DUPLICATE] * 200
    assert len(packed) < 200, f"{len(packed)} commands for 600 operations issued together"


async def test_operations_of_one_batch_run_in_the_order_issued(redis: LocalRedis) -> None:
    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    key = f"test-{uuid.uuid4().hex}"
    try:
        replies = await asyncio.gather(
            batcher.execute("claim", key, "inflight:a", 30_000),
            batcher.execute("claim", key, "inflight:b", 30_000),
            batcher.execute("release", key, "inflight:b", 0),
            batcher.execute("extend", key, "inflight:a", 60_000),
            batcher.execute("commit", key, "", 60_000),
            batcher.execute("claim", key, "inflight:c", 30_000),
            batcher.execute("release", key, "inflight:a", 0),
        )
        alone = await batcher.execute("claim", f"{key}-2", "inflight:d", 30_000)  # at low load it leaves at once
        assert 59_000 < await client.pttl(key) <= 60_000
    finally:
        await batcher.close()
        await client.aclose()
    assert replies == ["new", "inflight:a", "0", "1", "1", "done", "0"]
    assert alone == "new"


async def test_an_error_reply_fails_only_its_operation_and_the_next_batch_is_served(redis: LocalRedis) -> None:
    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    key = f"test-{uuid.uuid4().hex}"
    try:
        await client.rpush(f"{key}-list", "not a dedupe mark")
        results = await asyncio.gather(
            batcher.execute("claim", f"{key}-1", "inflight:a", 30_000),
            batcher.execute("claim", f"{key}-list", "inflight:b", 30_000),
            batcher.execute("commit", f"{key}-list", "", 60_000),
            batcher.execute("commit", f"{key}-3", "", 60_000),
            return_exceptions=True,
        )
        assert results[0] == "new" and results[3] == "1", results
        assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1]), results
        assert results[2] == "1", results  # SET replaces a key of any type
        assert await batcher.execute("claim", f"{key}-2", "inflight:c", 30_000) == "new"
    finally:
        await batcher.close()
        await client.aclose()


async def test_the_script_goes_by_digest_and_by_text_to_a_server_that_lost_it(redis: LocalRedis) -> None:
    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    key = f"test-{uuid.uuid4().hex}"
    try:
        assert await batcher.execute("claim", f"{key}-1", "inflight:a", 30_000) == "new"
        by_digest = await script_calls(client, "evalsha")
        assert await batcher.execute("claim", f"{key}-2", "inflight:b", 30_000) == "new"
        assert await script_calls(client, "evalsha") == by_digest + 1, "a known script is not sent again"
        await client.script_flush()  # what a restart or a failover to a fresh replica does
        assert await batcher.execute("claim", f"{key}-3", "inflight:c", 30_000) == "new"
        assert await client.get(f"{key}-3") == "inflight:c", "run once, by text"
        assert await batcher.execute("claim", f"{key}-3", "inflight:d", 30_000) == "inflight:c"
    finally:
        await batcher.close()
        await client.aclose()


async def script_calls(client: Redis, command: str) -> int:
    stats: dict[str, dict[str, Any]] = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_an_unreachable_server_fails_every_operation_with_a_redis_error() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    batcher = Batcher(client)
    try:
        calls = (batcher.execute("claim", f"k{n}", "inflight:a", 1000) for n in range(5))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(result, RedisError | OSError) for result in results), results
    finally:
        await batcher.close()
        await client.aclose()


class BrokenScriptClient:
    """A client whose script calls fail with an error that is not a RedisError."""

    async def evalsha(self, *args: Any) -> Any:
        raise TypeError("not a Redis error")

    eval = evalsha


async def test_an_unexpected_error_reaches_every_caller_as_a_store_error_instead_of_leaving_them_waiting() -> None:
    batcher = Batcher(cast(Redis, BrokenScriptClient()))
    calls = (batcher.execute("claim", f"k{n}", "inflight:a", 1000) for n in range(3))
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert all(isinstance(r, RedisError) and isinstance(r.__cause__, TypeError) for r in results), results
    with pytest.raises(RedisError):  # the batcher is not stuck: a later operation is sent, and answered
        await asyncio.wait_for(batcher.execute("commit", "after", "", 1000), 5)


# Found in review (the batch was all-or-nothing, and its script could skip a line): each test failed
# on that code.


def _namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_a_single_shard_cluster_mode_server_serves_concurrent_claims(tmp_path: Path) -> None:
    """A cluster-mode server holding every slot (a managed single-shard Redis) refuses one script call over
    keys of several slots (CROSSSLOT): the batch then goes one call per slot. (Failed with every claim
    answered ClusterCrossSlotError.)"""
    with LocalRedis(tmp_path / "cluster", cluster=True) as server:
        admin = Redis.from_url(server.url, decode_responses=True)
        await admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
        for _ in range(100):
            if (await admin.execute_command("CLUSTER", "INFO")).find("cluster_state:ok") >= 0:  # type: ignore[no-untyped-call]
                break
            await asyncio.sleep(0.1)
        store = RedisDedupeStore(server.url, namespace=_namespace(), ttl=60, lease=30)
        await store.start()
        try:
            assert await store.claim("alone", wait=1) is Claim.NEW  # a batch of one: one slot
            results = await asyncio.gather(*(store.claim(f"d{n}", wait=1) for n in range(20)), return_exceptions=True)
            await admin.script_flush()  # a restart: the calls per slot go by text
            by_text = await script_calls(admin, "eval")
            await asyncio.gather(*(store.commit(f"d{n}") for n in range(20)))
            assert await script_calls(admin, "eval") > by_text
            again = await asyncio.gather(*(store.claim(f"d{n}", wait=1) for n in range(20)))
        finally:
            await store.stop()
            await admin.aclose()
    assert results == [Claim.NEW] * 20, results
    assert again == [Claim.DUPLICATE] * 20, again


async def test_execute_refuses_an_operation_the_script_could_not_read(redis: LocalRedis) -> None:
    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    try:
        for op, token, milliseconds in [
            ("extend", "inflight:a", -1),
            ("commit", "", 0),
            ("claim", "inflight:a", 1.5),
            ("delete", "inflight:a", 1000),
            ("claim", "inflight:a\ncommit 1000 ", 1000),
        ]:
            with pytest.raises(ValueError):
                batcher.execute(op, f"test-{uuid.uuid4().hex}", token, milliseconds)  # type: ignore[arg-type]
    finally:
        await batcher.close()
        await client.aclose()


async def test_a_line_the_script_cannot_read_fails_alone_and_shifts_no_key(redis: LocalRedis) -> None:
    """An unreadable line was skipped, and the next operation ran on its key: extend(A, -1) then
    commit(B) marked A done and left B unmarked."""
    client = Redis.from_url(redis.url, decode_responses=True)
    key = f"test-{uuid.uuid4().hex}"
    try:
        answer = await client.eval(
            SCRIPT, 3, f"{key}-A", f"{key}-B", f"{key}-C", "extend -1 inflight:a\ncommit 60000 \nbogus\n"
        )
        a, b, c = await client.get(f"{key}-A"), await client.get(f"{key}-B"), await client.get(f"{key}-C")
    finally:
        await client.aclose()
    extend, commit, bogus = replies(answer, 3)
    assert (a, b, c) == (None, "done", None), f"A (never published) is {a!r}, B (published) is {b!r}"
    assert isinstance(extend, ResponseError) and isinstance(bogus, ResponseError), (extend, bogus)
    assert commit == "1"


async def test_an_operation_that_failed_leaves_the_others_of_its_batch_answered_as_applied(redis: LocalRedis) -> None:
    """Redis does not roll a script back: a claim applied before another operation's error was answered
    failed, and its retry got 503 in_flight until the lease ended."""
    namespace = _namespace()
    admin = Redis.from_url(redis.url, decode_responses=True)
    await admin.rpush(f"{namespace}:dedupe:poison", "not a dedupe mark")
    store = RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=30)
    await store.start()
    try:
        first = await asyncio.gather(store.claim("A", wait=1), store.claim("poison", wait=1), return_exceptions=True)
        held = await admin.get(f"{namespace}:dedupe:A")
        await store.release("A")  # the publish failed: MyTPE's retry publishes
        retry = await store.claim("A", wait=1)
    finally:
        await store.stop()
        await admin.aclose()
    assert first[0] is Claim.NEW and isinstance(first[1], DedupeUnavailable), first
    assert isinstance(held, str) and held.startswith("inflight:"), held
    assert retry is Claim.NEW


async def _lose_the_answer(store: RedisDedupeStore, proxy: LossyProxy, key: str) -> None:
    """One claim of `key` that reaches Redis, its answer dropped on the way back: the caller gets
    DedupeUnavailable after the store's socket timeout. The connection is opened first (a ping), so the
    request whose answer is lost is the claim's script, not a new connection's handshake."""
    assert await store.ping()
    async with proxy.losing():
        with pytest.raises(DedupeUnavailable):
            await store.claim(key, wait=1)


@contextlib.contextmanager
def _releases_refused(store: RedisDedupeStore) -> Iterator[None]:
    """Every release of `store` fails before it reaches Redis (its connection lost), while the block runs."""
    send = store._send

    async def refused(op: str, *args: Any) -> Any:
        if op == "release":
            raise RedisError("connection lost")
        return await send(op, *args)

    store._send = refused  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        store._send = send  # type: ignore[method-assign]


async def _attempt(store: RedisDedupeStore, key: str) -> object:
    try:
        return await store.claim(key, wait=1)
    except Unavailable as exc:
        return exc.cause


async def test_a_claim_whose_answer_was_lost_does_not_block_its_retry_on_the_same_replica(redis: LocalRedis) -> None:
    """The script ran, its answer was lost (the socket timed out first): the sender got 503, and its retry got
    503 in_flight for the whole lease (30 s). Lost twice (the retry's own claim found the first mark and
    wrote nothing), the third attempt still recognises the mark Redis holds."""
    async with LossyProxy("127.0.0.1", redis.port) as proxy:
        namespace = _namespace()
        admin = Redis.from_url(redis.url, decode_responses=True)
        store = RedisDedupeStore(proxy.url, namespace=namespace, ttl=60, lease=30, timeout=0.3)
        await store.start()
        try:
            await store.claim("warm", wait=1)
            await _lose_the_answer(store, proxy, "A")
            left = await admin.get(f"{namespace}:dedupe:A")
            retry = await _attempt(store, "A")
            await _lose_the_answer(store, proxy, "B")
            first = await admin.get(f"{namespace}:dedupe:B")
            await _lose_the_answer(store, proxy, "B")  # found the first mark: nothing written
            held = await admin.get(f"{namespace}:dedupe:B")
            third = await _attempt(store, "B")
        finally:
            await store.stop()
            await admin.aclose()
    assert isinstance(left, str) and left.startswith("inflight:"), left  # the lost claim ran
    assert retry is Claim.NEW, f"retry answered {retry!r}; Redis holds {left!r} (lease 30 s) for the 503'd claim"
    assert isinstance(first, str) and first.startswith("inflight:"), first
    assert first == held, (first, held)
    assert third is Claim.NEW, f"third attempt answered {third!r}; Redis holds this replica's {held!r} for 30 s"


async def test_with_fail_open_a_lost_claims_mark_is_kept_while_its_attempt_publishes(redis: LocalRedis) -> None:
    """RELAY_DEDUPE_FAIL_OPEN: the deliverer goes on publishing after the claim's DedupeUnavailable, so the
    mark Redis holds is all that stands between its pending record and a second publish. The retry on
    this replica must not release it (it waits for the lease, as on another replica)."""
    async with LossyProxy("127.0.0.1", redis.port) as proxy:
        settings = make_settings(dedupe_url=proxy.url, dedupe_fail_open=True)
        namespace = key_namespace(settings)
        admin = Redis.from_url(redis.url, decode_responses=True)
        store = cast(RedisDedupeStore, dedupe_from_settings(settings))
        await store.start()
        try:
            await store.claim("warm", wait=1)
            await _lose_the_answer(store, proxy, "A")
            held = await admin.get(f"{namespace}:dedupe:A")
            retry = await _attempt(store, "A")  # MyTPE's retry while the first record is still pending
        finally:
            await store.stop()
            await admin.aclose()
    assert isinstance(held, str) and held.startswith("inflight:"), held
    assert retry == "in_flight", f"the retry was answered {retry!r} while {held!r}'s attempt publishes (fail-open)"


async def test_a_lost_claims_release_that_fails_leaves_it_recognised_for_the_next_retry(redis: LocalRedis) -> None:
    """The retry found its lost mark, but releasing it failed: the mark is still there, so the next retry
    on this replica must still recognise it (not wait out the lease as 503 in_flight)."""
    async with LossyProxy("127.0.0.1", redis.port) as proxy:
        namespace = _namespace()
        admin = Redis.from_url(redis.url, decode_responses=True)
        store = RedisDedupeStore(proxy.url, namespace=namespace, ttl=60, lease=30, timeout=0.3)
        await store.start()
        try:
            await store.claim("warm", wait=1)
            await _lose_the_answer(store, proxy, "A")
            with _releases_refused(store), pytest.raises(DedupeUnavailable):
                await store.claim("A", wait=1)
            retry = await _attempt(store, "A")
        finally:
            await store.stop()
            await admin.aclose()
    assert retry is Claim.NEW, f"the next retry answered {retry!r}"


async def test_with_fail_open_an_attempt_whose_claim_was_lost_extends_the_mark_it_publishes_under(
    redis: LocalRedis,
) -> None:
    """Failing open, the attempt publishes under the mark its lost claim may have set: a late Kafka
    acknowledgement extends that mark, so a retry cannot publish again once the short lease ends."""
    async with LossyProxy("127.0.0.1", redis.port) as proxy:
        settings = make_settings(dedupe_url=proxy.url, dedupe_fail_open=True)
        namespace = key_namespace(settings)
        admin = Redis.from_url(redis.url, decode_responses=True)
        store = cast(RedisDedupeStore, dedupe_from_settings(settings))
        await store.start()
        try:
            await store.claim("warm", wait=1)
            await _lose_the_answer(store, proxy, "A")
            await store.extend("A", 300)  # the deliverer's settlement of a pending publish
            left = await admin.pttl(f"{namespace}:dedupe:A")
        finally:
            await store.stop()
            await admin.aclose()
    assert left > settings.dedupe_lease_seconds * 1000, f"the mark expires in {left} ms, with the lease"


async def test_one_unencodable_delivery_id_fails_only_its_own_operation(redis: LocalRedis) -> None:
    """A lone surrogate in one delivery id raised UnicodeEncodeError in every operation of its batch,
    which the deliverer (it catches DedupeUnavailable) did not expect."""
    store = RedisDedupeStore(redis.url, namespace=_namespace(), ttl=60, lease=30)
    await store.start()
    try:
        assert await store.claim("published", wait=1) is Claim.NEW
        other, commit, odd = await asyncio.gather(
            store.claim("other", wait=1),
            store.commit("published"),
            store.claim("\ud800", wait=1),
            return_exceptions=True,
        )
        again = await store.claim("published", wait=1)
    finally:
        await store.stop()
    assert other is Claim.NEW and commit is None and again is Claim.DUPLICATE, (other, commit, again)
    assert isinstance(odd, DedupeUnavailable), repr(odd)


async def test_close_right_after_execute_fails_the_waiter_instead_of_leaving_it(redis: LocalRedis) -> None:
    """The sending task, cancelled before it ever ran, left the queued operation unanswered forever."""
    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    try:
        reply = batcher.execute("claim", f"test-{uuid.uuid4().hex}", "inflight:a", 30_000)
        await batcher.close()
        done, _ = await asyncio.wait([reply], timeout=3)
        after = batcher.execute("claim", f"test-{uuid.uuid4().hex}", "inflight:b", 30_000)
    finally:
        await client.aclose()
    assert done, "the waiter was neither answered nor failed: it waits forever"
    assert isinstance(reply.exception(), RedisError) and isinstance(after.exception(), RedisError)


async def test_under_oom_a_known_duplicate_is_still_answered_duplicate(tmp_path: Path) -> None:
    """noeviction and a full Redis: a new claim cannot be written, but a delivery already done is still
    readable. It stays a duplicate (it failed with the new claim's OOM, and fail-open would publish it)."""
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
    assert isinstance(results[1], DedupeUnavailable), [repr(r) for r in results]


async def test_under_oom_a_pending_publish_still_gets_its_lease_extended(tmp_path: Path) -> None:
    """guarantees.md §3: a claim whose record is still in the producer is kept in flight (extend, a
    PEXPIRE, which a full Redis still allows). A new claim in the same batch cost it that."""
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


async def test_a_replica_refusing_writes_fails_the_whole_call_with_readonly(tmp_path: Path) -> None:
    """A demoted master answers READONLY to every write. The call as a whole must fail with it (it wrote
    nothing): redis-py's Sentinel connection reconnects to the new master only on a READONLY reply."""
    with LocalRedis(tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(free_port())]) as replica:
        client = Redis.from_url(replica.url, decode_responses=True)
        batcher = Batcher(client)
        key = f"test-{uuid.uuid4().hex}"
        try:
            results = await asyncio.gather(
                batcher.execute("extend", f"{key}-1", "inflight:a", 30_000),  # a read: it alone would answer
                batcher.execute("claim", f"{key}-2", "inflight:b", 30_000),
                return_exceptions=True,
            )
        finally:
            await batcher.close()
            await client.aclose()
    assert all(isinstance(result, ReadOnlyError) for result in results), results


async def test_a_replica_answers_a_claim_of_a_key_it_holds_as_a_read(tmp_path: Path) -> None:
    """The claim writes first (SET NX); refused with READONLY, it still answers a key that is there, as
    reading first did: a delivery done before a master was demoted stays a duplicate on it. Only a claim
    of an absent key, which must write, fails the call."""
    with LocalRedis(tmp_path / "master", extra=NO_SYNC_DELAY) as master:
        admin = Redis.from_url(master.url, decode_responses=True)
        key = f"test-{uuid.uuid4().hex}"
        await admin.set(key, "done")
        await admin.aclose()
        with LocalRedis(tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(master.port)]) as replica:
            client = Redis.from_url(replica.url, decode_responses=True)
            batcher = Batcher(client)
            try:
                deadline = time.monotonic() + 60  # asked until then, never given a time
                while await client.get(key) != "done":
                    assert time.monotonic() < deadline, "the replica never synced from its master"
                    await asyncio.sleep(0.05)
                held = await batcher.execute("claim", key, "inflight:a", 30_000)
                absent = await asyncio.gather(
                    batcher.execute("claim", f"{key}-absent", "inflight:b", 30_000), return_exceptions=True
                )
            finally:
                await batcher.close()
                await client.aclose()
    assert held == "done"
    assert isinstance(absent[0], ReadOnlyError), absent


async def _script_commands(admin: Redis) -> int:
    stats = await admin.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("get", "set", "del", "pexpire"))


async def test_a_new_delivery_costs_two_commands_and_a_duplicates_claim_two(redis: LocalRedis) -> None:
    """docs/performance.md, Sizing: a new delivery's claim and commit run two commands in the script (SET NX,
    SET); a duplicate's claim two (SET NX refused, GET)."""
    admin = Redis.from_url(redis.url, decode_responses=True)
    store = RedisDedupeStore(redis.url, namespace=_namespace(), ttl=60, lease=30)
    await store.start()
    try:
        before = await _script_commands(admin)
        assert await store.claim("delivery", wait=1) is Claim.NEW
        await store.commit("delivery")
        new = await _script_commands(admin)
        assert await store.claim("delivery", wait=1) is Claim.DUPLICATE
        duplicate = await _script_commands(admin)
    finally:
        await store.stop()
        await admin.aclose()
    assert (new - before, duplicate - new) == (2, 2)


async def test_a_user_refused_set_still_has_a_claim_of_a_key_there_answered(tmp_path: Path) -> None:
    """The claim writes first (SET NX); refused by the ACL, it still answers a key that is there, as reading
    first did, and fails (that claim alone) only for an absent key, which must be written."""
    password = "reader-3Fy"
    users = ["--user", "default", "on", "nopass", "~*", "+@all", "--user", "reader", "on", f">{password}"]
    with LocalRedis(tmp_path / "acl", extra=[*users, "~*", "+@all", "-set"]) as server:
        admin = Redis.from_url(server.url, decode_responses=True)
        key = f"test-{uuid.uuid4().hex}"
        await admin.set(key, "done")
        await admin.aclose()
        client = Redis.from_url(server.url, username="reader", password=password, decode_responses=True)
        batcher = Batcher(client)
        try:
            results = await asyncio.gather(
                batcher.execute("claim", key, "inflight:a", 30_000),
                batcher.execute("claim", f"{key}-absent", "inflight:b", 30_000),
                return_exceptions=True,
            )
        finally:
            await batcher.close()
            await client.aclose()
    assert results[0] == "done", results
    assert isinstance(results[1], ResponseError), results


async def test_a_release_that_fails_leaves_the_mark_recognised_by_the_next_claim_here(redis: LocalRedis) -> None:
    """Review finding: Kafka refused a record for good, and the release of its claim failed (it never reached Redis):
    the release forgot the token, so the retry on this replica, and the same process's DLQ claim of the same
    key, found a mark it could not tell from another attempt's and waited out the lease as 503 in_flight
    (a late refusal's quarantine then kept the event nowhere). A failed release is a lost claim too."""
    namespace = _namespace()
    admin = Redis.from_url(redis.url, decode_responses=True)
    store = RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=30, timeout=0.3)
    await store.start()
    try:
        assert await store.claim("A", wait=1) is Claim.NEW
        with _releases_refused(store), pytest.raises(DedupeUnavailable):
            await store.release("A")
        held = await admin.get(f"{namespace}:dedupe:A")
        retry = await _attempt(store, "A")
    finally:
        await store.stop()
        await admin.aclose()
    assert isinstance(held, str) and held.startswith("inflight:"), held
    assert retry is Claim.NEW, f"the retry answered {retry!r}; Redis holds this replica's {held!r} for 30 s"


async def test_a_cancelled_claim_leaves_no_mark_that_blocks_the_next_claim(redis: LocalRedis) -> None:
    """Review finding: a claim cancelled while its script call was on the way (uvicorn cancelling requests at the
    stop bound, the attendant's cancel at stop) still set its mark, which nobody owned: every claim of that
    delivery, on any replica, answered 503 in_flight for the lease. The cancelled claim's mark is released."""
    async with LossyProxy("127.0.0.1", redis.port) as proxy:
        namespace = _namespace()
        admin = Redis.from_url(redis.url, decode_responses=True)
        store = RedisDedupeStore(proxy.url, namespace=namespace, ttl=60, lease=30, timeout=2)
        other = RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=30, timeout=2)
        await store.start()
        await other.start()
        try:
            assert await store.ping()
            async with proxy.losing():  # the claim reaches Redis; its answer does not come back before the cancel
                claim = asyncio.ensure_future(store.claim("A", wait=1))
                for _ in range(500):  # at most 5 s
                    if await admin.get(f"{namespace}:dedupe:A") is not None:
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("the claim never reached Redis")
                claim.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await claim
            here = await _attempt(store, "A")
            if here is Claim.NEW:
                await store.release("A")
            elsewhere = await _attempt(other, "A")
        finally:
            await store.stop()
            await other.stop()
            await admin.aclose()
    assert here is Claim.NEW, f"the next claim here answered {here!r}"
    assert elsewhere is Claim.NEW, f"a claim on another replica answered {elsewhere!r}"


async def test_readiness_pings_at_once_leave_the_batches_their_connection(redis: LocalRedis) -> None:
    """Review finding: with `max_connections=2` (the least the settings take), two `/readyz` probes at once while
    Redis was slow held both connections, and the webhooks' batch was refused by redis-py's pool
    (MaxConnectionsError): every claim in it 503, its commits and releases failed. Pings at once share one."""
    namespace = _namespace()
    store = RedisDedupeStore(f"{redis.url}?max_connections=2", namespace=namespace, ttl=60, lease=30, timeout=5)
    admin = Redis.from_url(redis.url, decode_responses=True)
    await store.start()
    try:
        assert await store.claim("warm", wait=1) is Claim.NEW
        await admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # type: ignore[no-untyped-call]
        answers = await asyncio.gather(store.ping(), store.ping(), _attempt(store, "A"), return_exceptions=True)
    finally:
        await store.stop()
        await admin.aclose()
    assert list(answers) == [True, True, Claim.NEW], answers
