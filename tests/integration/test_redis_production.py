"""Redis as production runs it, with Debian's redis-server and redis-sentinel: TLS with a client certificate and
an ACL user, and a Sentinel failover under load (a row of the fault table)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from redis.asyncio import Redis

from relay.dedupe.connect import RedisTls
from relay.dedupe.redis_store import RedisDedupeStore
from relay.errors import DedupeUnavailable
from relay.settings import Settings
from relay.types import Claim
from tests.conftest import require_tool
from tests.faults.harness import Delivery, Sender, make_deliveries, reconcile
from tests.helpers import SECRET, signed_headers
from tests.integration.conftest import running_relay
from tests.integration.test_cli import relay_env, run
from tests.servers import NO_SYNC_DELAY, LocalRedis, LocalSentinel, free_port
from tests.tls import Certificates, make_certificates

pytestmark = pytest.mark.integration
PASSWORD = "redis-acl-secret-3Fy"


@dataclass(frozen=True)
class TlsRedis:
    server: LocalRedis
    tls_port: int
    certificates: Certificates

    def url(self, password: str = PASSWORD) -> str:
        return f"rediss://relay:{password}@localhost:{self.tls_port}/0"

    def variables(self, password: str = PASSWORD) -> dict[str, str]:
        return {
            "RELAY_DEDUPE_URL": self.url(password),
            "RELAY_DEDUPE_TLS_CA_FILE": str(self.certificates.ca),
            "RELAY_DEDUPE_TLS_CERT_FILE": str(self.certificates.client),
        }


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """TLS only for clients (client certificates required), the default user off, one ACL user."""
    require_tool("redis-server")
    directory = tmp_path_factory.mktemp("tls-redis")
    certificates = make_certificates(directory / "certs")
    tls_port = free_port()
    extra = [
        *("--tls-port", str(tls_port), "--tls-auth-clients", "yes"),
        *("--tls-cert-file", str(certificates.broker), "--tls-key-file", str(certificates.broker)),
        *("--tls-ca-cert-file", str(certificates.ca)),
        *("--user", "default", "off", "--user", "relay", "on", f">{PASSWORD}", "~mytpe-relay:*"),
        *("+get", "+set", "+del", "+pexpire", "+eval", "+ping"),  # what docs/dedupe.md says the relay's user needs
        *("+hset", "+hget", "+hdel", "+hexists", "+hmget", "+zadd", "+zrem", "+zcard", "+zrange", "+zrangebyscore"),
        *("+zincrby", "+zrevrange", "+zscore"),
        *("+incr", "+incrby", "+decr", "+decrby", "+mget", "+sadd", "+smembers"),  # and parking (operations.md)
    ]
    with LocalRedis(directory / "data", extra=extra) as server:  # its plain port only answers NOAUTH
        yield TlsRedis(server, tls_port, certificates)


async def test_a_redis_that_does_not_answer_the_close_is_said_in_one_line_not_raised(
    tls_redis: TlsRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Found this session: over TLS a close waits for the server's close_notify. A server frozen at shutdown
    made RedisDedupeStore.stop raise redis-py's TimeoutError, out of the lifespan (a traceback, the "relay
    stopped" line skipped; on the startup path it hid the StartupError), for as long as the URL's connect
    timeout said (redis-py's bound on a close; asyncio ends a TLS close at 30 s), and the stop bound did not
    count it. Closes are now bounded by the relay (STORE_TIMEOUT_SECONDS, 2 s), counted, and said. The URL
    asks 60 s here: without the relay's bound, the stop outlasts the 20 s this test waits."""
    tls = RedisTls(ca_file=tls_redis.certificates.ca, cert_file=tls_redis.certificates.client)
    url = tls_redis.url() + "?socket_connect_timeout=60"
    store = RedisDedupeStore(url, namespace="mytpe-relay:frozen", ttl=60, lease=5, tls=tls)
    process = tls_redis.server.process
    assert process is not None
    await store.start()
    try:
        assert await store.claim(f"frozen-{uuid.uuid4()}", wait=0.1) is Claim.NEW  # a connection to close
        assert _client_sockets(tls_redis.tls_port) == 1
        os.kill(process.pid, signal.SIGSTOP)
        try:
            with caplog.at_level(logging.WARNING, logger="relay.dedupe.connect"):
                await asyncio.wait_for(store.stop(), 20)  # before: raised, or ended after the 60 s or TLS's 30 s
        finally:
            os.kill(process.pid, signal.SIGCONT)
    finally:
        await store.stop()  # a no-op once stopped: closes the connection if an assertion failed first
    assert "redis: a connection did not close cleanly (TimeoutError); not waited for" in caplog.text
    for _ in range(200):  # bounded: the server answers the close once it runs, and the socket closes here
        if not _client_sockets(tls_redis.tls_port):
            break
        await asyncio.sleep(0.05)
    assert _client_sockets(tls_redis.tls_port) == 0  # no transport left open to warn in a later test


