"""The spool's file at its edges, on real SQLite files: what is corruption and what is a refusal, one
process per spool, errors that surface as they are, and queries that stay off full scans."""

from __future__ import annotations

import errno
import fcntl
import functools
import math
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import cast

import orjson
import pytest
from prometheus_client import generate_latest

from relay.errors import StartupError, Unavailable
from relay.metrics import Metrics
from relay.spool import aside
from relay.spool import store as store_module
from relay.spool.spool import Spool
from relay.spool.store import FILE, Pending, SpoolStore, peek

PAGE = 4096


def record(key: bytes, n: int, size: int = 10) -> Pending:
    return Pending("mytpe.transaction", key, b"v%d-" % n + b"x" * size, [("content-type", b"json")])


async def spool_with(directory: Path, count: int, size: int = 10, metrics: Metrics | None = None) -> Spool:
    spool = Spool(directory, max_bytes=100_000_000, metrics=metrics or Metrics())
    await spool.open()
    for n in range(count):
        await spool.put(record(b"k%d" % (n % 3), n, size))
    return spool


def set_aside_files(directory: Path) -> list[str]:
    """The main files set aside (each may have its -wal and -shm beside it)."""
    names = [p.name for p in directory.iterdir() if ".corrupt-" in p.name or ".unreadable-" in p.name]
    return sorted(name for name in names if not name.endswith(("-wal", "-shm")))


async def test_a_locked_spool_is_refused_not_set_aside(tmp_path: Path) -> None:
    """Today: after the 5 s busy timeout the healthy file was renamed spool.db.corrupt-… and an empty one started."""
    await (await spool_with(tmp_path, 5)).close()
    other = sqlite3.connect(tmp_path / FILE, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    spool = Spool(tmp_path, max_bytes=100_000_000, metrics=Metrics())
    with pytest.raises(StartupError) as refused:
        await spool.open()  # bounded: SQLite's busy timeout, then the refusal
    await spool.close()
    line = str(refused.value)
    assert "database is locked" in line and "nothing was set aside" in line and "\n" not in line
    assert set_aside_files(tmp_path) == []
    other.execute("ROLLBACK")
    other.close()
    again = Spool(tmp_path, max_bytes=100_000_000, metrics=Metrics())
    await again.open()
    assert again.entries == 5
    await again.close()


async def test_a_really_corrupt_file_is_set_aside_counted_and_the_spool_starts(tmp_path: Path) -> None:
    await (await spool_with(tmp_path, 300, size=500)).close()
    with (tmp_path / FILE).open("r+b") as file:  # page 3 onwards: the table's b-tree pages, overwritten
        file.seek(2 * PAGE)
        file.write(b"\xa5" * 8 * PAGE)
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=100_000_000, metrics=metrics)
    await spool.open()
    assert spool.entries == 0
    assert len(set_aside_files(tmp_path)) == 1 and set_aside_files(tmp_path)[0].startswith(f"{FILE}.corrupt-")
    assert b"mytpe_relay_spool_set_aside_files 1.0" in generate_latest(metrics.registry)
    await spool.put(record(b"a", 1))
    await spool.close()


async def test_one_process_per_spool(tmp_path: Path) -> None:
    first = await spool_with(tmp_path, 2)
    second = Spool(tmp_path, max_bytes=100_000_000, metrics=Metrics())
    with pytest.raises(StartupError) as refused:
        await second.open()
    await second.close()
    assert "in use by another process" in str(refused.value) and "spool.lock" in str(refused.value)
    assert first.entries == 2 and set_aside_files(tmp_path) == []
    await first.close()
    third = Spool(tmp_path, max_bytes=100_000_000, metrics=Metrics())
    await third.open()  # the lock went with the first one's close
    assert third.entries == 2
    await third.close()


def test_a_full_database_says_disk_is_full_not_cannot_rollback(tmp_path: Path) -> None:
    """Today: "cannot rollback - no transaction is active" (SQLite had already rolled back), hiding SQLITE_FULL."""
    store = SpoolStore(tmp_path)
    store.open()
    db = store._conn()
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0] + 2}")
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        for n in range(50):  # bounded: full within a few pages
            store.insert([record(b"k", n, size=3000), record(b"k", n, size=3000)], 1.0)
    assert not db.in_transaction
    db.execute("PRAGMA max_page_count=1000000")
    assert store.insert([record(b"k", 99)], 2.0)  # usable again once there is room
    store.close()


async def test_a_full_database_is_a_503_that_says_disk_is_full(tmp_path: Path) -> None:
    spool = await spool_with(tmp_path, 1)
    db = spool._store._conn()
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0] + 1}")
    with pytest.raises(Unavailable) as refused:
        for n in range(50):  # bounded
            await spool.put(record(b"k", n, size=6000))
    assert refused.value.cause == "spool_error" and "disk is full" in str(refused.value)
    await spool.close()


