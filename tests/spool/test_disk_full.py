"""A real full file system (a 256 KiB tmpfs, ENOSPC from the kernel), not the spool's byte cap: the spool
answers 503 `spool_error` saying the disk is full, keeps every record it acknowledged, opens again on the
full disk, and takes records again once there is room. Needs root to mount (CI runs as root)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Collection, Iterator, Sequence
from functools import partial
from pathlib import Path

import pytest

from relay.errors import StartupError, Unavailable
from relay.metrics import Metrics
from relay.ops.check import _spool_line
from relay.settings import Settings
from relay.spool import store
from relay.spool.drainer import Drainer
from relay.spool.recovery import Recovery, Sent
from relay.spool.spool import Spool
from relay.spool.store import Pending
from relay.types import Ack
from tests.conftest import fill_disk, require_tool, tmpfs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a 256 KiB tmpfs for a real ENOSPC needs root (CI runs as root)"
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "256k") as disk:
        yield disk


def record(n: int) -> Pending:
    return Pending("mytpe.transaction", b"k%d" % (n % 5), b"%06d-" % n + b"x" * 1500, [("content-type", b"json")])


async def test_a_full_disk_is_a_503_saying_so_and_keeps_what_it_acknowledged(small_disk: Path) -> None:
    """Review finding, the readiness: it asked the spool's byte cap only, so with Kafka down and the disk full
    every write was a 503 while /readyz said ready (`"spool": true`), and the Service kept sending MyTPE's
    attempts to this replica. After a write found the disk full, the spool has room only where the disk has."""
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    acknowledged = [await spool.put(record(n)) for n in range(3)]
    size = record(0).size
    assert spool.has_room(size)
    fill_disk(small_disk / "filler")
    refusals: list[Unavailable] = []
    for n in range(3, 200):  # bounded: the WAL runs out of room within a few records
        try:
            acknowledged.append(await spool.put(record(n)))
        except Unavailable as refused:
            refusals.append(refused)
            if len(refusals) >= 3:
                break
    assert refusals, "the disk never filled"
    assert {r.cause for r in refusals} == {"spool_error"}
    assert all("disk is full" in str(r) for r in refusals), [str(r) for r in refusals]
    assert spool.entries == len(acknowledged)
    assert spool.room_for(size) and not spool.has_room(size)  # under its cap, but not ready: the disk is full
    (small_disk / "filler").unlink()
    assert spool.has_room(size)  # the disk has room again: ready, before any write tries it
    fill_disk(small_disk / "filler")
    assert not spool.has_room(size)
    await spool.close()

    again = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await again.open()  # on the full disk: an open writes nothing, so the spool can still be drained
    assert again.entries == len(acknowledged)
    heads = await again.heads(10)
    assert sorted(row.id for row in heads) == acknowledged[:5]  # the first of each of the 5 keys
    (small_disk / "filler").unlink()  # room again
    assert await again.put(record(999)) > acknowledged[-1]
    drained: list[int] = []
    for _ in range(100):  # bounded: as the drainer does, heads, then delete once "published"
        rows = await again.heads(10)
        if not rows:
            break
        assert await again.delete(rows)
        drained += [row.id for row in rows]
    assert sorted(drained) == [*acknowledged, acknowledged[-1] + 1] and again.entries == 0
    await again.close()


async def test_a_spool_that_found_its_disk_full_has_room_again_once_it_deleted(small_disk: Path) -> None:
    """Review of the readiness: the disk's free room does not show the room inside the spool's file and its log,
    which a drain makes; with the flag cleared only by a write, a replica whose disk filled in one outage, drained
    since, was not ready in the next one, and, taking no traffic, never wrote to find out. What deletes freed
    counts as room (review of that: any delete cleared it, one small row's for a body of any size)."""
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    fill_disk(small_disk / "filler", leave=40_000)
    for n in range(200):  # bounded: the disk fills within a few dozen records
        try:
            await spool.put(record(n))
        except Unavailable:
            break
    size = record(0).size
    assert spool.entries > 2 and not spool.has_room(size)
    assert await spool.delete((await spool.heads(10))[:1])  # one row: room for a body of its size
    assert spool.has_room(size) and not spool.has_room(100 * size)  # nor the disk (its reserve given up)
    while rows := await spool.heads(10):  # bounded by the rows: Kafka took them, as a drain does
        assert await spool.delete(rows)
    assert spool.has_room(size)
    await spool.close()


def remount_read_only(disk: Path) -> None:
    subprocess.run([require_tool("mount"), "-o", "remount,ro", str(disk)], check=True, timeout=30)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_no_room_for_the_shm_at_open_refuses_the_start_and_sets_nothing_aside(small_disk: Path) -> None:
    """A spool closed cleanly (no -wal, no -shm) on a disk that is now full, and no reserve to give up: SQLite
    cannot create its -shm (SQLITE_IOERR_SHMSIZE). Today that was taken for corruption: the file holding
    records was set aside."""
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    for n in range(3):
        await spool.put(record(n))
    await spool.close()
    (small_disk / "spool" / "spool.reserve").unlink()
    fill_disk(small_disk / "filler")
    again = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    with pytest.raises(StartupError) as refused:
        await again.open()
    await again.close()
    assert "nothing was set aside" in str(refused.value) and "\n" not in str(refused.value)
    assert [name for name in names(small_disk / "spool") if "-" not in name] == ["spool.db", "spool.lock"]
    (small_disk / "filler").unlink()
    third = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await third.open()
    assert third.entries == 3
    await third.close()


async def test_the_reserve_lets_a_spool_open_on_a_full_disk(small_disk: Path) -> None:
    """Today the reserve was kept only for deletes: a spool stopped on a full disk (no -shm left) was refused
    at its next start with SQLITE_IOERR_SHMSIZE while `spool.reserve` sat beside it."""
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    for n in range(3):
        await spool.put(record(n))
    await spool.close()
    assert (small_disk / "spool" / "spool.reserve").exists()
    fill_disk(small_disk / "filler")
    again = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await again.open()
    assert again.entries == 3 and not (small_disk / "spool" / "spool.reserve").exists()
    rows = await again.heads(10)
    assert [row.value[:6] for row in rows] == [b"%06d" % n for n in range(3)]
    (small_disk / "filler").unlink()  # here the reserve (1/8 of 256 KiB) only had room for the -shm
    assert await again.delete(rows) and again.entries == 0
    await again.close()


async def test_a_corrupt_file_set_aside_on_a_full_disk_is_named_in_the_refusal(small_disk: Path) -> None:
    """Today: the corrupt file was renamed, the new one could not be created, and the refusal said "nothing
    was set aside" while a file had just been."""
    directory = small_disk / "spool"
    directory.mkdir()
    (directory / "spool.db").write_bytes(b"not a database" * 500)
    fill_disk(small_disk / "filler")
    spool = Spool(directory, max_bytes=100_000_000, metrics=Metrics())
    with pytest.raises(StartupError) as refused:
        await spool.open()
    await spool.close()
    (moved,) = [name for name in names(directory) if ".corrupt-" in name]
    line = str(refused.value)
    assert "nothing was set aside" not in line and moved in line and "\n" not in line, line


async def test_a_read_only_file_system_refuses_the_start(small_disk: Path) -> None:
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    await spool.put(record(1))
    await spool.close()
    remount_read_only(small_disk)
    again = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    with pytest.raises(StartupError) as refused:
        await again.open()
    await again.close()
    assert str(refused.value) == f"spool {small_disk / 'spool'}: Read-only file system"
    assert names(small_disk / "spool") == ["spool.db", "spool.lock", "spool.reserve"]


async def test_on_a_full_disk_what_kafka_acknowledged_still_leaves_the_spool(small_disk: Path) -> None:
    """A delete needs room in SQLite's log: without the reserve it failed with SQLITE_FULL, so the drainer
    published the same rows again and again (the issue's 134 duplicates on a 256 KiB tmpfs)."""
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    acknowledged = [await spool.put(record(n)) for n in range(3)]
    fill_disk(small_disk / "filler")
    for n in range(3, 200):  # bounded: until the disk refuses a record
        try:
            acknowledged.append(await spool.put(record(n)))
        except Unavailable:
            break
    drained: list[int] = []
    for _ in range(100):  # bounded: as the drainer does, heads, then delete once Kafka acknowledged them
        rows = await spool.heads(10)
        if not rows:
            break
        assert await spool.delete(rows)
        drained += [row.id for row in rows]
    assert sorted(drained) == acknowledged and spool.entries == 0
    with pytest.raises(Unavailable):  # still full: the reserve went to the deletes
        await spool.put(record(500))
    (small_disk / "filler").unlink()
    await spool.put(record(501))
    await spool.close()


async def test_a_spool_that_filled_the_disk_itself_can_still_delete_every_record(small_disk: Path) -> None:
    """The relay's own case (tests/faults/test_spool_disk_full.py failed 1 run in 4): the spool fills the disk
    with its own writes, and the failed ones leave SQLite's log grown. Every record it acknowledged must still
    be deletable once Kafka has it: the log stays checkpointed within the reserve, and is truncated back."""
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    acknowledged: list[int] = []
    refused = 0
    for n in range(400):  # bounded: the disk is full well before
        batch = await asyncio.gather(*(spool.put(record(4 * n + i)) for i in range(4)), return_exceptions=True)
        acknowledged += [row for row in batch if isinstance(row, int)]
        refused += sum(isinstance(row, Unavailable) for row in batch)
        if refused > 40:  # as in the relay's run: many more refused after the disk filled
            break
    assert acknowledged and refused > 40
    deleted: list[int] = []
    for _ in range(100):  # bounded: as the drainer does, heads, then delete once Kafka acknowledged them
        rows = await spool.heads(4)
        if not rows:
            break
        assert await spool.delete(rows), f"a delete failed after {len(deleted)} of {len(acknowledged)}"
        deleted += [row.id for row in rows]
    assert sorted(deleted) == acknowledged and spool.entries == 0
    await spool.close()


class AcksAll:
    """Kafka acknowledges everything (the drain's side of a full disk is the spool's, not Kafka's)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        self.sent.append(key)
        return Ack(topic, 0, len(self.sent))

    async def ping(self, *, timeout: float = 2.0) -> bool:
        return True

    async def start(self, *, timeout: float, background: bool = False) -> None:
        return None

    async def stop(self, *, timeout: float = 10.0) -> None:
        return None


class FindsNothing:
    async def present(
        self, topic: str, records: Sequence[Sent], since: float, *, ignored: Collection[str] = ()
    ) -> set[Sent]:
        return set()


@pytest.mark.parametrize("check", [False, True], ids=["no-check", "recovery-check"])
async def test_a_spool_that_filled_its_disk_drains_with_or_without_the_recovery_check(
    small_disk: Path, check: bool
) -> None:
    """With RELAY_SPOOL_RECOVERY_CHECK, each pass was marked in flight in a transaction of its own first; on a
    full disk that mark failed, the pass was never sent, and the spool never drained (72 left of 72)."""
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    acknowledged: list[int] = []
    for n in range(400):  # bounded: the disk is full well before
        batch = await asyncio.gather(*(spool.put(record(4 * n + i)) for i in range(4)), return_exceptions=True)
        acknowledged += [row for row in batch if isinstance(row, int)]
        if sum(isinstance(row, Unavailable) for row in batch) == 4:
            break
    drainer = Drainer(spool, AcksAll(), Metrics())
    if check:
        drainer.recovery = Recovery(FindsNothing(), Metrics())
    assert acknowledged
    assert await drainer.drain(timeout=60) == 0
    await spool.close()


@pytest.mark.parametrize("left_marked", [0, 2], ids=["no-marks", "marks-of-a-killed-pass"])
async def test_a_spool_restarted_on_its_full_disk_drains_with_the_recovery_check(
    small_disk: Path, left_marked: int
) -> None:
    """Review finding: once a pass had been marked (the marks' table exists), a spool stopped on a full disk
    and started again never drained with the check on: clearing the marks is a write, it failed on the full
    disk, and every pass then raised (72 left of 72). With `left_marked`, marks a killed pass left too."""
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    first = Drainer(spool, AcksAll(), Metrics())
    first.recovery = Recovery(FindsNothing(), Metrics())
    await spool.put(record(0))
    assert await first.drain(timeout=60) == 0  # one pass marked: the marks' table exists from now on
    acknowledged: list[int] = []
    for n in range(400):  # bounded: the disk is full well before
        batch = await asyncio.gather(*(spool.put(record(4 * n + i)) for i in range(4)), return_exceptions=True)
        acknowledged += [row for row in batch if isinstance(row, int)]
        if n == 0 and left_marked:  # as a pass killed mid-flight leaves them
            await spool.on_store(partial(store.mark_in_flight, ids=acknowledged[:left_marked], since=0.0))
        if sum(isinstance(row, Unavailable) for row in batch) == 4:
            break
    assert len(acknowledged) > left_marked
    await spool.close()

    again = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await again.open()  # on the full disk
    assert len(await again.on_store(store.in_flight)) == left_marked
    drainer = Drainer(again, AcksAll(), Metrics())
    drainer.recovery = Recovery(FindsNothing(), Metrics())
    assert await drainer.drain(timeout=60) == 0
    assert again.entries == 0
    await again.close()


async def test_check_warns_when_the_volume_is_smaller_than_the_cap(small_disk: Path) -> None:
    """Review finding: `check` printed the room the cap leaves (1 GiB by default) as the spool's, whatever its
    disk had; past the disk's room every write is a 503, so a volume smaller than the cap is said. Reviews of
    that: the disk's free room alone was compared, which a drained spool's file holds (it does not shrink), then
    the volume's size, which forgot SQLite's pages (up to 1.96x the records' bytes here), root's blocks and
    other files; the files' size and the room free are compared with twice the cap."""
    spool = Spool(small_disk / "spool", max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    await spool.put(record(1))
    env = {"RELAY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "RELAY_MYTPE_SECRETS": "whsec_" + "ab" * 24}
    lines = (await _spool_line(Settings.from_env({**env, "RELAY_SPOOL_DIR": str(small_disk / "spool")}))).splitlines()
    await spool.close()
    assert lines[0].startswith("spool: ok (") and len(lines) == 2
    assert lines[1].startswith("spool: WARNING: its files can grow to ")
    assert " less than the 1073741824 bytes of RELAY_SPOOL_MAX_BYTES may take (2x" in lines[1]