def _client_sockets(port: int) -> int:
    """This host's TCP sockets to `port` still open on the client's side (ESTABLISHED or CLOSE_WAIT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            count += int(remote.rsplit(":", 1)[1], 16) == port and state in {"01", "08"}
    return count


async def deliver(client: httpx.AsyncClient, url: str, delivery_id: str) -> str:
    body = b'{"delivery_id":"%s","event":"transaction.completed","data":{"transaction":{"id":"tx-1"}}}' % (
        delivery_id.encode()
    )
    headers = signed_headers(body, timestamp=int(time.time()), delivery_id=delivery_id)
    response = await client.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


async def test_dedupe_over_tls_with_a_client_certificate_and_an_acl_user(
    tls_redis: TlsRedis, kafka: Any, kafka_settings: Callable[..., Settings]
) -> None:
    settings = kafka_settings(
        dedupe_url=tls_redis.url(),
        dedupe_tls_ca_file=tls_redis.certificates.ca,
        dedupe_tls_cert_file=tls_redis.certificates.client,
    )
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        assert (await client.get(relay.url + "/readyz")).status_code == 200
        first = await deliver(client, relay.webhook_url, "tls-1")
        again = await deliver(client, relay.webhook_url, "tls-1")
    assert (first, again) == ("accepted", "duplicate")


def test_check_shows_the_scheme_and_host_only_and_fails_on_a_wrong_password(tls_redis: TlsRedis, kafka: Any) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    good = run(["check"], relay_env(kafka.bootstrap, prefix, **tls_redis.variables()))
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"dedupe: ok (rediss://localhost:{tls_redis.tls_port})" in good.stdout.splitlines()
    bad = run(["check"], relay_env(kafka.bootstrap, prefix, **tls_redis.variables("wrong-password-1Qa")))
    assert bad.returncode == 1
    assert f"dedupe: FAILED (rediss://localhost:{tls_redis.tls_port})" in bad.stdout.splitlines()
    for result in (good, bad):
        assert (
            PASSWORD not in result.stdout + result.stderr and "wrong-password-1Qa" not in result.stdout + result.stderr
        )
        assert SECRET not in result.stdout + result.stderr


async def test_a_sentinel_failover_under_load_loses_nothing(
    kafka: Any, kafka_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The master is SIGKILLed a third of the way in; Sentinel promotes the replica. Every delivery is then sent
    a second time, as MyTPE may: a dedupe mark the old master had not yet replicated makes a duplicate."""
    require_tool("redis-sentinel")
    master = LocalRedis(tmp_path / "master", extra=NO_SYNC_DELAY)
    replica = LocalRedis(tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(master.port)])
    sentinel = LocalSentinel(tmp_path / "sentinel", master.port)
    try:  # started inside: one that fails to start leaves none of the others running
        master.start()
        replica.start()
        sentinel.start()
        await _replicated(master, sentinel)
        settings = kafka_settings(
            dedupe_url=f"redis+sentinel://127.0.0.1:{sentinel.port}/{sentinel.name}/0",
            dedupe_lease_seconds=4.0,
        )
        deliveries = make_deliveries(300, seed=26379)
        acked_at: dict[str, float] = {}
        async with running_relay(settings) as relay, httpx.AsyncClient() as client:
            sender = Sender(relay.webhook_url)
            killed_at = await _load_with_a_failover(sender, client, deliveries, master, acked_at)
            await asyncio.wait_for(asyncio.gather(*(sender.deliver(client, d) for d in deliveries)), 120)
        report = await reconcile(
            "Redis Sentinel failover (master SIGKILLed), every delivery sent twice",
            kafka.bootstrap,
            settings.topic_prefix,
            deliveries,
            sender,
        )
    finally:
        for process in (sentinel, replica, master):
            process.stop()
    gc.collect()  # a client the store left open (the Sentinel's own) fails this test, not a later one
    last_second = sum(1 for at in acked_at.values() if killed_at - 1.0 <= at <= killed_at)
    assert report.acknowledged == 300
    assert report.acknowledged_missing == 0
    assert report.status_503 > 0, "the failover did not happen during the load"
    assert report.duplicates_of_acknowledged <= last_second, (report.duplicates_of_acknowledged, last_second)


