"""`mytpe-relay replay` as operators run it: a real process, the real broker, the relay's real Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
from asyncio import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx2 as httpx
import pytest
import redis.asyncio as aioredis

from relay.mytpe import samples
from relay.settings import Secret, Settings
from tests.helpers import SECRET, signed_headers
from tests.integration.conftest import read_topic, running_relay
from tests.integration.test_cli import RELAY, relay_env, run
from tests.schemas import record_errors
from tests.servers import LocalRedis, free_port
from tests.vectors import VECTORS

pytestmark = pytest.mark.integration
ROUTES = "trader=kyc,payment_link=pay_link"


def summary(stdout: str) -> tuple[str, list[str]]:
    """The counts of the `replay:` line, and the problem lines under it."""
    first, *rest = stdout.splitlines()
    return first.rsplit(": ", 1)[1], [line.strip() for line in rest]


async def quarantine(settings: Settings, bodies: list[bytes]) -> None:
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        for number, body in enumerate(bodies):
            headers = signed_headers(body, timestamp=int(datetime.now().timestamp()), delivery_id=f"dlq-{number}")
            response = await client.post(relay.webhook_url, content=body, headers=headers)
            assert response.json()["status"] == "quarantined", response.text


async def test_dlq_records_reach_their_topic_after_a_route_is_added_once(
    kafka, redis: LocalRedis, kafka_settings: Callable[..., Settings]
) -> None:
    settings = kafka_settings(dedupe_url=redis.url)
    prefix = settings.topic_prefix
    await quarantine(
        settings,
        [
            b'{"delivery_id":"dlq-0","event":"trader.onboarding_changed","data":{"trader":{"id":"tr-1"}}}',
            b'{"delivery_id":"dlq-1","event":"payment_link.exhausted","data":{"payment_link":{"id":"pl-1"}}}',
            b'{"delivery_id":"dlq-2","event":"refund.created","data":{"refund":{"id":"rf-1"}}}',
            b'{"delivery_id":"dlq-3","event":"transaction.completed","data":',
        ],
    )
    env = relay_env(kafka.bootstrap, prefix, RELAY_DEDUPE_URL=redis.url, RELAY_ROUTES=ROUTES)

    dry = run(["replay", "--from-dlq", "--dry-run"], env)
    assert summary(dry.stdout)[0] == "unusable 2, would_publish 2", dry.stdout
    assert await read_topic(kafka.bootstrap, f"{prefix}.kyc") == []

    first = run(["replay", "--from-dlq"], env)
    assert first.returncode == 1, "two records are still unusable"
    counts, problems = summary(first.stdout)
    assert counts == "accepted 2, unusable 2"
    assert all(re.fullmatch(rf"{prefix}\.dlq\[\d+\]@\d+: unusable:\w+", line) for line in problems), problems
    assert sorted(p.rsplit(":", 1)[1] for p in problems) == ["malformed_json", "unroutable_event"]
    (trader,) = await read_topic(kafka.bootstrap, f"{prefix}.kyc")
    (link,) = await read_topic(kafka.bootstrap, f"{prefix}.pay_link")
    assert (trader.key, link.key) == (b"tr-1", b"pl-1")
    assert [json.loads(r.value)["id"] for r in (trader, link)] == ["dlq-0", "dlq-1"]
    assert record_errors(trader.value) == record_errors(link.value) == []

    second = run(["replay", "--from-dlq"], env)
    assert summary(second.stdout)[0] == "duplicate 2, unusable 2"
    assert len(await read_topic(kafka.bootstrap, f"{prefix}.kyc")) == 1
    assert len(await read_topic(kafka.bootstrap, f"{prefix}.dlq")) == 4, "the DLQ is left as it was"


def entry(body: bytes, *, secret: str = SECRET, timestamp: int, delivery_id: str, binary: bool = False) -> str:
    headers = signed_headers(body, secret=secret, timestamp=timestamp, delivery_id=delivery_id)
    payload = {"body_base64": base64.b64encode(body).decode()} if binary else {"body": body.decode()}
    return json.dumps({"headers": headers, **payload})


async def test_a_file_of_old_captured_requests_is_relayed_once(
    kafka, redis: LocalRedis, kafka_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = kafka_settings(dedupe_url=redis.url, secrets=(Secret(SECRET), Secret(VECTORS[2].secret)))
    prefix = settings.topic_prefix
    live, live_id = samples.build("transaction.completed", delivery_id="live-1"), "live-1"
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        headers = signed_headers(live, timestamp=int(datetime.now().timestamp()), delivery_id=live_id)
        assert (await client.post(relay.webhook_url, content=live, headers=headers)).json()["status"] == "accepted"
    two_days_ago = int(datetime.now().timestamp()) - 2 * 86400
    vector = VECTORS[2]  # its own secret, PHP escapes, nulls
    vector_entry = {
        "headers": {
            "x-mytpepay-signature": vector.signature,
            "X-MYTPEPAY-TIMESTAMP": vector.timestamp,
            "X-MytpePay-Event": vector.event,
            "X-MytpePay-Delivery-Id": "header-id",
        },
        "body": vector.body.decode(),
    }
    old = samples.build("pay_link.created", delivery_id="old-1")
    lines = [
        json.dumps(vector_entry),
        entry(old, timestamp=two_days_ago, delivery_id="old-1", binary=True),
        entry(live, timestamp=two_days_ago, delivery_id=live_id),
        entry(old, timestamp=two_days_ago, delivery_id="old-1", secret="whsec_" + "e" * 48),
        '{"headers": {}, "body": 42}',
        "",
    ]
    captured = tmp_path / "deliveries.jsonl"
    captured.write_text("\n".join(lines), encoding="utf-8")
    env = relay_env(
        kafka.bootstrap, prefix, RELAY_DEDUPE_URL=redis.url, RELAY_MYTPE_SECRETS=f"{SECRET},{vector.secret}"
    )

    first = run(["replay", str(captured), "--progress", "always"], env)
    assert first.returncode == 1, first.stderr
    counts, problems = summary(first.stdout)
    assert counts == "accepted 2, duplicate 1, rejected 1, unreadable 1"
    assert problems == [
        "deliveries.jsonl:4: rejected:bad_signature",
        "deliveries.jsonl:5: unreadable",
    ]
    assert "[########################] 5/5 100%" in first.stderr
    assert "memory://" not in first.stderr

    records = await read_topic(kafka.bootstrap, f"{prefix}.transaction")
    assert sorted(json.loads(r.value)["id"] for r in records) == [json.loads(vector.body)["delivery_id"], live_id]
    vector_record = next(r for r in records if json.loads(r.value)["id"] != live_id)
    assert vector_record.value.endswith(vector.body[vector.body.index(b'"data":') :])
    links = await read_topic(kafka.bootstrap, f"{prefix}.pay_link")
    assert [json.loads(r.value)["id"] for r in links] == ["old-1"]
    assert all(record_errors(r.value) == [] for r in [*records, *links])

    second = run(["replay", str(captured), "--progress", "never"], env)
    assert summary(second.stdout)[0] == "duplicate 3, rejected 1, unreadable 1"
    assert second.stderr == ""
    assert len(await read_topic(kafka.bootstrap, f"{prefix}.transaction")) == 2


async def test_memory_dedupe_skips_repeats_within_the_run_and_says_so(kafka, tmp_path: Path) -> None:
    prefix = f"replay{int(datetime.now().timestamp() * 1000)}"
    body = samples.build("transaction.pending", delivery_id="twice")
    stamp = int(datetime.now().timestamp()) - 3600
    captured = tmp_path / "twice.jsonl"
    captured.write_text("\n".join([entry(body, timestamp=stamp, delivery_id="twice")] * 2), encoding="utf-8")
    done = run(["replay", str(captured)], relay_env(kafka.bootstrap, prefix))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"replay: 2 entries from {captured}: accepted 1, duplicate 1"]
    assert "memory://" in done.stderr
    assert len(await read_topic(kafka.bootstrap, f"{prefix}.transaction")) == 1


async def test_a_replay_never_fails_open_when_redis_is_down(kafka, tmp_path: Path) -> None:
    """Review finding: replay runs with the relay's environment, and RELAY_DEDUPE_FAIL_OPEN (operations.md offers
    it in an emergency, when replays run) let every entry publish unclaimed while Redis was down, exit 0. A
    replay stops at the first unavailable, as its docs say."""
    prefix = f"replay{int(datetime.now().timestamp() * 1000)}"
    body = samples.build("transaction.pending", delivery_id="open")
    captured = tmp_path / "open.jsonl"
    captured.write_text(entry(body, timestamp=int(datetime.now().timestamp()), delivery_id="open"), encoding="utf-8")
    down = f"redis://127.0.0.1:{free_port()}/0"
    done = run(
        ["replay", str(captured)],
        relay_env(kafka.bootstrap, prefix, RELAY_DEDUPE_URL=down, RELAY_DEDUPE_FAIL_OPEN="true"),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unavailable" in done.stdout
    assert await read_topic(kafka.bootstrap, f"{prefix}.transaction") == []


def test_replay_needs_exactly_one_source(kafka, tmp_path: Path) -> None:
    env = relay_env(kafka.bootstrap, "unused")
    assert run(["replay"], env).returncode == 2
    assert run(["replay", str(tmp_path / "x.jsonl"), "--from-dlq"], env).returncode == 2
    missing = run(["replay", str(tmp_path / "absent.jsonl")], env)
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        f"mytpe-relay replay: {tmp_path}/absent.jsonl: no such file",
    )


async def test_one_entitys_entries_keep_their_order_while_others_overlap(kafka, tmp_path: Path) -> None:
    """End to end on the broker. The producer keeps call order here even without the per-key chain;
    tests/ops/test_replay_parts.py is what fails if the chain is lost (a slow first entry, a fast second)."""
    prefix = f"order{int(datetime.now().timestamp() * 1000)}"
    stamp = int(datetime.now().timestamp()) - 600
    statuses = ("pending", "processing", "completed")
    lines = [
        entry(
            samples.build(f"transaction.{status}", delivery_id=f"{seed}-{status}", seed=seed),
            timestamp=stamp,
            delivery_id=f"{seed}-{status}",
        )
        for status in statuses
        for seed in range(30)  # each entity's three entries are 30 apart: inside one window of publishes
    ]
    captured = tmp_path / "ordered.jsonl"
    captured.write_text("\n".join(lines), encoding="utf-8")
    done = run(["replay", str(captured)], relay_env(kafka.bootstrap, prefix))
    assert done.stdout.splitlines() == [f"replay: 90 entries from {captured}: accepted 90"], done.stderr
    by_key: dict[bytes | None, list[str]] = {}
    for record in await read_topic(kafka.bootstrap, f"{prefix}.transaction"):
        by_key.setdefault(record.key, []).append(json.loads(record.value)["data"]["transaction"]["status"])
    assert len(by_key) == 30
    assert all(sequence == list(statuses) for sequence in by_key.values()), by_key


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
async def test_a_stopped_replay_leaves_no_entry_in_flight(
    kafka, redis: LocalRedis, tmp_path: Path, stop: signal.Signals
) -> None:
    """Review finding: SIGTERM (a deleted Job) ended `replay` at once; Ctrl-C flushed the producer but left the
    publishes in flight unsettled (the docs said it committed them). Either way up to a window of entries kept
    their in-flight claims in Redis, so a rerun within the lease stopped at them (`unavailable:in_flight`), and
    one after it published again those Kafka had taken. Now both stop it the same way: nothing new starts, and
    what is in flight is committed or released."""
    prefix = f"stop{int(stop)}-{int(datetime.now().timestamp() * 1000)}"
    stamp = int(datetime.now().timestamp()) - 600
    lines = [
        entry(samples.build("transaction.completed", delivery_id=f"t{n}", seed=n), timestamp=stamp, delivery_id=f"t{n}")
        for n in range(20_000)  # several seconds of replay: the signal comes while entries are in flight
    ]
    captured = tmp_path / "many.jsonl"
    captured.write_text("\n".join(lines), encoding="utf-8")
    env = relay_env(kafka.bootstrap, prefix, RELAY_DEDUPE_URL=redis.url)
    argv = [*RELAY, "replay", str(captured), "--progress", "never"]
    process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marks = f"mytpe-relay:{prefix}:dedupe:*"
    store = aioredis.from_url(redis.url, decode_responses=True)
    try:
        for _ in range(600):  # bounded: 60 s
            if len(await store.keys(marks)) >= 200 or process.returncode is not None:
                break
            await asyncio.sleep(0.1)
        process.send_signal(stop)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 128 + stop, (out, err)
        said = f"stopped by {stop.name}; run it again to resume".encode()
        assert (said in err) == (stop != signal.SIGINT)  # Ctrl-C's 130 says nothing more
        keys = [str(key) for key in await store.keys(marks)]
        states = [str(state) for state in await store.mget(keys)] if keys else []
    finally:
        await store.aclose()
    assert 0 < len(keys) < len(lines)
    assert [s for s in states if s != "done"] == []  # committed (or released, and then absent): none in flight
    published = [json.loads(r.value)["id"] for r in await read_topic(kafka.bootstrap, f"{prefix}.transaction")]
    assert sorted(published) == sorted(key.rsplit(":", 1)[1] for key in keys)  # each once, each marked
