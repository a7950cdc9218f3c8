"""A secret regenerated on MyTPE's side, with the relay's sources file updated only after the sender gave up.

MyTPE invalidates the old secret the moment it makes the new one, and makes 3 attempts (backoff 4 s,
then 8 s). Here the file is updated 60 s after the regeneration: every delivery made in between has
already failed its last attempt. Parking keeps them; the reload verifies them again and relays each
exactly once. Forgeries sent all along are never published.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml
from localkafka import LocalKafka

from relay.mytpe.masks import masked_matches
from tests.conftest import FIGURES
from tests.faults.harness import (
    REPORTS,
    Delivery,
    MytpeSender,
    RelayProcess,
    ScenarioReport,
    make_deliveries,
    reconcile,
)
from tests.helpers import signed_headers
from tests.servers import SANDBOX_INSTANCE, LocalRedis, SandboxProcess, read_topic, start_sandbox

pytestmark = pytest.mark.faults
OLD = "whsec_" + "0a" * 24
NEW = "whsec_" + "1b" * 24
FORGER = "whsec_" + "ee" * 24
REGENERATE_AT = 10.0  # seconds into the load
FLOOD = 15_000  # forgeries before the regeneration: the source's parking (5,000) filled three times over
UPDATE_AFTER = 60.0  # seconds after the regeneration: MyTPE gave up on those deliveries long before


def sources_file(path: Path, *secrets: str) -> None:
    path.write_text(f"sources:\n  - name: shop\n    secrets: [{', '.join(secrets)}]\n")


async def forge(url: str, count: int) -> list[str]:
    """Well-formed, fresh requests signed with a secret the relay never had: they park, and age out."""
    ids = []
    async with httpx.AsyncClient() as client:
        for index, delivery in enumerate(make_deliveries(count, seed=999)):
            delivery_id = f"forged-{index}"
            headers = signed_headers(delivery.body, secret=FORGER, timestamp=int(time.time()), delivery_id=delivery_id)
            response = await client.post(url, content=delivery.body, headers=headers)
            assert response.status_code == 401
            ids.append(delivery_id)
            await asyncio.sleep(0.25)
    return ids


async def flood(url: str, *, seconds: float, limit: int, concurrency: int = 8) -> Counter[int | str]:
    """Forgeries as fast as `concurrency` connections allow: fresh, well-formed, each with a new delivery id."""
    statuses: Counter[int | str] = Counter()
    deadline = time.monotonic() + seconds
    body = make_deliveries(1, seed=998)[0].body
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker(offset: int) -> None:
            for index in range(offset, limit, concurrency):  # bounded in count and in time
                if time.monotonic() > deadline:
                    return
                headers = signed_headers(body, secret=FORGER, timestamp=int(time.time()), delivery_id=f"flood-{index}")
                try:
                    statuses[(await client.post(url, content=body, headers=headers)).status_code] += 1
                except httpx.TransportError as exc:
                    statuses[type(exc).__name__] += 1

        await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
    return statuses


def parking_env(request: pytest.FixtureRequest, parking: str) -> dict[str, str]:
    """Parking in the relay's memory, or on the real redis-server (with Redis dedupe, as configured in production)."""
    if parking == "memory":
        return {}
    server: LocalRedis = request.getfixturevalue("redis")
    return {"RELAY_DEDUPE_URL": server.url}


