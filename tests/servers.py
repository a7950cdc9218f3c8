"""Real servers for tests: the relay under uvicorn on a loopback port, and a topic reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.http.app import create_app
from relay.http.server import server_config
from relay.kafka.topics import metadata_client, state_of
from relay.settings import Settings


def free_port() -> int:
    """A loopback port below the ephemeral range, for a server in another process (scripts/localkafka.py)."""
    from localkafka import free_port as pick  # scripts/ is on sys.path once tests/conftest.py ran

    return pick()


@dataclass
class RunningRelay:
    url: str
    settings: Settings
    server: uvicorn.Server

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/mytpe"


@asynccontextmanager
async def running_relay(settings: Settings, *, grace: float = 5, **app_options: Any) -> AsyncIterator[RunningRelay]:
    """uvicorn serving create_app(settings) on a free loopback port, inside the test's loop; at the end, requests
    still running after `grace` seconds are cancelled (uvicorn's timeout_graceful_shutdown)."""
    # A socket bound here and handed to uvicorn: no other process can take the port in between.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        app = create_app(settings, **app_options)
        config = server_config(
            app, settings, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=grace
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[listener]))
        for _ in range(300):
            if server.started or task.done():
                break
            await asyncio.sleep(0.05)
        if not server.started:
            await task
            raise RuntimeError("relay did not start")
        try:
            yield RunningRelay(f"http://127.0.0.1:{port}", settings, server)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)


@dataclass
class Record:
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    offset: int = -1


async def read_topic(bootstrap: str, topic: str, *, settle: float = 0.0) -> list[Record]:
    """Every record in `topic` up to its end offsets (read after `settle` seconds)."""
    await asyncio.sleep(settle)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, topic)
        if not partitions:
            return []
        consumer.assign(partitions)
        start = await consumer.beginning_offsets(partitions)
        for tp in partitions:  # an explicit position: see relay/ops/captured.py, DlqReader.open
            consumer.seek(tp, start[tp])
        end = await consumer.end_offsets(partitions)
        records: list[Record] = []
        deadline = asyncio.get_running_loop().time() + 30
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                records.extend(
                    Record(tp.topic, tp.partition, m.key, m.value, dict(m.headers or ()), m.offset) for m in batch
                )
        return records
    finally:
        await consumer.stop()


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions; none when it is absent. Creates nothing, and raises when it cannot be read."""
    async with metadata_client([bootstrap]) as client:
        state = await state_of(client, topic)
    return [TopicPartition(topic, partition) for partition in state.partitions or ()]


NO_SYNC_DELAY = ("--repl-diskless-sync-delay", "0")
"""A master's option: a replica's first sync starts at once, not after redis' default 5 s wait for others."""


class LocalRedis:
    """Debian's redis-server on a free loopback port, in memory only (no RDB, no AOF).

    `extra` adds options: TLS (`--tls-port`, certificates), ACL users (`--user`), `--replicaof`. `cluster` runs it
    in cluster mode, its bus on a second port picked as the first is: redis-server's default bus port, the
    first plus 10000, falls in the ephemeral range, where any outgoing connection may hold it.
    """

    def __init__(self, workdir: Path, *, extra: Sequence[str] = (), cluster: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = list(extra)
        if cluster:
            self.extra += ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf")]
            bus = free_port()
            while bus in {self.port, self.port + 10000}:  # picked apart: a test may hold port+10000
                bus = free_port()
            self.extra += ["--cluster-port", str(bus)]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> LocalRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 15) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (scripts/install installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), *self.extra]
        self.process = started_server(args, self.workdir / "redis-server.log", self.port, timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crashed host: nothing is flushed or handed over."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class LocalSentinel:
    """Debian's redis-sentinel watching one master as `name`, with a quorum of 1 and fast failure detection."""

    def __init__(self, workdir: Path, master_port: int, *, name: str = "mymaster") -> None:
        self.port = free_port()
        self.workdir = workdir
        self.master_port = master_port
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> None:
        sentinel = shutil.which("redis-sentinel")
        if sentinel is None:
            raise RuntimeError("redis-sentinel is not installed (scripts/install installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "sentinel.conf"  # sentinel rewrites its own config: a file of its own
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 10000\n"
        )
        self.process = started_server([sentinel, str(config)], self.workdir / "redis-sentinel.log", self.port, timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def started_server(command: list[str], log: Path, port: int, timeout: float) -> subprocess.Popen[bytes]:
    """`command` started, once it answers PING on `port` (or refuses it for want of a password, with ACLs).

    A server that exits, does not answer in `timeout` seconds, or is interrupted while starting (a test's
    timeout, Ctrl-C) is killed and reaped: it leaves no process behind to be reported by a later test's
    garbage collection. The first two fail here with the server's own last log line.
    """
    with log.open("ab") as output:  # appended: a restarted server keeps its earlier lines
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        if _answers(process, port, timeout):
            return process
        code = process.poll()
    except BaseException:
        _reap(process)
        raise
    _reap(process)
    how = f"exited {code}" if code is not None else f"did not answer PING within {timeout:g}s"
    lines = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
    raise RuntimeError(f"{Path(command[0]).name} on port {port} {how}; its last line: {lines[-1]}")


def _answers(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Whether `process` answers PING on `port` before `timeout`. An answer that comes after `process` has
    exited does not count (another server could have taken the port); one that comes before it exits
    does, so a server that fails to bind just after another answered there is not caught here."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")) and process.poll() is None:
                return True
        time.sleep(0.05)  # refused, or -LOADING: not yet
    return False


def _reap(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(10)


def wait_ready(url: str, process: subprocess.Popen[Any], *, why_exited: Callable[[], str], timeout: float = 30) -> None:
    """Poll `url`/readyz until 200; fail at once, with `why_exited()`, if the relay process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"relay exited {process.returncode}: {why_exited()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:  # noqa: S310 - loopback http
                if response.status == 200:
                    return
        except OSError:  # refused while starting, or 503 (HTTPError) until Kafka answers
            time.sleep(0.1)
    raise TimeoutError(f"relay at {url} not ready within {timeout:g}s")


SANDBOX_INSTANCE = "abc123-def456"  # the samples' instance id


@dataclass
class SandboxProcess:
    url: str
    process: subprocess.Popen[bytes]

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        method = "POST" if body is not None else "GET"
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return json.loads(response.read())

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - loopback
        request.add_header("X-API-KEY", "sandbox-key")
        request.add_header("X-API-SECRET", "sandbox-secret")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            raw = response.read()
        return json.loads(raw) if raw else None


def start_sandbox(tmp_path: Path, *extra: str) -> SandboxProcess:
    port = free_port()
    command = [sys.executable, "-m", "relay", "sandbox", "--port", str(port), "--instance", SANDBOX_INSTANCE, *extra]
    with (tmp_path / f"sandbox-{port}.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    sandbox = SandboxProcess(f"http://127.0.0.1:{port}", process)
    for _ in range(200):  # bounded: 20 s
        try:
            sandbox.control("/sandbox/attempts")
            return sandbox
        except OSError:
            time.sleep(0.1)
    _reap(process)
    raise RuntimeError("the sandbox did not start")
