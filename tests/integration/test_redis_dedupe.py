"""The shared dedupe store against a real redis-server: the in-memory store's semantics, across processes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from relay.dedupe.factory import namespace as namespace_of
from relay.dedupe.redis_store import RedisDedupeStore
from relay.errors import DedupeUnavailable, PublishPending, Unavailable
from relay.pipeline.late_acks import LateAcks
from relay.pipeline.metrics import DeliveryMetrics
from relay.pipeline.store_timing import StoreTiming
from relay.pipeline.tasks import Tasks
from relay.settings import Settings
from relay.types import Ack, Claim
from tests.conftest import make_settings
from tests.fakes import FakePublisher
from tests.helpers import sample, signed_headers
from tests.lossy_proxy import LossyProxy
from tests.servers import LocalRedis, read_topic, running_relay

pytestmark = pytest.mark.integration


def store(redis: LocalRedis, namespace: str, *, lease: float = 30.0) -> RedisDedupeStore:
    return RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=lease)


@asynccontextmanager
async def two_replicas(
    redis: LocalRedis, namespace: str, *, first_lease: float = 30.0
) -> AsyncIterator[tuple[RedisDedupeStore, RedisDedupeStore]]:
    """Two store instances on one namespace: what two relay processes see."""
    first, second = store(redis, namespace, lease=first_lease), store(redis, namespace)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.stop()
        await second.stop()


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_two_replicas_see_one_commit(redis: LocalRedis, namespace: str) -> None:
    async with two_replicas(redis, namespace) as (a, b):
        assert await a.claim("d1", wait=0.1) is Claim.NEW
        waiting = asyncio.create_task(b.claim("d1", wait=5))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # in flight on replica a: b waits for the outcome
        await a.commit("d1")
        assert await waiting is Claim.DUPLICATE
        assert await a.claim("d1", wait=0.1) is Claim.DUPLICATE


async def test_release_hands_the_delivery_to_the_other_replica(redis: LocalRedis, namespace: str) -> None:
    async with two_replicas(redis, namespace) as (a, b):
        assert await a.claim("d2", wait=0.1) is Claim.NEW
        waiting = asyncio.create_task(b.claim("d2", wait=5))
        await asyncio.sleep(0.1)
        await a.release("d2")
        assert await waiting is Claim.NEW
        with pytest.raises(Unavailable) as caught:
            await a.claim("d2", wait=0.2)  # now b holds it
        assert caught.value.cause == "in_flight"


async def test_a_crashed_claim_expires_with_its_lease(redis: LocalRedis, namespace: str) -> None:
    async with two_replicas(redis, namespace, first_lease=0.3) as (crashed, survivor):
        assert await crashed.claim("d3", wait=0.1) is Claim.NEW  # then the replica "dies": no commit
        assert await survivor.claim("d3", wait=2) is Claim.NEW  # granted once the lease ran out
        await crashed.release("d3")  # a late release from the old holder must not free the new claim
        third = store(redis, namespace)  # a replica of its own: no token of this process answers for it
        await third.start()
        try:
            with pytest.raises(Unavailable):
                await third.claim("d3", wait=0.1)  # the survivor's mark stands
        finally:
            await third.stop()


async def test_extend_keeps_a_pending_claim_past_its_lease(redis: LocalRedis, namespace: str) -> None:
    async with two_replicas(redis, namespace, first_lease=0.3) as (holder, other):
        assert await holder.claim("d4", wait=0.1) is Claim.NEW
        await holder.extend("d4", 5)
        await asyncio.sleep(0.5)
        with pytest.raises(Unavailable):
            await other.claim("d4", wait=0.2)


async def test_a_retry_on_the_same_replica_while_its_first_attempt_still_runs_is_in_flight(
    redis: LocalRedis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: the store keeps one token per delivery id. A retry that claimed NEW on the replica whose
    first attempt still ran (its lease had run out while Kafka held the record) replaced the first attempt's
    token, and the first attempt's release then deleted the retry's mark: a third attempt, on any replica,
    claimed NEW and published while the retry did. The retry is now in_flight; the mark its claim set stays for
    a lease, covering the first attempt on every replica (a later review: given back, it let another replica
    publish while the first attempt could still land)."""
    async with two_replicas(redis, namespace, first_lease=0.2) as (replica, other):
        assert await replica.claim("d5", wait=0.1) is Claim.NEW  # the first attempt: its record pending
        await asyncio.sleep(0.4)  # its lease ran out
        with pytest.raises(Unavailable) as caught:
            await replica.claim("d5", wait=0.1)  # the retry, on the same replica: the first may still land
        assert caught.value.cause == "in_flight"
        with pytest.raises(Unavailable):
            await other.claim("d5", wait=0.05)  # the retry's mark covers the first attempt there too
        await replica.release("d5")  # the first attempt's publish failed after all: not its mark, nothing released
        assert "dedupe: the claim on d5 was no longer this attempt's; nothing released" in caplog.text
        assert await other.claim("d5", wait=2) is Claim.NEW  # once the retry's mark has ended
        with pytest.raises(Unavailable):
            await replica.claim("d5", wait=0.1)


