"""`webhook rotate --kube-secret` on two replicas whose sources file is a Kubernetes Secret that the
(stand-in) kubelet copies into their mounts 60 s after each change, while MyTPE (the sandbox) delivers
50/s with its retries (4 s, then 8 s) through a round-robin balancer.

What must hold: the window is open on both replicas before MyTPE regenerates, so no delivery is ever
answered 401; every delivery reaches Kafka exactly once; MyTPE signs with the installed secret."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from localkafka import LocalKafka

from relay.mytpe.masks import masked_matches
from tests.faults.harness import REPORTS, RelayProcess, ScenarioReport
from tests.kube.standin import Cluster
from tests.servers import SANDBOX_INSTANCE, LocalRedis, read_topic, start_sandbox

pytestmark = pytest.mark.faults
RATE = 50.0
SYNC_DELAY = 60.0
LEAD = 40.0  # deliveries start this long after the rotation does: 20 s before the window reaches the pods
SECONDS = 100.0  # …and last until after the new secret reached them (60 s after the regeneration)
LEGACY = f"/api/v2/mytpe-pay/{SANDBOX_INSTANCE}/webhook"


@contextlib.asynccontextmanager
async def balancer(backends: list[str]) -> AsyncIterator[str]:
    """A TCP round-robin balancer on loopback, one backend per connection (the sandbox opens one per try)."""
    turn = 0

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal turn
        host, port = backends[turn % len(backends)].removeprefix("http://").split(":")
        turn += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def sources(sandbox_url: str, secret: str) -> bytes:
    block = {"api": "legacy", "base_url": sandbox_url, "instance_id": SANDBOX_INSTANCE, "allow_http": True}
    return yaml.safe_dump({"sources": [{"name": "shop", "secrets": [secret], "mytpe": block}]}).encode()


async def test_kubernetes_rotation_two_replicas_60s_sync_50_per_second(
    broker: LocalKafka, redis: LocalRedis, tmp_path: Path
) -> None:
    sandbox = await asyncio.to_thread(start_sandbox, tmp_path)
    mounts = [tmp_path / "pod0", tmp_path / "pod1"]
    cluster = Cluster(tmp_path, mounts, delay=SYNC_DELAY)
    prefix = f"k{uuid.uuid4().hex[:10]}"
    relays: list[RelayProcess] = []
    try:
        for index, mount in enumerate(mounts):
            env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
            env.update(
                RELAY_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
                RELAY_TOPIC_PREFIX=prefix,
                RELAY_SOURCES_FILE=str(mount / "sources.yaml"),
                RELAY_DEDUPE_URL=redis.url,
                RELAY_SHUTDOWN_DELAY_SECONDS="0.2",
                RELAY_LOG_LEVEL="WARNING",
            )
            relays.append(RelayProcess(env, tmp_path / f"relay{index}.log"))
        async with balancer([r.url for r in relays]) as public:
            secret = sandbox.api("PUT", LEGACY, {"webhook_url": f"{public}/webhooks/mytpe/shop"})["data"]
            cluster.start({"sources.yaml": sources(sandbox.url, secret["webhook_secret"])})
            for relay in relays:
                await asyncio.to_thread(relay.start)
            command = [sys.executable, "-m", "relay", "webhook", "rotate", "--source", "shop"]
            command += ["--kube-secret", f"{cluster.namespace}/{cluster.name}", "--window-minutes", "10"]
            command += [arg for relay in relays for arg in ("--relay-url", relay.url)]
            env = {**relays[0].env, **cluster.env(), "RELAY_SOURCES_FILE": ""}
            env.update(RELAY_MYTPE_API_KEY="sandbox-key", RELAY_MYTPE_API_SECRET="sandbox-secret")
            rotating = asyncio.create_task(
                asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=600)
            )
            await asyncio.sleep(LEAD)
            emit = {"hook": SANDBOX_INSTANCE, "count": int(RATE * SECONDS), "rate": RATE}
            made = set((await asyncio.to_thread(sandbox.control, "/sandbox/emit", emit))["deliveries"])
            rotated = await rotating
            assert rotated.returncode == 0, rotated.stdout + rotated.stderr
            for _ in range(1200):  # bounded: 120 s for the last deliveries and their retries (4 s, 8 s)
                state = await asyncio.to_thread(sandbox.control, "/sandbox/attempts")
                if len(state["deliveries"]) == len(made) and all(d["status"] != "pending" for d in state["deliveries"]):
                    break
                await asyncio.sleep(0.1)
            seen: Counter[str] = Counter()
            for _ in range(30):  # bounded: parked deliveries are relayed within seconds of the reload
                seen = Counter()
                for family in ("transaction", "pay_link", "dlq"):
                    for record in await read_topic(broker.bootstrap, f"{prefix}.{family}"):
                        seen[json.loads(record.value)["id"] if family != "dlq" else (record.key or b"").decode()] += 1
                if all(seen[i] for i in made):
                    break
                await asyncio.sleep(1)
            masked = sandbox.api("GET", LEGACY)["data"]["webhook_secret"]
    finally:
        cluster.stop()
        for relay in relays:
            relay.stop(sig=9)
        sandbox.process.kill()
        sandbox.process.wait(10)
    tries = [t for d in state["deliveries"] for t in d["tries"]]
    REPORTS.append(
        ScenarioReport(
            name="`webhook rotate --kube-secret`, 2 replicas, kubelet sync 60 s, 50 deliveries/s (4 s, 8 s)",
            deliveries=len(made),
            requests=len(tries),
            ok_2xx=sum(1 for t in tries if isinstance(t, int) and 200 <= t < 300),
            status_503=sum(1 for t in tries if t == 503),
            other=sum(1 for t in tries if not (isinstance(t, int) and (200 <= t < 300 or t == 503))),
            acknowledged=sum(1 for d in state["deliveries"] if d["status"] == "succeeded"),
            events_in_kafka=sum(seen.values()),
            acknowledged_missing=sum(
                1 for d in state["deliveries"] if d["status"] == "succeeded" and not seen[d["id"]]
            ),
            duplicates_of_acknowledged=sum(seen[i] - 1 for i in made if seen[i] > 1),
            never_in_kafka=sum(1 for i in made if not seen[i]),
        )
    )
    assert Counter(t for t in tries if t == 401) == Counter(), "answered 401: the window was not open everywhere"
    assert [i for i in made if not seen[i]] == [], "lost"
    assert [i for i in made if seen[i] > 1] == [], "published twice"
    installed = yaml.safe_load(cluster.read("sources.yaml"))["sources"][0]["secrets"][0]
    assert masked_matches(masked, installed), "MyTPE and the Secret disagree"