def vm_steps(store: SpoolStore, call: Callable[[], object]) -> int:
    """SQLite virtual-machine instructions `call` runs: a count of work, not a time."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store._conn().set_progress_handler(count, 1)
    try:
        call()
    finally:
        store._conn().set_progress_handler(None, 1)
    return steps


@pytest.mark.parametrize("keys", [3, 1_000_000])
def test_the_drains_queries_do_not_grow_with_the_rows(tmp_path: Path, keys: int) -> None:
    """Today: `MIN(spooled_at)` reads every row, after each drain batch; with few keys, `heads()` walks every
    row to find their heads. Either makes a drain quadratic in the rows it holds."""
    store = SpoolStore(tmp_path)
    store.open()
    work = []
    for total in (1_000, 20_000):
        for start in range(store.totals()[0], total, 1_000):
            store.insert([record(b"k%d" % ((start + n) % keys), start + n) for n in range(1_000)], float(start))
        oldest = vm_steps(store, store.oldest)
        heads = vm_steps(store, lambda: store.heads(200, [1, 2]))
        first = store.heads(1, [])[0].id
        delete = vm_steps(store, functools.partial(store.delete, [first]))  # its key's next row becomes the head
        work.append((oldest, heads, delete))
    (oldest_1k, heads_1k, delete_1k), (oldest_20k, heads_20k, delete_20k) = work
    assert oldest_20k <= oldest_1k + 50, work  # a constant, not 20 times more
    assert heads_20k <= heads_1k * 1.5 + 50, work
    assert delete_20k <= delete_1k * 1.5 + 50, work
    plan = [row[3] for row in store._conn().execute(f"EXPLAIN QUERY PLAN {store_module.HEADS}", (200,))]
    assert any("USING INTEGER PRIMARY KEY" in step for step in plan), plan
    assert not [step for step in plan if step.startswith("SCAN") and "INDEX" not in step], plan
    store.close()


async def test_set_aside_files_are_recovered_into_the_spool_and_listed_until_then(tmp_path: Path) -> None:
    await (await spool_with(tmp_path, 10)).close()
    aside.set_aside(tmp_path / FILE)  # as an open does with a corrupt file: here a readable one
    (tmp_path / f"{FILE}.corrupt-1").write_bytes(b"not a database" * 500)  # one that yields nothing
    metrics = Metrics()
    live = await spool_with(tmp_path, 2, metrics=metrics)
    assert b"mytpe_relay_spool_set_aside_files 2.0" in generate_latest(metrics.registry)
    assert [p.name for p in peek(tmp_path).set_aside] == set_aside_files(tmp_path)
    await live.close()
    store = SpoolStore(tmp_path)
    store.open()
    lines, copied = store.salvage()
    assert copied == 10
    assert (
        lines[0]
        == f"{FILE}.corrupt-1: 0 record(s) recovered; the rest unreadable, kept as " + (set_aside_files(tmp_path)[0])
    )
    assert lines[1].endswith(": 10 record(s) recovered into the spool; removed") and len(lines) == 2
    assert [name.split("-")[0] for name in set_aside_files(tmp_path)] == [f"{FILE}.unreadable"]
    assert store.totals()[0] == 12
    heads = store.heads(10, [])
    # each key's live records first (k0, k1), then what the file held (k2's first is a head too)
    assert [(row.key, row.value[:3]) for row in heads] == [(b"k0", b"v0-"), (b"k1", b"v1-"), (b"k2", b"v2-")]
    store.close()
    assert peek(tmp_path).entries == 12 and len(peek(tmp_path).set_aside) == 1


OLD_SCHEMA = """
CREATE TABLE spool (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    headers BLOB NOT NULL, spooled_at REAL NOT NULL, size INTEGER NOT NULL);
CREATE INDEX spool_key ON spool (key, id);
"""


def test_a_spool_file_from_before_heads_opens_with_its_heads(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / FILE)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(OLD_SCHEMA)
    rows = [("t", b"k%d" % (n % 3), b"v%d" % n, b"[]", float(n), 10) for n in range(9)]
    old.executemany("INSERT INTO spool (topic, key, value, headers, spooled_at, size) VALUES (?, ?, ?, ?, ?, ?)", rows)
    old.commit()
    old.close()
    store = SpoolStore(tmp_path)
    assert store.open() is None
    assert [(row.id, row.key) for row in store.heads(10, [])] == [(1, b"k0"), (2, b"k1"), (3, b"k2")]
    store.delete([1, 3])
    assert [(row.id, row.key) for row in store.heads(10, [2])] == [(4, b"k0"), (6, b"k2")]
    store.delete([2, 4, 5, 6, 7, 8, 9])
    assert store.heads(10, []) == [] and store.oldest() is None
    store.close()


async def test_a_set_aside_file_damaged_midway_yields_what_comes_before_the_damage(tmp_path: Path) -> None:
    source = tmp_path / "old"
    await (await spool_with(source, 300, size=500)).close()
    size = (source / FILE).stat().st_size
    with (source / FILE).open("r+b") as file:  # one leaf page of the table, near its end
        file.seek(size - 12 * PAGE)
        file.write(b"\xa5" * PAGE)
    (source / FILE).rename(tmp_path / f"{FILE}.corrupt-1700000000")
    store = SpoolStore(tmp_path)
    store.open()
    (line,), _ = store.salvage()
    recovered = store.totals()[0]
    assert 0 < recovered < 300
    assert line == (
        f"{FILE}.corrupt-1700000000: {recovered} record(s) recovered; the rest unreadable,"
        f" kept as {set_aside_files(tmp_path)[0]}"
    )
    values = []
    while rows := store.heads(200, []):  # bounded: each pass deletes what it read
        values += [int(row.value.split(b"-")[0][1:]) for row in rows]
        store.delete([row.id for row in rows])
    assert sorted(values) == list(range(recovered))  # the first records, each once
    store.close()


async def test_an_error_reading_the_counts_at_open_is_a_one_line_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today the sqlite3 error from `totals()` escaped `Spool.open()` as is: a traceback, not the refusal
    (exit 3), and the store and its lock stayed open."""
    await (await spool_with(tmp_path, 2)).close()

    def unreadable(self: SpoolStore) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SpoolStore, "totals", unreadable)
    spool = Spool(tmp_path, max_bytes=100_000_000, metrics=Metrics())
    with pytest.raises(StartupError) as refused:
        await spool.open()
    await spool.close()
    assert str(refused.value) == f"spool {tmp_path / FILE} cannot be read (disk I/O error); nothing was set aside"
    monkeypatch.undo()
    again = Spool(tmp_path, max_bytes=100_000_000, metrics=Metrics())
    await again.open()  # the lock was released
    assert again.entries == 2
    await again.close()