async def test_the_first_attempts_release_gives_back_the_mark_its_refused_retry_left(
    redis: LocalRedis, namespace: str
) -> None:
    """Review finding: a retry refused `in_flight` on the replica whose first attempt still ran left its mark (to
    cover that attempt on every replica); when the first attempt's publish then failed, its release freed only
    its own (gone) mark, and every replica answered `in_flight` for the rest of the retry's lease, 15 s by
    default: maybe MyTPE's last attempt. The first attempt's mark is deleted by hand (as its lease running out
    would), so the leases here are long: the cover's would outlast the test."""
    async with two_replicas(redis, namespace) as (replica, other):
        assert await replica.claim("d13", wait=0.1) is Claim.NEW  # the first attempt: its record pending
        async with Redis.from_url(redis.url) as admin:
            assert await admin.delete(f"{namespace}:dedupe:d13") == 1  # its lease ran out
        with pytest.raises(Unavailable):
            await replica.claim("d13", wait=0.1)  # the retry on that replica: the first may still land
        with pytest.raises(Unavailable):
            await other.claim("d13", wait=0.05)  # its mark covers the first attempt there
        await replica.release("d13")  # the first attempt's publish failed after all
        assert await other.claim("d13", wait=0.1) is Claim.NEW  # the next retry publishes, on any replica


async def test_a_token_held_past_the_longest_hold_no_longer_answers_a_retry_in_flight(
    redis: LocalRedis, namespace: str
) -> None:
    """Review finding on the fix above: a token an attempt never gave back (a bug, a task cancelled before its
    first step) would have answered every retry of that delivery on this replica in_flight for good."""
    replica = RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=0.2, hold=0.5)
    await replica.start()
    try:
        assert await replica.claim("d10", wait=0.1) is Claim.NEW  # never committed nor released
        await asyncio.sleep(0.3)
        with pytest.raises(Unavailable):
            await replica.claim("d10", wait=0.1)  # within the hold: the first may still land
        await asyncio.sleep(0.4)
        assert await replica.claim("d10", wait=0.1) is Claim.NEW  # past it: taken as never given back
    finally:
        await replica.stop()


