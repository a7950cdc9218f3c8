"""`mytpe-relay spool drain --dir D`: publish what a spool directory holds, then exit.

For a spool no relay serves any more: a StatefulSet scaled in leaves its PVCs behind. Run it as a Job
with the PVC mounted (deploy/k8s/components/spool/drain-job.yaml), with the relay's Kafka settings.
It first copies what files set aside as corrupt (`spool.db.corrupt-*`) still yield into the spool.
Exit 0 when the spool is empty, 1 when records are left (Kafka refused or timed out, or a set-aside
file could not be read to the end), 3 when Kafka cannot be reached or the spool cannot be opened (a
relay or another drain holds it: one process per spool).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from relay.errors import StartupError
from relay.kafka.publisher import KafkaPublisher
from relay.metrics import Metrics
from relay.settings import Settings
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.store import SpoolStore

EXIT_LEFT = 1
EXIT_STARTUP = 3


def add_parser(sub: Any) -> None:
    spool = sub.add_parser("spool", help="the durable spool (RELAY_SPOOL_DIR)")
    commands = spool.add_subparsers(dest="spool_command", required=True)
    drain = commands.add_parser("drain", help="publish what a spool directory holds, then exit")
    drain.add_argument("--dir", type=Path, help="the spool directory (default: RELAY_SPOOL_DIR)")
    drain.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (600)")
    drain.set_defaults(run=cmd_spool_drain)


def cmd_spool_drain(args: argparse.Namespace, env: dict[str, str]) -> int:
    settings = Settings.from_env(env)
    directory = args.dir or settings.spool_dir
    if directory is None:
        print("mytpe-relay spool drain: give --dir or set RELAY_SPOOL_DIR")
        return 2
    return asyncio.run(drain(settings, directory, args.timeout))


async def drain(settings: Settings, directory: Path, timeout: float) -> int:
    try:
        salvaged = await asyncio.to_thread(_salvage, directory)
    except StartupError as exc:
        print(f"mytpe-relay spool drain: cannot start: {exc}")
        return EXIT_STARTUP
    except sqlite3.Error as exc:  # the copy into the spool failed (a full disk): nothing was copied
        print(f"mytpe-relay spool drain: cannot recover the files set aside: {exc}")
        return EXIT_STARTUP
    for line in salvaged:
        print(f"spool {directory}: {line}")
    metrics = Metrics()
    spool = Spool(directory, max_bytes=settings.spool_max_bytes, metrics=metrics)
    try:
        await spool.open()
    except StartupError as exc:
        await spool.close()
        print(f"mytpe-relay spool drain: cannot start: {exc}")
        return EXIT_STARTUP
    before = spool.entries
    publisher = KafkaPublisher.from_settings(settings)
    try:
        await publisher.start(timeout=settings.startup_timeout_seconds)
    except StartupError as exc:
        await spool.close()
        print(f"mytpe-relay spool drain: cannot start: {exc}")
        return EXIT_STARTUP
    try:
        left = await Drainer(spool, publisher, metrics, dlq=settings.router().dlq).drain(timeout=timeout)
    finally:
        await publisher.stop(timeout=settings.flush_timeout_seconds)
        await spool.close()
    print(f"spool {directory}: {before - left} record(s) published, {left} left")
    kept = await asyncio.to_thread(SpoolStore(directory).set_aside)
    if kept:
        print(f"spool {directory}: {len(kept)} file(s) set aside still: {', '.join(path.name for path in kept)}")
    return EXIT_LEFT if left or kept else 0


def _salvage(directory: Path) -> list[str]:
    """Set-aside files into the spool, under the spool's lock; one line per file."""
    store = SpoolStore(directory)
    problem = store.open()
    try:
        return ([problem] if problem else []) + store.salvage()
    finally:
        store.close()