def test_a_lock_error_closes_its_file_and_refuses_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today any flock error but "already held" (ENOLCK on some NFS mounts) left the lock file's descriptor open."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    before = set(os.listdir("/proc/self/fd"))
    store = SpoolStore(tmp_path)
    with pytest.raises(StartupError) as refused:
        store.open()
    assert set(os.listdir("/proc/self/fd")) <= before
    line = str(refused.value)
    assert line.startswith(f"spool {tmp_path}: cannot lock spool.lock (No locks available); the spool needs")
    assert "\n" not in line


@pytest.mark.parametrize(
    ("columns", "damaged"),
    [
        ((1, b"t", b"k", b"v", b"[]", 1.0, 69, 69.0), False),
        ((1, b"\xff\xfe", b"k", b"v", b"[]", 1.0, 69, 69.0), True),  # a topic that is not UTF-8
        ((1, b"t", b"k", b"v", b"\x00\xff", 1.0, 69, 69.0), True),  # headers that are not JSON
        ((1, b"t", None, b"v", b"[]", 1.0, 69, 69.0), True),  # no key
        ((1, b"t", b"k", None, b"[]", 1.0, 69, 69.0), True),  # no value
        ((1, b"t", b"k", b"v", b"[]", None, 69, 69.0), True),  # no time
        ((1, b"t", b"k", b"v", b"[]", 1.0, None, None), True),  # no size: it failed the delete's count (review)
        ((1, b"t", b"k", b"v", b"[]", 1.0, b"69", 69.0), True),  # a size that is not a number: as SUM counts it
        ((1, b"t", b"k", b"v", b"[]", 1.0, 1e30, 1e30), True),  # a REAL past 2**63 (review): as SUM counts it
        ((1, b"t", b"k", b"v", b"[]", 1.0, float("inf"), float("inf")), True),  # review: int(inf) raised
    ],
)
def test_a_row_read_back_is_damaged_when_a_column_is_not_what_the_spool_wrote(
    columns: tuple[object, ...], damaged: bool
) -> None:
    """Review finding: only the topic and the headers were checked; a NULL size reached the delete's count
    (TypeError: the writer task ended, and the drain waited for good), and a NULL key the producer."""
    row = store_module.row_of(columns)
    assert bool(row.damaged) is damaged
    assert isinstance(row.key, bytes) and isinstance(row.value, bytes) and isinstance(row.size, int)
    counted = cast(float, columns[7] or 0)
    assert row.size == (int(counted) if math.isfinite(counted) else 0)  # as the start's SUM counted it
    if damaged:
        topic, stored = orjson.loads(row.damaged)
        assert (bytes.fromhex(topic), bytes.fromhex(stored)) == (columns[1] or b"", columns[4] or b"")


def test_truncating_the_log_says_when_it_gave_room_back(tmp_path: Path) -> None:
    """Review finding: SQLite's TRUNCATE checkpoint answers (0, 0, 0) once it has emptied the log, so the relief
    said it had made no room when it had: a delete on a full disk went on to give up the reserve, and a salvage
    stopped on the full disk rather than copy again."""
    store = SpoolStore(tmp_path)
    store.open()
    store.insert([record(b"k", n, size=3000) for n in range(20)], 1.0)
    log = tmp_path / (FILE + "-wal")
    assert log.stat().st_size > 0
    assert store._truncate_log() is True
    assert log.stat().st_size == 0
    assert store._truncate_log() is False  # nothing left to give back
    store.close()
