"""`mytpe-relay spool drain --dir D`: publish what a spool directory holds, then exit.

For a spool no relay serves any more: a StatefulSet scaled in leaves its PVCs behind. Run it as a Job
with the PVC mounted (deploy/k8s/components/spool/drain-job.yaml), with the relay's Kafka settings.
It drains the spool, then copies what files set aside as corrupt (`spool.db.corrupt-*`) still yield
into it, in batches within RELAY_SPOOL_MAX_BYTES, draining each in turn; a file that cannot be copied
(a full disk) is kept for the next run and does not stop the spool's own drain. Exit 0 when the spool
is empty and no file is set aside, 1 when records or files are left (Kafka refused or timed out, a
set-aside file could not be read to the end or not copied), 3 when Kafka cannot be reached or the
spool cannot be opened (a relay or another drain holds it: one process per spool). A failure to run (no
directory, cannot start, set-aside files that cannot be listed or copied at all) is said on stderr; what it did
and what it left (records published, those of them moved to the DLQ, those the recovery check found in Kafka
already, what is left, each set-aside file's outcome) on stdout. The exit status says whether anything is left.
SIGTERM (the Job deleted or evicted) stops it as Ctrl-C does, flushed and what Kafka acknowledged deleted: exit
143, and a line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay import tracing
from relay.errors import StartupError
from relay.http.app import recovery_from_settings
from relay.kafka.publisher import KafkaPublisher
from relay.metrics import Metrics
from relay.ops.interrupt import TerminatedBy, as_ctrl_c, to_the_end
from relay.settings import Settings
from relay.spool.database import FILE
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.store import SpoolStore
from relay.tracing import TracingConfig

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

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
        print("mytpe-relay spool drain: give --dir or set RELAY_SPOOL_DIR", file=sys.stderr)
        return 2
    found = _spool_files(directory)
    if found is None:  # a typo: never made into a new spool
        print(f"mytpe-relay spool drain: {directory}: no such directory: check --dir", file=sys.stderr)
        return 2
    if not found:  # a volume no relay opened a spool on: nothing to drain, and nothing is made
        print(f"spool {directory}: no {FILE} and nothing set aside: nothing to drain")
        return 0
    tracer = tracing.start(TracingConfig.from_env(env))  # each drained record gets a span
    try:
        # A deleted or evicted Job's SIGTERM as Ctrl-C: the producer flushed and what Kafka acknowledged deleted,
        # rather than the process dying with them (each sent again at the next run)
        return asyncio.run(as_ctrl_c(drain(settings, directory, args.timeout, tracer=tracer)))
    except TerminatedBy as exc:
        with contextlib.suppress(OSError):
            print(f"mytpe-relay spool drain: stopped by {exc}; run it again to drain the rest", file=sys.stderr)
        return 128 + exc.signum
    finally:
        if tracer is not None:
            tracer.shutdown()


def _spool_files(directory: Path) -> bool | None:
    """Whether `directory` holds any of a spool's files (spool.db, its -wal, a file set aside); None when there is
    no such directory. One that cannot be listed (EACCES, a file) is left to the spool's open, which says why."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return None
    except OSError:
        return True
    return any(name.startswith(FILE) for name in names)


async def drain(settings: Settings, directory: Path, timeout: float, *, tracer: Tracer | None = None) -> int:
    """The spool first, then what the files set aside yield, batch by batch within the spool's room, each
    drained in turn: a set-aside file that cannot be copied (a full disk) never stops the spool's drain."""
    metrics = Metrics()
    spool = Spool(directory, max_bytes=settings.spool_max_bytes, metrics=metrics)
    try:
        await spool.open()
    except StartupError as exc:
        await spool.close()
        print(f"mytpe-relay spool drain: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    publisher = KafkaPublisher.from_settings(settings)
    try:
        await publisher.start(timeout=settings.startup_timeout_seconds)
    except StartupError as exc:
        await _salvage(spool, directory)  # no Kafka: what the files yield waits in the spool for the next run
        await spool.close()
        print(f"mytpe-relay spool drain: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    drainer = Drainer(spool, publisher, metrics, dlq=settings.router().dlq)  # no I/O
    drainer.recovery = recovery_from_settings(settings, metrics)  # RELAY_SPOOL_RECOVERY_CHECK
    drainer.tracer = tracer
    try:
        await _drain_all(spool, drainer, timeout)
    except (sqlite3.Error, OSError) as exc:  # the spool failed mid-drain (SQLITE_IOERR): one line, never a traceback
        print(f"mytpe-relay spool drain: the spool failed: {exc}; run it again", file=sys.stderr)
    finally:  # to its end, a signal meanwhile (or a first Ctrl-C) notwithstanding
        await to_the_end(_close(settings, publisher, drainer, spool))
    left, moved, found = spool.entries, _moved(metrics), _count(metrics, "mytpe_relay_spool_found_in_kafka_total")
    dlq = f", {moved} of them to the DLQ (Kafka refused them for good, or they were damaged)" if moved else ""
    dlq += f", {found} found in Kafka already (removed, not published again)" if found else ""
    published = _count(metrics, "mytpe_relay_spool_drained_total")  # each counted as it left the spool
    print(f"spool {directory}: {published} record(s) published{dlq}, {left} left")
    kept = await asyncio.to_thread(SpoolStore(directory).set_aside)
    if kept:
        print(f"spool {directory}: {len(kept)} file(s) set aside still: {', '.join(path.name for path in kept)}")
    return EXIT_LEFT if left or kept else 0


async def _close(settings: Settings, publisher: KafkaPublisher, drainer: Drainer, spool: Spool) -> None:
    await publisher.stop(timeout=settings.flush_timeout_seconds)
    await drainer.settle(timeout=1.0)  # the flush answered the publishes still in flight: their deletes first
    await spool.close()


def _count(metrics: Metrics, name: str) -> int:
    return int(metrics.registry.get_sample_value(name) or 0)


def _moved(metrics: Metrics) -> int:
    """Records this drain moved to the DLQ: in this process, only the drainer counts quarantines."""
    (family,) = metrics.quarantined.collect()
    return int(sum(sample.value for sample in family.samples if sample.name.endswith("_total")))


async def _drain_all(spool: Spool, drainer: Drainer, timeout: float) -> None:
    """Drain; copy a batch of set-aside records in; drain again; until nothing more is copied."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    copied = 1
    while copied and (room := deadline - loop.time()) > 0:
        await drainer.drain(timeout=room)
        if drainer.sending():  # cut by the deadline: nothing is copied in beside publishes (and deletes) in flight
            break
        copied = await _salvage(spool, spool.directory)


async def _salvage(spool: Spool, directory: Path) -> int:
    try:
        lines, copied = await spool.salvage()
    except (sqlite3.Error, OSError) as exc:  # one line, never a traceback; the spool's drain goes on
        print(f"spool {directory}: the files set aside could not be recovered: {exc}", file=sys.stderr)
        return 0
    for line in lines:
        print(f"spool {directory}: {line}")
    return copied