@pytest.mark.timeout(600)  # up to 5 minutes of flood, then 70 s of load and the reload: longer than the default 180 s
@pytest.mark.parametrize("parking", ["memory", "redis"])
async def test_a_forgery_flood_then_a_regeneration(
    broker: LocalKafka,
    relay_factory: Callable[..., RelayProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    parking: str,
) -> None:
    """Forgeries fill the source's parking three times over (15,000 against RELAY_PARKING_MAX_PER_SOURCE's 5,000:
    two thirds of them are pushed out by the others); then MyTPE regenerates, the file is updated 60 s later."""
    env = parking_env(request, parking)
    await _regenerated(
        broker,
        relay_factory,
        tmp_path,
        deliveries=1600,
        per_second=40.0,
        update_after=UPDATE_AFTER,
        flood_seconds=300.0,  # a bound only: 15,000 took 12 to 60 s here
        flood_count=FLOOD,
        env=env,
    )


async def until_given_up(
    sent: list[Delivery], regenerated: float, count: int, load: asyncio.Task[None], *, seconds: float
) -> None:
    """Until `count` deliveries first signed after `regenerated` have had all 3 attempts answered (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not load.done():
        if sum(1 for d in sent if len(d.statuses) == 3 and d.signed_at[0] >= regenerated) >= count:
            return
        await asyncio.sleep(0.1)


async def _regenerated(
    broker: LocalKafka,
    relay_factory: Callable[..., RelayProcess],
    tmp_path: Path,
    *,
    deliveries: int,
    per_second: float,
    update_after: float,
    flood_seconds: float = 0.0,
    flood_count: int = 0,
    env: dict[str, str] | None = None,
) -> None:
    file = tmp_path / "sources.yaml"
    sources_file(file, OLD)
    relay = relay_factory(RELAY_MYTPE_SECRETS="", RELAY_SOURCES_FILE=str(file), **(env or {}))
    where = "on Redis" if env else "in memory"
    await asyncio.to_thread(relay.start)
    url = f"{relay.url}/webhooks/mytpe/shop"
    flooded: Counter[int | str] = Counter()
    flood_took = 0.0
    if flood_seconds:
        flood_took = time.monotonic()
        flooded = await flood(url, seconds=flood_seconds, limit=flood_count)
        flood_took = time.monotonic() - flood_took
        assert set(flooded) == {401}, flooded
        assert flooded[401] > 2 * 5_000, "the flood did not fill the source's parking (RELAY_PARKING_MAX_PER_SOURCE)"
    sender = MytpeSender(url, OLD)
    sent = make_deliveries(deliveries, seed=16)
    load = asyncio.create_task(sender.paced(sent, per_second=per_second))
    forgeries = asyncio.create_task(forge(url, 40))
    await asyncio.sleep(REGENERATE_AT)
    sender.secret = NEW  # MyTPE regenerated: the old secret is dead at once
    regenerated = time.monotonic()
    await asyncio.sleep(update_after)
    # The case under test: deliveries MyTPE gave up on (3 attempts under the new secret, all refused) before the
    # file had it. On pace, the sender starts `per_second * (update_after - 15)` of them (the third attempt comes
    # 12 s after the first, 3 s for answers); a loaded machine slows the sender, so the update waits for that many
    # (or the sender's end), and the figures say when it came.
    floor = min(deliveries // 2, int(per_second * (update_after - 15)))
    await until_given_up(sent, regenerated, floor, load, seconds=update_after + 60)
    updated_after = time.monotonic() - regenerated
    new_only = [d for d in sent if d.signed_at and d.signed_at[0] >= regenerated]  # never signed with OLD
    refused_thrice = [d for d in new_only if len(d.statuses) == 3]
    given_up = [d for d in sent if d.statuses and not d.acked and len(d.statuses) == 3]
    accepted_early = [d.delivery_id for d in new_only if d.acked]
    sources_file(file, NEW, OLD)  # the operator installs the new secret, the old one second for late retries
    await load
    forged_ids = await forgeries
    prefix = relay.env["RELAY_TOPIC_PREFIX"]
    deadline = time.monotonic() + 60
    seen: Counter[str] = Counter()
    while time.monotonic() < deadline:
        seen = Counter()
        for family in ("transaction", "pay_link", "dlq"):
            for record in await read_topic(broker.bootstrap, f"{prefix}.{family}"):
                seen[json.loads(record.value)["id"] if family != "dlq" else (record.key or b"").decode()] += 1
        if all(seen[d.delivery_id] for d in sent):
            break
        await asyncio.sleep(1)
    flooding = f" after {flooded[401]:,} forgeries in {flood_took:.0f} s," if flood_seconds else ""
    report = await reconcile(
        f"secret regenerated at {per_second:g} deliveries/s (parking {where}),{flooding} file updated"
        f" {updated_after:.0f} s later ({len(given_up)} deliveries had failed all 3 attempts, at least {floor}"
        f" wanted; {len(forged_ids)} forgeries alongside)",
        broker.bootstrap,
        prefix,
        sent,
        sender,
    )
    metrics = httpx.get(f"{relay.url}/metrics").text
    FIGURES.append(
        f"regeneration at {per_second:g}/s (parking {where}){flooding} update after {updated_after:.0f} s: "
        + "; ".join(
            line
            for line in metrics.splitlines()
            if line.startswith("mytpe_relay_park") and "shop" in line and "_created" not in line
        )
    )
    unacknowledged = deliveries - report.acknowledged
    assert accepted_early == [], "acknowledged under the new secret before the relay had it"
    assert len(refused_thrice) >= floor, f"{len(refused_thrice)} given up before the update: the case was not tested"
    assert unacknowledged >= len(given_up) >= len(refused_thrice)
    assert report.never_in_kafka == 0, "a delivery was lost"
    assert [i for i in seen if seen[i] > 1] == [], "a delivery was published twice"
    assert not any(seen[i] for i in forged_ids), "a forgery was published"
    assert not any(i.startswith("flood-") for i in seen), "a forgery was published"
    assert report.acknowledged_missing == 0
    reverified = next(ln for ln in metrics.splitlines() if ln.startswith('mytpe_relay_reverified_total{source="shop"}'))
    assert unacknowledged <= float(reverified.rsplit(" ", 1)[1]) <= deliveries  # each one MyTPE gave up on, at least


RATE = 50.0
SECONDS = 24


ANSWER_FAULTS = {
    "": None,
    ", its regenerate answer lost": {"lose_next": 1, "stall_seconds": 5},
    ", its regenerate applied 5 s late": {"stall_next": 1, "stall_seconds": 5},
}


@pytest.mark.parametrize("fault", list(ANSWER_FAULTS), ids=["plain", "answer-lost", "applied-late"])
async def test_rotate_under_50_deliveries_per_second(
    broker: LocalKafka, relay_factory: Callable[..., RelayProcess], tmp_path: Path, fault: str
) -> None:
    """`mytpe-relay webhook rotate` against the sandbox while it delivers 50/s with MyTPE's retries (4 s, 8 s),
    and with the regenerate call's answer lost (the client gives up after 2 s) or the call applied late."""
    sandbox = await asyncio.to_thread(start_sandbox, tmp_path)
    try:
        await _rotate_under_load(broker, relay_factory, tmp_path, sandbox, fault)
    finally:
        sandbox.process.kill()
        sandbox.process.wait(10)


async def _rotate_under_load(
    broker: LocalKafka,
    relay_factory: Callable[..., RelayProcess],
    tmp_path: Path,
    sandbox: SandboxProcess,
    fault: str,
) -> None:
    file = tmp_path / "sources.yaml"
    block = {"api": "legacy", "base_url": sandbox.url, "instance_id": SANDBOX_INSTANCE, "allow_http": True}
    file.write_text(json.dumps({"sources": [{"name": "shop", "secrets": ["whsec_" + "0" * 48], "mytpe": block}]}))
    relay = relay_factory(
        RELAY_MYTPE_SECRETS="",
        RELAY_SOURCES_FILE=str(file),
        RELAY_MYTPE_API_KEY="sandbox-key",
        RELAY_MYTPE_API_SECRET="sandbox-secret",
    )
    relay.env["RELAY_PUBLIC_URL"] = relay.url
    await asyncio.to_thread(relay.start)
    command = [sys.executable, "-m", "relay", "webhook"]
    register = await asyncio.to_thread(
        subprocess.run, [*command, "register", "--source", "shop"], env=relay.env, timeout=60, check=False
    )
    assert register.returncode == 0
    for _ in range(100):  # bounded: the relay reloads the registered secret (polled every second)
        if "mytpe_relay_config_generation 2.0" in httpx.get(f"{relay.url}/metrics").text:
            break
        await asyncio.sleep(0.1)
    emitted = sandbox.control("/sandbox/emit", {"hook": SANDBOX_INSTANCE, "count": int(RATE * SECONDS), "rate": RATE})
    await asyncio.sleep(SECONDS / 3)
    rotate = [*command, "rotate", "--source", "shop", "--relay-url", relay.url, "--window-minutes", "5"]
    faults = ANSWER_FAULTS[fault]
    if faults is not None:
        sandbox.control("/sandbox/faults", {**faults, "match": "regenerate-secret"})
    rotated = await asyncio.to_thread(
        subprocess.run,
        rotate,
        env={**relay.env, "RELAY_MYTPE_API_TIMEOUT_SECONDS": "2"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    closed = time.time()
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    ids = set(emitted["deliveries"])
    settled = False
    for _ in range(600):  # bounded: 60 s for the last retries (4 s, then 8 s) to settle
        state = sandbox.control("/sandbox/attempts")
        settled = all(d["status"] != "pending" for d in state["deliveries"]) and len(state["deliveries"]) == len(ids)
        if settled:
            break
        await asyncio.sleep(0.1)
    assert settled, "the sandbox's deliveries did not settle: the figures below would be built from a partial log"
    seen: Counter[str] = Counter()
    prefix = relay.env["RELAY_TOPIC_PREFIX"]
    for family in ("transaction", "pay_link", "dlq"):
        for record in await read_topic(broker.bootstrap, f"{prefix}.{family}"):
            seen[json.loads(record.value)["id"] if family != "dlq" else (record.key or b"").decode()] += 1
    tries = [t for d in state["deliveries"] for t in d["tries"]]
    acked = [d["id"] for d in state["deliveries"] if d["status"] == "succeeded"]
    after = [a for a in state["log"] if a["at"] > closed and not (isinstance(a["status"], int) and a["status"] < 300)]
    REPORTS.append(
        ScenarioReport(
            name=f"`webhook rotate` under {RATE:.0f} deliveries/s{fault} (sandbox, 3 attempts, 4 s then 8 s)",
            deliveries=len(ids),
            requests=len(tries),
            ok_2xx=sum(1 for t in tries if isinstance(t, int) and 200 <= t < 300),
            status_503=sum(1 for t in tries if t == 503),
            other=sum(1 for t in tries if not (isinstance(t, int) and (200 <= t < 300 or t == 503))),
            acknowledged=len(acked),
            events_in_kafka=sum(seen.values()),
            acknowledged_missing=sum(
                1 for d in state["deliveries"] if d["status"] == "succeeded" and not seen[d["id"]]
            ),
            duplicates_of_acknowledged=sum(seen[i] - 1 for i in ids if seen[i] > 1),
            never_in_kafka=sum(1 for i in ids if not seen[i]),
        )
    )
    assert [i for i in ids if not seen[i]] == [], "lost"
    assert [i for i in ids if seen[i] > 1] == [], "published twice"
    assert sorted(acked) == sorted(ids), "every delivery got a 2xx from the relay within MyTPE's 3 attempts"
    assert any(t == 503 for t in tries), "no attempt met the rotation window: the scenario did not test it"
    assert after == [], "refused after the window closed"
    hook = sandbox.api("GET", f"/api/v2/mytpe-pay/{SANDBOX_INSTANCE}/webhook")["data"]
    installed = yaml.safe_load(file.read_text())["sources"][0]["secrets"][0]
    assert masked_matches(hook["webhook_secret"], installed), "MyTPE and the relay disagree on the secret"
