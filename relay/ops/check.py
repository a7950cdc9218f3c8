"""`mytpe-relay check`: is this configuration able to serve? Prints one line per check."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from relay.dedupe.connect import where
from relay.dedupe.factory import dedupe_from_settings
from relay.errors import StartupError
from relay.kafka.durability import admin_client, layouts, warnings
from relay.kafka.publisher import probe
from relay.kafka.topics import TopicUnreadable, metadata_client, state_of
from relay.metrics import Metrics
from relay.settings import KafkaSecurity, Settings, report
from relay.sources.config import legacy
from relay.sources.registry import SourceRegistry
from relay.spool.room import OVERHEAD, spool_room
from relay.spool.store import FILE, peek
from relay.tracing import TracingConfig

CHANGED = "mytpe_relay_kafka_credentials_changed"
TOPIC_RETRY_SECONDS = 5.0  # how long a topic's retriable metadata error may last before it fails the check


async def check(settings: Settings, *, tracing: TracingConfig | None = None) -> bool:
    router = settings.router()
    default = legacy(settings.secrets) if settings.secrets else None
    sources = SourceRegistry(
        default=default, file=settings.sources_file, metrics=Metrics()
    ).current  # ConfigError: exit 2
    served = ", ".join(f"{s.name} ({s.path}, {len(s.secrets)} secret(s))" for s in sources.by_path.values())
    print(f"config: ok (listen {settings.host}:{settings.port}; sources: {served})")
    print(report(settings))  # what differs from the defaults, secrets as `(set)`
    print((tracing or TracingConfig()).describe())
    try:
        cluster = await probe(settings, metadata_timeout=settings.startup_timeout_seconds)
    except StartupError as exc:
        print(f"kafka: FAILED: {exc}")
        if settings.spool_dir is not None:  # what waits in the spool matters most while Kafka is down
            print(await _spool_line(settings))
        return False
    print(f"kafka: ok ({','.join(settings.kafka_bootstrap_servers)}, {cluster.brokers} broker(s))")
    topics_ok = await _check_topics(settings.kafka_bootstrap_servers, router.topics(), settings.kafka_security)
    if settings.kafka_security.files():
        line = await asyncio.to_thread(_credentials_in_use, settings.port)
        if line is not None:
            print(line)
    store = dedupe_from_settings(settings)
    await store.start()
    try:
        dedupe_ok = await store.ping()
    finally:
        await store.stop()
    print(f"dedupe: {'ok' if dedupe_ok else 'FAILED'} ({where(settings.dedupe_url)})")
    if settings.spool_dir is not None:
        print(await _spool_line(settings))
    ready = topics_ok and dedupe_ok
    print("ready" if ready else "not ready")
    return ready


async def _spool_line(settings: Settings) -> str:
    """What the spool holds, read from its file without changing it (a relay may be running on it), and
    the files set aside beside it, which nothing drains until `mytpe-relay spool drain` runs."""
    directory = settings.spool_dir or Path()
    try:
        found = await asyncio.to_thread(peek, directory)
    except OSError as exc:
        return f"spool: FAILED ({directory}: {exc.strerror or exc})"
    except sqlite3.Error as exc:
        return f"spool: FAILED ({directory}: {exc})"
    unwritable = await asyncio.to_thread(_unwritable, directory)
    if unwritable:
        return f"spool: FAILED ({unwritable} cannot be written by this user: the relay refuses to start on it)"
    room = settings.spool_max_bytes - found.bytes
    oldest = "" if found.oldest is None else f", oldest {time.time() - found.oldest:.0f}s"
    line = f"spool: ok ({directory}: {found.entries} record(s), {found.bytes} bytes, {room} free{oldest})"
    room_on_disk = await asyncio.to_thread(spool_room, directory)
    if room_on_disk is not None and room_on_disk < settings.spool_max_bytes * OVERHEAD:
        line += (
            f"\nspool: WARNING: its files can grow to {room_on_disk} bytes on their volume, less than the"
            f" {settings.spool_max_bytes} bytes of RELAY_SPOOL_MAX_BYTES may take ({OVERHEAD:g}x in SQLite's pages):"
            " the disk may fill before the cap, and a write is then a 503 (spool_error)"
        )
    if found.set_aside:
        names = ", ".join(path.name for path in found.set_aside)
        line += (
            f"\nspool: WARNING: {len(found.set_aside)} file(s) set aside as corrupt, not drained: {names};"
            " run `mytpe-relay spool drain` with no relay on this spool"
        )
    return line


def _unwritable(directory: Path) -> Path | None:
    """The first of the spool's directory and files this process may not write (a permission, a read-only
    mount), which SQLite would open read-only without a word; None when all may be."""
    paths = [directory, *(directory / f"{FILE}{suffix}" for suffix in ("", "-wal", "-shm"))]
    return next((path for path in paths if path.exists() and not os.access(path, os.W_OK)), None)


async def _check_topics(bootstrap_servers: Sequence[str], topics: Sequence[str], security: KafkaSecurity) -> bool:
    """One line per topic, then durability warnings, over one metadata and one admin connection."""
    try:
        async with (
            metadata_client(bootstrap_servers, security) as metadata,
            admin_client(bootstrap_servers, security) as admin,
        ):
            ok = await _topic_states(metadata, topics)
            await _durability(admin, metadata, topics)
    except KafkaError as exc:
        print(f"topics: FAILED: {type(exc).__name__}: {exc}")
        return False
    return ok


async def _topic_states(metadata: AIOKafkaClient, topics: Sequence[str]) -> bool:
    """An absent topic is not a failure (the broker may auto-create it); a topic whose metadata cannot be read
    is one, and says why: an error is never reported as "missing"."""
    ok = True
    for topic in topics:
        try:
            state = await state_of(metadata, topic, bound=TOPIC_RETRY_SECONDS)
        except TopicUnreadable as exc:
            print(f"topic {topic}: FAILED: {exc}")
            ok = False
            continue
        missing = "missing (created on first publish only if the broker auto-creates)"
        print(f"topic {topic}: {missing if state.absent else 'ok'}")
    return ok


def _credentials_in_use(port: int) -> str | None:
    """Run inside the pod, check asks the relay beside it whether it still uses the credential files on disk."""
    relay = f"the relay on 127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode("utf-8", "replace")
    except OSError:
        return None  # no relay here to compare with
    value = next((line.split()[-1] for line in text.splitlines() if line.startswith(f"{CHANGED} ")), None)
    if value is None:
        return None
    if float(value) > 0:
        return f"kafka credentials: WARNING: the files on disk changed after {relay} loaded them; restart it"
    return f"kafka credentials: {relay} uses the files on disk"


async def _durability(admin: AIOKafkaAdminClient, metadata: AIOKafkaClient, topics: Sequence[str]) -> None:
    """Warnings only: `acks=all` on a topic with one in-sync replica acknowledges what one disk holds."""
    try:
        found = await layouts(admin, metadata, topics)
    except KafkaError as exc:
        print(f"durability: unknown ({type(exc).__name__}: {exc})")
        return
    for topic, layout in found.items():
        for warning in warnings(layout) if layout is not None else ():
            print(f"topic {topic}: WARNING: {warning}")
