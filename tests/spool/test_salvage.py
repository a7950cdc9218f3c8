"""Files set aside, recovered by `spool drain` on real SQLite files: the live spool is drained whatever the
set-aside files do, a recovery is bounded and resumable, and a crash never loses nor copies a record twice.
The full-disk cases mount a real tmpfs (ENOSPC from the kernel) and need root (CI runs as root)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from localkafka import LocalKafka

from relay.errors import StartupError, Unavailable
from relay.metrics import Metrics
from relay.ops.spool import _drain_all
from relay.spool import aside
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.store import FILE, Pending, SpoolStore
from tests.conftest import fill_disk, tmpfs
from tests.fakes import FakePublisher
from tests.servers import read_topic
from tests.spool.test_refusals import env_for, relay

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs for a real ENOSPC needs root (CI runs as root)")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs."""
    with tmpfs(tmp_path / "disk", "2m") as mountpoint:
        yield mountpoint


def record(topic: str, name: str, n: int) -> Pending:
    value = json.dumps({"id": f"{name}-{n}", "pad": "x" * 300}).encode()
    return Pending(topic, b"k%d" % (n % 4), value, [("content-type", b"json")])


async def spool_of(directory: Path, topic: str, name: str, count: int) -> None:
    spool = Spool(directory, max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    await asyncio.gather(*(spool.put(record(topic, name, n)) for n in range(count)))  # a few transactions
    await spool.close()


def set_aside_names(directory: Path) -> list[str]:
    """The main files set aside (each may have its -wal and -shm beside it)."""
    names = [p.name for p in directory.iterdir() if ".corrupt-" in p.name or ".unreadable-" in p.name]
    return sorted(name for name in names if not name.endswith(("-wal", "-shm")))


@ROOT
async def test_a_nearly_full_disk_still_drains_the_live_spool(kafka: LocalKafka, disk: Path) -> None:
    """Today: the whole set-aside file was copied first, in one transaction; the disk filled, `spool drain`
    said "cannot recover the files set aside: database or disk is full", exit 3, and published nothing."""
    directory, prefix = disk / "spool", f"salv{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.transaction"
    await spool_of(directory, topic, "aside", 200)
    (directory / FILE).rename(directory / f"{FILE}.corrupt-1700000000")
    await spool_of(directory, topic, "live", 200)
    assert (directory / "spool.reserve").exists()  # as a relay leaves it
    fill_disk(disk / "filler", leave=96 * 1024)
    env = {**env_for(directory), "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "RELAY_TOPIC_PREFIX": prefix}
    done = await asyncio.to_thread(relay, ["spool", "drain", "--dir", str(directory), "--timeout", "40"], env)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), done.stdout + done.stderr
    published = [json.loads(r.value)["id"] for r in await read_topic(kafka.bootstrap, topic)]
    live = [i for i in published if i.startswith("live-")]
    assert sorted(live) == sorted(f"live-{n}" for n in range(200)), done.stdout
    recovered = [i for i in published if i.startswith("aside-")]
    assert len(recovered) == len(set(recovered))  # each at most once
    if done.returncode == 0:
        assert sorted(recovered) == sorted(f"aside-{n}" for n in range(200)) and not set_aside_names(directory)


@ROOT
async def test_a_set_aside_file_that_cannot_be_opened_on_a_full_disk_is_kept_for_the_next_run(disk: Path) -> None:
    """Today: the reader's open (its -shm) failed with the disk full, that was taken for damage, and the healthy
    file was renamed `unreadable-*` for good: 0 of its 200 records recovered, then or later."""
    directory = disk / "spool"
    await spool_of(directory, "t", "aside", 200)
    (directory / FILE).rename(directory / f"{FILE}.corrupt-1700000000")
    store = SpoolStore(directory)
    store.open()
    (directory / "spool.reserve").unlink(missing_ok=True)
    fill_disk(disk / "filler")
    store.salvage()  # nothing can be read nor copied: the disk is full
    assert set_aside_names(directory) == [f"{FILE}.corrupt-1700000000"]
    (disk / "filler").unlink()
    store.salvage()
    assert store.totals()[0] == 200 and set_aside_names(directory) == []
    store.close()


KILLED = """
import asyncio, os, sys
from pathlib import Path
from relay.errors import StartupError, Unavailable
from relay.metrics import Metrics
from relay.spool.spool import Spool
from relay.spool.store import Pending

async def main():
    spool = Spool(Path(sys.argv[1]), max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    for n in range(5):
        await spool.put(Pending("t", b"k", b"v%d" % n, []))
    os._exit(0)  # as a SIGKILL: the records are in the -wal only

asyncio.run(main())
"""


def killed_with_five(directory: Path) -> None:
    subprocess.run([sys.executable, "-c", KILLED, str(directory)], check=True, timeout=60)
    assert (directory / f"{FILE}-wal").exists()


def test_a_crash_midway_through_a_set_aside_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Today the main file was renamed first: a crash then left `spool.db-wal` alone, the next open started an
    empty `spool.db`, SQLite dropped the orphan log, and the 5 records it held were gone."""
    killed_with_five(tmp_path)
    renames: list[Path] = []
    real = Path.rename

    def dies_after_one(self: Path, target: Path) -> Path:
        if renames:
            raise SystemExit("killed")
        renames.append(self)
        return real(self, target)

    monkeypatch.setattr(Path, "rename", dies_after_one)
    with pytest.raises(SystemExit):
        aside.set_aside(tmp_path / FILE)
    monkeypatch.undo()
    store = SpoolStore(tmp_path)
    store.open()
    store.salvage()
    assert store.totals()[0] == 5
    store.close()


def test_a_set_aside_cut_short_by_the_old_order_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    """A `spool.db-wal` without its `spool.db` (a set-aside cut short after its first rename): refused, not
    an empty spool beside it."""
    killed_with_five(tmp_path)
    (tmp_path / FILE).rename(tmp_path / f"{FILE}.corrupt-1700000000")
    store = SpoolStore(tmp_path)
    with pytest.raises(StartupError) as refused:
        store.open()
    assert "spool.db-wal" in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / FILE).exists() and (tmp_path / f"{FILE}-wal").stat().st_size > 0


def test_a_crash_after_a_recovery_commits_copies_nothing_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Today: the copy committed, removing the file failed (a crash), and the next run copied it again: 5 -> 10."""
    killed_with_five(tmp_path)
    store = SpoolStore(tmp_path)
    store.open()
    store.close()
    aside.set_aside(tmp_path / FILE)
    calls: list[Path] = []
    real = aside.remove

    def fails_once(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.EIO, "killed")
        real(path)

    monkeypatch.setattr(aside, "remove", fails_once)
    store = SpoolStore(tmp_path)
    store.open()
    with pytest.raises(OSError):
        store.salvage()
    store.close()
    store = SpoolStore(tmp_path)
    store.open()
    store.salvage()
    assert store.totals()[0] == 5 and set_aside_names(tmp_path) == []
    store.close()


def shaped(row_id: int, key: bytes, value: bytes, headers: bytes = b"[]") -> tuple[object, ...]:
    """A row as the spool writes it: its size Pending.size's (64 and the bytes; no header here)."""
    return (row_id, "t", key, value, headers, 1.0, len(key) + len(value) + 64)


def written_aside(directory: Path, rows: list[tuple[object, ...]]) -> None:
    with sqlite3.connect(directory / f"{FILE}.corrupt-1700000000") as db:
        db.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY, topic, key, value, headers, spooled_at, size)")
        db.executemany("INSERT INTO spool VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.close()


def test_rows_a_set_aside_file_yields_with_the_wrong_shape_are_kept_there_not_copied(tmp_path: Path) -> None:
    """Review findings: a damaged file can yield any type in any column (SQLite keeps what it is given). A NULL
    size failed its whole batch's copy on every run (no row of the file was ever recovered), a text key reached
    `totals()` at the next start (TypeError), a topic that is not UTF-8 failed the whole read, and a size that is
    not the row's own stopped every run as "the spool is full"."""
    bad = [
        (2, "t", b"k1", b"v", b"[]", 1.0, None),  # no size
        (3, "t", "k-text", b"v", b"[]", 1.0, 69),  # a text key
        (4, "t", b"k1", b"v", b"[]", 1.0, "x"),  # a size that is not a number
        (6, "t", b"k3", b"v", b"\x00\xff", 1.0, 68),  # headers that are not JSON
        (7, b"\xff\xfe", b"k4", b"v", b"[]", 1.0, 68),  # a topic that is not UTF-8
        (8, "t", b"k5", b"v", b"[]", 1.0, 10**13),  # a size that is not its own
    ]
    rows = [shaped(1, b"k1", b"v1"), *bad[:3], shaped(5, b"k2", b"v2"), *bad[3:]]  # in id order
    written_aside(tmp_path, rows)
    store = SpoolStore(tmp_path)
    store.open()
    lines, copied = store.salvage(room=1_000_000)
    assert copied == 2 and store.totals()[0] == 2
    assert lines == [
        f"{FILE}.corrupt-1700000000: 2 record(s) recovered; 6 record(s) of the wrong shape unreadable,"
        f" kept as {set_aside_names(tmp_path)[0]}"
    ]
    assert "unreadable" in set_aside_names(tmp_path)[0]
    store.close()


def test_a_row_of_the_wrong_shape_is_kept_when_the_file_is_copied_in_several_runs(tmp_path: Path) -> None:
    """Review finding on the fix above: a run that resumed after an earlier one's copy (a room smaller than the
    file, as `spool drain` gives it) saw no bad row in its own part, and removed the file with the bad row."""
    rows = [shaped(n, b"k%d" % (n % 7), b"v%03d" % n) for n in range(1, 401)]
    rows[1] = (2, "t", b"k2", b"precious", b"[]", 1.0, None)
    written_aside(tmp_path, rows)
    store = SpoolStore(tmp_path)
    store.open()
    first, copied = store.salvage(room=250 * 70)
    assert "stopped (the spool is full" in first[0] and 0 < copied < 399
    second, more = store.salvage()
    assert copied + more == 399
    assert "1 record(s) of the wrong shape unreadable" in second[0], second
    assert [name for name in set_aside_names(tmp_path) if "unreadable" in name], "the file, and its bad row, kept"
    store.close()


async def test_spool_drain_copies_nothing_in_while_a_publish_of_its_deadline_is_in_flight(tmp_path: Path) -> None:
    """Review finding: `spool drain` copied a set-aside file's records in right after a drain that its deadline
    cut with publishes in flight, where the salvage expects nothing in flight (a delete landing after its count
    was subtracted twice from the spool's entries)."""
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    await spool.put(Pending("t", b"live", b"v", []))
    await spool.close()
    aside.set_aside(tmp_path / FILE)  # the live spool's file set aside: it yields one record
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    await spool.put(Pending("t", b"k", b"v", []))
    publisher = FakePublisher(leave_pending=True)
    drainer = Drainer(spool, publisher, Metrics())
    try:
        await _drain_all(spool, drainer, 0.3)
        assert drainer.sending(), "the deadline came with the publish in flight"
        assert spool.entries == 1 and aside.listed(tmp_path / FILE), "copied in beside a publish in flight"
    finally:
        publisher.pending[0].set_exception(Unavailable("kafka_timeout"))
        await drainer.settle(timeout=5)
        await spool.close()