async def test_an_attempt_past_the_hold_acts_on_its_own_mark_not_on_a_retrys(redis: LocalRedis, namespace: str) -> None:
    """Review finding: past the hold, a retry's claim took the key's token on this replica (one per key), so the
    first attempt's release, should its publish settle later still, deleted the retry's mark, and its
    extension renewed it: a third attempt then claimed NEW while the retry's record was still pending. Each
    attempt (a request, its task) acts with its own token. The first attempt's mark is deleted by hand (as its
    lease running out would), so no lease here is short enough for a slow machine to end it early."""
    replica = RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=30, hold=0.5)
    other = RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=30)
    await replica.start()
    await other.start()
    first_claimed, retried, settled = asyncio.Event(), asyncio.Event(), asyncio.Event()
    renewed: list[bool] = []

    async def first() -> None:
        assert await replica.claim("d11", wait=0.1) is Claim.NEW
        first_claimed.set()
        late = Tasks()  # as the late acknowledgements do: the pending record's own task (relay/pipeline/tasks.py)

        async def settle() -> None:
            await retried.wait()  # its record still pending, past the hold
            renewed.append(await replica.extend("d11", 5))
            await replica.release("d11")  # then the producer gave up on it
            settled.set()

        late.start(settle())
        await late.finish(10, 1)

    async def retry() -> bool:
        await first_claimed.wait()
        await asyncio.sleep(0.6)  # past the hold (0.5 s)
        async with Redis.from_url(redis.url) as admin:
            assert await admin.delete(f"{namespace}:dedupe:d11") == 1  # the first mark's lease ran out
        assert await replica.claim("d11", wait=0.1) is Claim.NEW  # a second copy: documented
        retried.set()
        await settled.wait()
        return await replica.extend("d11", 5)  # its own mark, renewed

    try:
        _, retry_extended = await asyncio.wait_for(asyncio.gather(first(), retry()), 20)
        assert renewed == [False] and retry_extended
        with pytest.raises(Unavailable):
            await other.claim("d11", wait=0.1)  # the retry's mark stands: no third copy
    finally:
        await replica.stop()
        await other.stop()


