"""Real processes on a real spool directory: a spool that cannot be opened refuses the start with one line
(exit 3), two processes never drain one spool at once (no broker needed: each refusal comes first), and
`spool drain` publishes what a set-aside file still yields (a real broker)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from asyncio.subprocess import PIPE
from collections.abc import Iterator
from pathlib import Path

import pytest
from localkafka import LocalKafka

from relay.metrics import Metrics
from relay.ops.spool import drain as drain_command
from relay.settings import Settings
from relay.spool.spool import Spool
from relay.spool.store import FILE, Pending, peek
from tests.conftest import read_only
from tests.helpers import SECRET
from tests.integration.conftest import free_port
from tests.servers import read_topic

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
    assert done.stdout == ""  # what went wrong is said on stderr, not among what was done
    assert done.stderr.splitlines() == [
        f"mytpe-relay spool drain: cannot start: spool {directory} is in use by another process"
        " (it holds spool.lock): one relay or drain per spool"
    ]
    assert "Traceback" not in done.stderr


def test_a_drain_of_a_missing_directory_is_refused_and_of_an_empty_one_makes_nothing(tmp_path: Path) -> None:
    """Review finding: a mistyped --dir was created, with a new spool in it, and the drain said '0 published,
    0 left', exit 0: an operator could delete the real volume believing it drained. A volume no relay opened a
    spool on has nothing to drain (exit 0, as the drain Job expects), and nothing is made in it."""
    missing, empty = tmp_path / "spool-typo", tmp_path / "never-spooled"
    empty.mkdir()
    refused = relay(["spool", "drain", "--dir", str(missing)], env_for(missing))
    assert (refused.returncode, refused.stdout, refused.stderr.splitlines()) == (
        2,
        "",
        [f"mytpe-relay spool drain: {missing}: no such directory: check --dir"],
    )
    assert not missing.exists()
    nothing = relay(["spool", "drain", "--dir", str(empty)], env_for(empty))
    assert (nothing.returncode, nothing.stdout.splitlines()) == (
        0,
        [f"spool {empty}: no {FILE} and nothing set aside: nothing to drain"],
    )
    assert list(empty.iterdir()) == []


def test_a_drain_of_a_lone_wal_still_says_it_may_hold_records(tmp_path: Path) -> None:
    """Review of the above: a spool.db-wal without its spool.db was 'no spool here'; the spool's own open says
    the WAL may hold records, and keeps it."""
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / f"{FILE}-wal").write_bytes(b"wal frames")
    done = relay(["spool", "drain", "--dir", str(directory)], env_for(directory))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "may hold records" in done.stderr and (directory / f"{FILE}-wal").exists()


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


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root (CI runs as root)")
@pytest.mark.parametrize("drain", [False, True], ids=["serve", "spool-drain"])
async def test_a_spool_file_this_user_cannot_write_refuses_the_start(tmp_path: Path, drain: bool) -> None:
    """Review finding: SQLite opened a file it may not write (another user's, or on a read-only mount) read-only,
    without a word: the relay started ready, and every spool write, when Kafka went down, was a 503; the rows
    left from before were published again at each start, their deletes refused."""
    directory = tmp_path / "spool"
    await spool_with(directory, 3)
    command = ["spool", "drain", "--dir", str(directory)] if drain else ["serve"]
    with read_only(directory / FILE):
        done = relay(command, env_for(directory))
    assert done.returncode == 3, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("mytpe-relay")]
    assert f"spool {directory / FILE} cannot be written (attempt to write a readonly database" in line
    assert "a permission or a read-only mount?" in line and "Traceback" not in done.stderr
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
    assert len(done.stdout.splitlines()) == 1
    (said,) = [line for line in done.stderr.splitlines() if line.startswith("mytpe-relay")]  # beside the log lines
    assert said.startswith("mytpe-relay spool drain: cannot start: Kafka at")
    spool = Spool(directory, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    assert spool.entries == 4 and not list(directory.glob("*.corrupt-*"))
    await spool.close()


async def test_spool_drain_publishes_what_a_set_aside_file_yields_and_says_what_is_kept(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """Real broker: a readable set-aside file is recovered and published; an unreadable one is kept, said, exit 1."""
    directory = tmp_path / "spool"
    prefix = f"aside{uuid.uuid4().hex[:8]}"
    spool = Spool(directory, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    for n in range(5):
        value = json.dumps({"id": f"aside-{n}"}).encode()
        await spool.put(Pending(f"{prefix}.transaction", b"k%d" % (n % 2), value, [("content-type", b"json")]))
    await spool.close()
    (directory / FILE).rename(directory / f"{FILE}.corrupt-1700000000")
    (directory / f"{FILE}.corrupt-1700000001").write_bytes(b"not a database" * 500)
    env = {**env_for(directory), "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "RELAY_TOPIC_PREFIX": prefix}
    done = await asyncio.to_thread(relay, ["spool", "drain", "--dir", str(directory)], env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"spool {directory}: {FILE}.corrupt-1700000000: 5 record(s) recovered into the spool; removed"
    assert lines[1].startswith(f"spool {directory}: {FILE}.corrupt-1700000001: 0 record(s) recovered; the rest")
    assert lines[2:] == [
        f"spool {directory}: 5 record(s) published, 0 left",
        f"spool {directory}: 1 file(s) set aside still: {lines[1].rsplit(' ', 1)[-1]}",
    ]
    records = await read_topic(kafka.bootstrap, f"{prefix}.transaction")
    assert sorted(json.loads(r.value)["id"] for r in records) == [f"aside-{n}" for n in range(5)]


async def test_spool_drain_stopped_by_sigterm_deletes_what_kafka_acknowledged_and_says_so(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """Review finding: `spool drain` (a Helm hook Job, deleted or evicted) died at SIGTERM with its producer
    unflushed and its deletes pending: records Kafka had acknowledged stayed in the spool, and the next run
    published them again. SIGTERM now stops it as Ctrl-C does (exit 143, one line): flushed, deleted."""
    directory, count = tmp_path / "spool", 20_000
    prefix = f"term{uuid.uuid4().hex[:8]}"
    spool = Spool(directory, max_bytes=100_000_000, metrics=Metrics())
    await spool.open()
    for start in range(0, count, 1000):  # concurrent puts share one commit each
        puts = (Pending(f"{prefix}.transaction", b"k%d" % (n % 64), b"%d" % n, []) for n in range(start, start + 1000))
        await asyncio.gather(*(spool.put(pending) for pending in puts))
    await spool.close()
    env = {**env_for(directory), "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "RELAY_TOPIC_PREFIX": prefix}
    command = [*RELAY, "spool", "drain", "--dir", str(directory)]
    process = await asyncio.create_subprocess_exec(*command, env=env, stdout=PIPE, stderr=PIPE)
    try:
        for _ in range(600):  # until it has drained some (bounded: 60 s)
            if process.returncode is not None or (await asyncio.to_thread(peek, directory)).entries < count:
                break
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        stderr = (await asyncio.wait_for(process.communicate(), 60))[1].decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "mytpe-relay spool drain: stopped by SIGTERM; run it again to drain the rest" in stderr
    left = (await asyncio.to_thread(peek, directory)).entries
    assert 0 < left < count, left
    again = await asyncio.to_thread(relay, ["spool", "drain", "--dir", str(directory)], env)
    assert again.returncode == 0, again.stdout + again.stderr
    values = sorted(int(record.value) for record in await read_topic(kafka.bootstrap, f"{prefix}.transaction"))
    assert values == list(range(count))  # each once: nothing acknowledged was left to publish again


async def test_a_spool_that_fails_mid_drain_is_one_line_not_a_traceback(
    kafka: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review finding: an error of the spool's during `spool drain` (SQLITE_IOERR reading the heads) ended it in a
    traceback; the docs promise one line on stderr. Exit 1: what was there is left for the next run."""
    directory = tmp_path / "spool"
    await spool_with(directory, 3)

    async def failing(self: Spool, limit: int) -> list[object]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Spool, "heads", failing)
    settings = Settings.from_env({**env_for(directory), "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap})
    assert await drain_command(settings, directory, 5.0) == 1
    out, err = capsys.readouterr()
    assert "mytpe-relay spool drain: the spool failed: disk I/O error; run it again" in err
    assert f"spool {directory}: 0 record(s) published, 3 left" in out
