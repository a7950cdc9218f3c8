"""Real processes on a real spool directory: a spool that cannot be opened refuses the start with one line
(exit 3), and two processes never drain one spool at once. No broker is needed: each refusal comes first."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.metrics import Metrics
from relay.spool.spool import Spool
from relay.spool.store import FILE, Pending
from tests.helpers import SECRET
from tests.integration.conftest import free_port

RELAY = [sys.executable, "-m", "relay"]
HOLDER = """
import asyncio, sys
from pathlib import Path
from relay.metrics import Metrics
from relay.spool.spool import Spool

async def main():
    spool = Spool(Path(sys.argv[1]), max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    print("open", spool.entries, flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await spool.close()

asyncio.run(main())
"""


def env_for(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",  # nothing listens: the spool is refused first
        RELAY_MYTPE_SECRETS=SECRET,
        RELAY_SPOOL_DIR=str(directory),
        RELAY_PORT=str(free_port()),
        RELAY_HOST="127.0.0.1",
        RELAY_STARTUP_TIMEOUT_SECONDS="2",
    )
    return env


def relay(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RELAY, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


async def spool_with(directory: Path, count: int) -> None:
    spool = Spool(directory, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    for n in range(count):
        await spool.put(Pending("t", b"k%d" % n, b"v", []))
    await spool.close()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process with the spool open, as a running relay has it."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "spool")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().startswith("open")
    yield process
    process.communicate("", timeout=30)


async def test_a_drain_is_refused_while_another_process_holds_the_spool(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    directory = tmp_path / "spool"
    done = relay(["spool", "drain", "--dir", str(directory)], env_for(directory))
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"mytpe-relay spool drain: cannot start: spool {directory} is in use by another process"
        " (it holds spool.lock): one relay or drain per spool"
    ]
    assert "Traceback" not in done.stderr


async def test_serve_refuses_a_spool_in_use_with_one_line(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    directory = tmp_path / "spool"
    done = relay(["serve"], env_for(directory))
    assert done.returncode == 3, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("mytpe-relay:")] == [
        f"mytpe-relay: cannot start: spool {directory} is in use by another process"
        " (it holds spool.lock): one relay or drain per spool"
    ]
    assert "Traceback" not in done.stderr


async def test_serve_refuses_a_locked_file_and_sets_nothing_aside(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    await spool_with(directory, 5)
    other = sqlite3.connect(directory / FILE, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        done = relay(["serve"], env_for(directory))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert done.returncode == 3, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("mytpe-relay:")]
    assert line.startswith(f"mytpe-relay: cannot start: spool {directory / FILE} cannot be opened (database is locked")
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in directory.iterdir() if "corrupt" in p.name) == []


async def test_spool_drain_recovers_a_set_aside_file_into_the_spool_first(tmp_path: Path) -> None:
    """What a file set aside still yields is copied into the spool, under its lock, before Kafka is asked."""
    directory = tmp_path / "spool"
    await spool_with(directory, 4)
    (directory / FILE).rename(directory / f"{FILE}.corrupt-1700000000")
    done = relay(["spool", "drain", "--dir", str(directory)], env_for(directory))
    assert done.returncode == 3, done.stdout + done.stderr  # no Kafka here: the records wait in the spool
    assert done.stdout.splitlines()[0] == (
        f"spool {directory}: {FILE}.corrupt-1700000000: 4 record(s) recovered into the spool; removed"
    )
    assert done.stdout.splitlines()[1].startswith("mytpe-relay spool drain: cannot start: Kafka at")
    spool = Spool(directory, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    assert spool.entries == 4 and not list(directory.glob("*.corrupt-*"))
    await spool.close()