async def test_an_extension_that_comes_after_the_lease_ran_out_is_said(
    redis: LocalRedis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: the extend script answers 0 when the mark is gone, and the store dropped that answer: a
    lease that ran out while Kafka held the record (a retry elsewhere may then publish it again) said nothing."""
    async with two_replicas(redis, namespace, first_lease=0.2) as (replica, _):
        assert await replica.claim("d6", wait=0.1) is Claim.NEW
        await replica.extend("d6", 0.3)  # in time: nothing said
        assert "had ended before its extension" not in caplog.text
        await asyncio.sleep(0.5)
        await replica.extend("d6", 5)
    assert "dedupe: the claim on d6 had ended before its extension" in caplog.text


async def test_after_its_master_is_demoted_the_store_connects_again_to_the_address_it_was_given(
    tmp_path: Path, namespace: str
) -> None:
    """Review finding: a plain redis:// URL whose server is demoted while its clients stay connected (a managed
    Redis's primary endpoint, a Service moved to the new master) answered READONLY to every batch, on the same
    pooled connection, for as long as the process ran (every delivery 503 `dedupe_error`, /readyz still ready:
    PING works on a replica). The address here is a proxy, moved to the new master as DNS would move."""
    with LocalRedis(tmp_path / "old") as old, LocalRedis(tmp_path / "new") as new:
        async with LossyProxy("127.0.0.1", old.port) as proxy:
            replica = RedisDedupeStore(proxy.url, namespace=namespace, ttl=60, lease=30)
            await replica.start()
            try:
                assert await replica.claim("d7", wait=0.1) is Claim.NEW  # its connection: to the old master
                demoted = Redis.from_url(old.url)
                await demoted.replicaof("127.0.0.1", new.port)
                await demoted.aclose()
                proxy._upstream = ("127.0.0.1", new.port)  # the endpoint now names the new master
                with pytest.raises(DedupeUnavailable):
                    await replica.claim("d8", wait=0.1)  # READONLY, on the connection opened before
                assert await replica.claim("d9", wait=0.1) is Claim.NEW  # a new connection: the new master
            finally:
                await replica.stop()


async def test_store_errors_are_retryable_and_ping_reports_them(tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "redis") as doomed:
        dead = store(doomed, "x")
        await dead.start()
        assert await dead.ping()
    try:
        assert not await dead.ping()
        with pytest.raises(DedupeUnavailable) as caught:
            await dead.claim("d5", wait=0.1)
        assert (caught.value.status_code, caught.value.cause) == (503, "dedupe_error")
    finally:
        await dead.stop()


async def test_relay_without_redis_answers_503_unless_fail_open(
    tmp_path: Path, kafka: Any, kafka_settings: Callable[..., Settings]
) -> None:
    """Against the real broker (guarantees §4 cites this test): what Kafka holds is read back."""
    with LocalRedis(tmp_path / "redis") as doomed:
        url = doomed.url
    body, delivery_id = sample()
    for fail_open, expected in ((False, 503), (True, 200)):
        settings = kafka_settings(dedupe_url=url, dedupe_fail_open=fail_open)
        async with running_relay(settings) as relay, httpx.AsyncClient() as client:
            headers = signed_headers(body, timestamp=int(time.time()), delivery_id=delivery_id)
            response = await client.post(relay.webhook_url, content=body, headers=headers)
            ready = await client.get(f"{relay.url}/readyz")
            metrics = (await client.get(f"{relay.url}/metrics")).text
        records = await read_topic(kafka.bootstrap, f"{settings.topic_prefix}.transaction")
        assert response.status_code == expected, response.text
        assert ready.json()["dedupe"] is False
        assert 'mytpe_relay_dedupe_errors_total{op="claim"} 1.0' in metrics
        if fail_open:
            assert ready.status_code == 200
            assert [json.loads(r.value)["id"] for r in records] == [delivery_id]
        else:
            assert response.json()["cause"] == "dedupe_error"
            assert ready.status_code == 503 and records == []  # nothing published without dedupe


async def test_a_claim_whose_reply_was_lost_and_resent_by_redis_py_is_still_new(
    redis: LocalRedis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: redis-py resends a command whose reply was lost when the URL asks it to
    (`?retry_on_timeout=true`; the relay's own clients do not retry). The resent claim script finds the
    mark the first run set, the attempt's own token, and answers it. The store took that for another
    attempt in flight: it waited out its deadline, answered 503 `in_flight`, and the mark held every
    retry back until its lease ended. Its own token is its claim: NEW."""
    from redis.asyncio.connection import AbstractConnection
    from redis.exceptions import TimeoutError as RedisTimeout

    real = AbstractConnection.read_response
    lose = {"next": False, "lost": 0}

    async def reply_lost_once(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        answer = await real(self, *args, **kwargs)
        if lose["next"] and "+new" in str(answer):  # the claim's reply (not a connection's handshake)
            lose["next"], lose["lost"] = False, lose["lost"] + 1
            raise RedisTimeout("the reply was read, then lost")  # the script ran; redis-py sends it again
        return answer

    monkeypatch.setattr(AbstractConnection, "read_response", reply_lost_once)
    retrying = RedisDedupeStore(f"{redis.url}?retry_on_timeout=true", namespace=namespace, ttl=60, lease=30)
    other = store(redis, namespace)
    await retrying.start()
    await other.start()
    try:
        lose["next"] = True
        assert await retrying.claim("d-lost", wait=0.5) is Claim.NEW
        assert lose["lost"] == 1
        await retrying.commit("d-lost")
        assert await other.claim("d-lost", wait=0.5) is Claim.DUPLICATE
    finally:
        await retrying.stop()
        await other.stop()


async def test_the_answer_comes_before_the_commit_and_the_commit_lands_before_the_store_stops(
    redis: LocalRedis, settings_factory: Callable[..., Settings]
) -> None:
    """Redis takes no writes between the claim and the commit (CLIENT PAUSE WRITE): the 200 still comes,
    and the mark stays in flight. The relay is then stopped with Redis still paused, and Redis takes
    writes again only once the producer has stopped, the step before the deliverer's drain: the store
    must not close under the commit. The relay's socket timeout is raised by its URL, so the held
    commit cannot time out meanwhile."""
    hold = asyncio.Event()
    publisher = FakePublisher(hold=hold)
    settings = settings_factory(dedupe_url=f"{redis.url}?socket_timeout=30")
    body, delivery_id = sample()
    key = f"{namespace_of(settings)}:dedupe:{delivery_id}"
    admin = Redis.from_url(redis.url, decode_responses=True)
    try:
        async with running_relay(settings, publisher=publisher) as relay, httpx.AsyncClient() as client:
            headers = signed_headers(body, timestamp=int(time.time()), delivery_id=delivery_id)
            posting = asyncio.create_task(client.post(relay.webhook_url, content=body, headers=headers))
            for _ in range(500):  # claimed: the publish waits on the hold
                if publisher.holding:
                    break
                await asyncio.sleep(0.01)
            assert publisher.holding == 1
            await admin.client_pause(10_000, all=False)  # writes wait, reads go on; it ends by itself if the test dies
            hold.set()
            response = await asyncio.wait_for(posting, 10)  # a relay awaiting the commit hangs here
            assert response.status_code == 200 and response.json()["status"] == "accepted"
            assert str(await admin.get(key)).startswith("inflight:")  # the commit is on its way
            relay.server.should_exit = True
            for _ in range(1000):  # bounded: 10 s
                if not publisher.started:
                    break
                await asyncio.sleep(0.01)
            assert not publisher.started
            await admin.client_unpause()
        assert await admin.get(key) == "done"  # the relay stopped only after its commit landed
    finally:
        await admin.client_unpause()
        await admin.aclose()


async def test_commit_soon_tells_its_outcome_landed_or_not(redis: LocalRedis, namespace: str) -> None:
    """The commit the deliverer sends after the answer (relay.pipeline.commits), against a real server."""
    told: list[BaseException | None] = []
    shared = store(redis, namespace)
    await shared.start()
    try:
        assert await shared.claim("d-soon", wait=0.1) is Claim.NEW
        await shared.commit_soon("d-soon", told.append)
        await asyncio.sleep(0)  # the future's callbacks run in the next loop pass
        assert told == [None]
        assert await shared.claim("d-soon", wait=0.1) is Claim.DUPLICATE
        assert await shared.claim("d-stopped", wait=0.1) is Claim.NEW
        shared.commit_soon("d-stopped", told.append)  # queued, then the store stops under it
    finally:
        await shared.stop()
    await asyncio.sleep(0)
    assert len(told) == 2 and isinstance(told[1], DedupeUnavailable)
    with pytest.raises(Unavailable):
        shared.commit_soon("d-late", told.append)  # stopped: refused at once, never queued


async def test_a_pending_claim_whose_release_fails_ends_within_a_lease_not_the_delivery_bound(
    redis: LocalRedis, namespace: str
) -> None:
    """Review finding: a claim whose publish timed out was extended once, to the producer's delivery bound (130 s
    by default). If Kafka then failed the record and the release failed too (a Redis blip), or the replica died
    with the record pending, every replica answered MyTPE's next attempts `in_flight` for that long: past its
    3 attempts, a payment never published. The lease is renewed one lease at a time while the record is pending:
    such a mark ends within one lease."""
    settings = make_settings(dedupe_lease_seconds=2.0, publish_timeout_seconds=0.5, kafka_delivery_timeout_seconds=30.0)
    async with two_replicas(redis, namespace, first_lease=2.0) as (holder, other):
        assert await holder.claim("d7", wait=0.1) is Claim.NEW

        async def no_release(key: str) -> bool:  # the store did not answer: the claim is left to its lease
            return False

        async def never_committed(*args: object, **kwargs: object) -> None:
            raise AssertionError("not acknowledged")

        late = LateAcks(
            settings,
            holder,
            StoreTiming(DeliveryMetrics(CollectorRegistry()), shared=True),
            committed=never_committed,
            release=no_release,
        )
        kafka: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()

        async def outcome() -> Ack:
            return await kafka

        late.settle("d7", PublishPending(outcome(), 0.5), time.monotonic(), None, None)  # type: ignore[arg-type]
        await asyncio.sleep(2.5)  # past the first lease: renewed (every 0.67 s), so still held
        with pytest.raises(Unavailable):
            await other.claim("d7", wait=0.1)
        kafka.set_exception(KafkaTimeoutError())  # Kafka fails it for good; its release does not answer
        await asyncio.sleep(0.1)
        assert await other.claim("d7", wait=4.0) is Claim.NEW  # within a lease (2 s), not the delivery bound (30 s)
        await late.finish(1.0)
