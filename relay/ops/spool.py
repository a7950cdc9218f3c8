"""`mytpe-relay spool drain --dir D`: publish what a spool directory holds, then exit.

For a spool no relay serves any more: a StatefulSet scaled in leaves its PVCs behind. Run it as a Job
with the PVC mounted (deploy/k8s/components/spool/drain-job.yaml), with the relay's Kafka settings.
Exit 0 when the spool is empty, 1 when records are left (Kafka refused or timed out), 3 when Kafka
cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from relay.errors import StartupError
from relay.kafka.publisher import KafkaPublisher
from relay.metrics import Metrics
from relay.settings import Settings
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool

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
    metrics = Metrics()
    spool = Spool(directory, max_bytes=settings.spool_max_bytes, metrics=metrics)
    await spool.open()
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
    return EXIT_LEFT if left else 0