async def test_after_a_graceful_sentinel_failover_the_store_reaches_the_new_master(tmp_path: Path) -> None:
    """SENTINEL FAILOVER demotes the master and closes its clients' connections (it passes with or without the
    script's READONLY rule: test_redis_batch.py shows that one); the store's next operations reach the new one."""
    require_tool("redis-sentinel")
    master = LocalRedis(tmp_path / "master", extra=NO_SYNC_DELAY)
    replica = LocalRedis(tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(master.port)])
    sentinel = LocalSentinel(tmp_path / "sentinel", master.port)
    store = RedisDedupeStore(
        f"redis+sentinel://127.0.0.1:{sentinel.port}/{sentinel.name}/0", namespace=uuid.uuid4().hex, ttl=60, lease=30
    )
    try:  # started inside: one that fails to start leaves none of the others running
        master.start()
        replica.start()
        sentinel.start()
        await _replicated(master, sentinel)
        await store.start()
        assert await store.claim("before", wait=1) is Claim.NEW  # a connection to the old master
        await _failed_over(master, sentinel)
        deadline, after = time.monotonic() + 60, None
        while after is None:
            try:
                after = await store.claim(f"after-{time.monotonic()}", wait=1)
            except DedupeUnavailable:
                assert time.monotonic() < deadline, "the store never reached the new master"
                await asyncio.sleep(0.2)
    finally:
        await store.stop()
        for process in (sentinel, replica, master):
            process.stop()
    assert after is Claim.NEW


async def _failed_over(master: LocalRedis, sentinel: LocalSentinel, timeout: float = 60) -> None:
    """SENTINEL FAILOVER, then until the old master is a replica: asked, never given a time."""
    old, watcher = Redis(port=master.port, decode_responses=True), Redis(port=sentinel.port, decode_responses=True)
    deadline = time.monotonic() + timeout
    try:
        await watcher.execute_command("SENTINEL", "FAILOVER", sentinel.name)  # type: ignore[no-untyped-call]
        while (await old.info("replication"))["role"] != "slave":
            assert time.monotonic() < deadline, "the master was never demoted"
            await asyncio.sleep(0.1)
    finally:
        await old.aclose()
        await watcher.aclose()


async def _replicated(master: LocalRedis, sentinel: LocalSentinel, timeout: float = 60) -> None:
    """Until the replica is in sync and Sentinel lists it as up (it learns of replicas from the master's INFO):
    asked, never given a time."""
    client, watcher = Redis(port=master.port), Redis(port=sentinel.port, decode_responses=True)
    deadline = time.monotonic() + timeout
    try:
        while (await client.info("replication")).get("slave0", {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica never came in sync"
            await asyncio.sleep(0.1)
        while not any(
            not r["is_sdown"] and not r["is_disconnected"] for r in await watcher.sentinel_slaves(sentinel.name)
        ):
            assert time.monotonic() < deadline, "Sentinel never listed the replica"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
        await watcher.aclose()


async def _load_with_a_failover(
    sender: Sender,
    client: httpx.AsyncClient,
    deliveries: list[Delivery],
    master: LocalRedis,
    acked_at: dict[str, float],
) -> float:
    """30 deliveries/s; the master dies after the first 100. Returns when it died (monotonic)."""

    async def one(delivery: Delivery) -> None:
        await sender.deliver(client, delivery)
        if delivery.acked:
            acked_at[delivery.delivery_id] = time.monotonic()

    tasks, killed_at = [], 0.0
    for index, delivery in enumerate(deliveries):
        if index == 100:
            master.kill()
            killed_at = time.monotonic()
        tasks.append(asyncio.create_task(one(delivery)))
        await asyncio.sleep(1 / 30)
    await asyncio.wait_for(asyncio.gather(*tasks), 150)
    return killed_at
