"""`mytpe-relay check`'s spool line, on real files: it reads the spool without taking it from a running relay,
never sets a file aside itself, and lists the files set aside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.metrics import Metrics
from relay.ops.check import _spool_line, check
from relay.settings import Settings
from relay.spool.spool import Spool
from relay.spool.store import FILE, Pending
from tests.conftest import read_only
from tests.helpers import SECRET
from tests.spool.test_refusals import spool_with
from tests.spool.test_salvage import killed_with_five


def settings_for(directory: Path) -> Settings:
    env = {"RELAY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "RELAY_MYTPE_SECRETS": SECRET}
    env["RELAY_SPOOL_MAX_BYTES"] = "10000000"  # what any test disk holds twice over: no warning of its size
    return Settings.from_env({**env, "RELAY_SPOOL_DIR": str(directory)})


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_check_reads_a_spool_a_relay_holds_and_lists_set_aside_files(tmp_path: Path) -> None:
    running = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await running.open()  # as the relay beside it has it: locked
    for n in range(3):
        await running.put(Pending("t", b"k", b"v%d" % n, []))
    (tmp_path / f"{FILE}.corrupt-1700000000").write_bytes(b"left by an earlier start")
    lines = (await _spool_line(settings_for(tmp_path))).splitlines()
    assert lines[0].startswith(f"spool: ok ({tmp_path}: 3 record(s), {running.bytes} bytes, ")
    assert lines[1:] == [
        f"spool: WARNING: 1 file(s) set aside as corrupt, not drained: {FILE}.corrupt-1700000000;"
        " run `mytpe-relay spool drain` with no relay on this spool"
    ]
    await running.close()


async def test_check_never_sets_a_file_aside(tmp_path: Path) -> None:
    """Today check opened the spool as the relay does, so a corrupt file was renamed by a read-only command."""
    (tmp_path / FILE).write_bytes(b"not a database" * 500)
    line = await _spool_line(settings_for(tmp_path))
    assert line.startswith(f"spool: FAILED ({tmp_path}: file is not a database")
    assert names(tmp_path) == [FILE]


async def test_check_leaves_the_spool_files_as_they_are(tmp_path: Path) -> None:
    """Today check opened the file read-write: closing it checkpointed and removed the -wal and -shm a killed
    relay left, writing into a spool it documents as read only."""
    killed_with_five(tmp_path)
    wal = (tmp_path / f"{FILE}-wal").read_bytes()
    line = await _spool_line(settings_for(tmp_path))
    assert line.startswith(f"spool: ok ({tmp_path}: 5 record(s), ")
    assert (tmp_path / f"{FILE}-wal").read_bytes() == wal and (tmp_path / f"{FILE}-shm").exists()


async def test_check_shows_the_spool_when_kafka_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Today check returned at the Kafka failure, before the spool line: what the spool held and the files set
    aside went unsaid exactly when they matter."""
    await (await spool_of(tmp_path, 2)).close()
    (tmp_path / f"{FILE}.corrupt-1700000000").write_bytes(b"left by an earlier start")
    settings = Settings.from_env(
        {
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing listens
            "RELAY_MYTPE_SECRETS": SECRET,
            "RELAY_SPOOL_DIR": str(tmp_path),
            "RELAY_STARTUP_TIMEOUT_SECONDS": "2",
        }
    )
    assert await check(settings) is False
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("kafka: FAILED") for line in lines), lines
    assert any(line.startswith(f"spool: ok ({tmp_path}: 2 record(s), ") for line in lines), lines
    assert any(line.startswith("spool: WARNING: 1 file(s) set aside") for line in lines), lines


async def spool_of(directory: Path, count: int) -> Spool:
    spool = Spool(directory, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    for n in range(count):
        await spool.put(Pending("t", b"k", b"v%d" % n, []))
    return spool


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root (CI runs as root)")
async def test_check_says_a_spool_this_user_cannot_write_fails(tmp_path: Path) -> None:
    """Review finding: SQLite opens a file it may not write read-only, without a word: check said `spool: ok`,
    and the relay's first spool write, while Kafka was down, was a 503."""
    await spool_with(tmp_path, 2)
    with read_only(tmp_path / FILE):
        line = await _spool_line(settings_for(tmp_path))
    assert line == f"spool: FAILED ({tmp_path / FILE} cannot be written by this user: the relay refuses to start on it)"
